"""Every setting a suite can give changes the run or is rejected (issue 7 §3).

1. The learning-rate schedule scales each optimizer's own base rate: synth_lr and input_lr are no
   longer overwritten by the run's lr, and the rate each role actually used is logged (lr/<role>).
2. For every registered method (feed-forward and recurrent, and the shipped example variants) and
   every field of its Settings, a non-default value either changes the parameters of the trained
   network after a few steps on a tiny model, or is rejected by validation in one line.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from dnibench.methods import REGISTRY, load_method_file
from dnibench.rnn.core import LSTMCore, RecurrentMethod
from dnibench.suite import load_suite, plan
from dnibench.tasks import get_task
from dnibench.train import apply_schedule, lr_metrics
from tiny_methods import build_method, random_batch

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


# ---- 1. the schedule scales each optimizer's own rate --------------------------------------------

def test_schedule_scales_each_base_rate_without_compounding():
    w = torch.nn.Parameter(torch.zeros(2))
    stage, synth = torch.optim.Adam([w], lr=1e-3), torch.optim.Adam([w], lr=5e-2)
    for factor in (1.0, 0.1, 0.01, 0.01):
        apply_schedule([stage, synth], factor)
        assert stage.param_groups[0]["lr"] == pytest.approx(1e-3 * factor, rel=1e-12)
        assert synth.param_groups[0]["lr"] == pytest.approx(5e-2 * factor, rel=1e-12)
    assert lr_metrics({"stage": [stage], "synth": [synth]}, [stage, synth]) == pytest.approx(
        {"lr/stage": 1e-5, "lr/synth": 5e-4})
    other = torch.optim.SGD([w], lr=0.3)                        # outside every role, and differing groups
    mixed = torch.optim.Adam([{"params": [w], "lr": 1.0}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2.0}])
    assert lr_metrics({"stage": [mixed]}, [mixed, other]) == {"lr/stage1": 1.0, "lr/stage2": 2.0, "lr/other": 0.3}


SCHEDULE_SUITE = """
name: tiny_lr
task: {task}
train: {{steps: 6, batch_size: 8, lr: 1.0e-3, lr_decay_at: [3], lr_decay_factor: 0.1, log_every: 2{evaluate}}}
task_args: {task_args}
profiles: {{smoke: {{}}, quick: {{}}, paper: {{}}}}
entries:
  - model: {model}
    method: {method}
    sweep: {sweep}
    args: {{{method}: {args}}}
"""


def train_logged(tmp_path, fake_data_dir, task="mnist", model="fcn3", method="dni", sweep="{}", args="{}",
                 task_args="{}"):
    """Train every run of a tiny suite; per run, its logged metrics as {key: {step: value}}."""
    path = tmp_path / "lr.yaml"
    evaluate = ", eval_every: 6" if get_task(task).family == "ff" else ""     # Copy has no evaluation schedule
    path.write_text(SCHEDULE_SUITE.format(task=task, model=model, method=method, sweep=sweep, args=args,
                                          task_args=task_args, evaluate=evaluate))
    t = get_task(task)
    data = t.load(fake_data_dir)
    out = []
    for spec in plan(load_suite(path), "smoke", device="cpu"):
        logged: dict[str, dict[int, float]] = {}
        t.train(spec, data, lambda row, step: [logged.setdefault(k, {}).__setitem__(step, v) for k, v in row.items()])
        out.append((spec, logged))
    return out


def test_synth_lr_is_used_and_logged(tmp_path, fake_mnist_data_dir):
    """Two runs differing only in synth_lr: different synthesizer losses; lr/<role> = base x schedule."""
    runs = train_logged(tmp_path, fake_mnist_data_dir, sweep="{synth_lr: [1.0e-3, 3.0e-2]}",
                        args="{synth_hidden_layers: 1, synth_width: 16}")
    for spec, logged in runs:
        synth_lr = spec.method_args["synth_lr"]
        for step in (2, 4, 6):
            factor = 1.0 if step < 3 else 0.1                    # decayed x0.1 from step 3 on
            assert logged["lr/stage"][step] == pytest.approx(1e-3 * factor, rel=1e-12)
            assert logged["lr/synth"][step] == pytest.approx(synth_lr * factor, rel=1e-12)
            assert logged["lr"][step] == pytest.approx(1e-3 * factor, rel=1e-12)
    (_, slow), (_, fast) = runs
    for key in ("synth_loss/h1", "synth_loss/h2"):
        assert slow[key][2] != pytest.approx(fast[key][2], rel=1e-3), key
        assert slow[key][6] != pytest.approx(fast[key][6], rel=1e-3), key


def test_input_lr_is_used_and_logged(tmp_path, fake_mnist_data_dir):
    runs = train_logged(tmp_path, fake_mnist_data_dir, method="unlock_dni", sweep="{input_lr: [1.0e-3, 3.0e-2]}",
                        args="{synth_hidden_layers: 0, input_hidden_layers: 0, synth_lr: 2.0e-3}")
    for spec, logged in runs:
        for step in (2, 4, 6):
            factor = 1.0 if step < 3 else 0.1
            assert logged["lr/input"][step] == pytest.approx(spec.method_args["input_lr"] * factor, rel=1e-12)
            assert logged["lr/synth"][step] == pytest.approx(2e-3 * factor, rel=1e-12)
            assert logged["lr/stage"][step] == pytest.approx(1e-3 * factor, rel=1e-12)
    (_, slow), (_, fast) = runs
    assert slow["input_loss/h1"][6] != pytest.approx(fast["input_loss/h1"][6], rel=1e-3)


def test_recurrent_synth_lr_is_used_and_logged(tmp_path):
    runs = train_logged(tmp_path, None, task="copy", model="lstm8", method="dni_bptt",
                        sweep="{synth_lr: [1.0e-3, 3.0e-2]}", args="{T: 3}", task_args="{bits: 4}")
    for spec, logged in runs:
        for step in (2, 4, 6):
            factor = 1.0 if step < 3 else 0.1
            assert logged["lr/lstm"][step] == pytest.approx(1e-3 * factor, rel=1e-12)
            assert logged["lr/synth"][step] == pytest.approx(spec.method_args["synth_lr"] * factor, rel=1e-12)
    (_, slow), (_, fast) = runs
    assert slow["synth_loss"][6] != pytest.approx(fast["synth_loss"][6], rel=1e-3)


# ---- 2. every field of every method's Settings acts or is rejected --------------------------------

# One non-default value per field name, chosen so that the field acts on the tiny model below (or, where
# it cannot act, so that validation must reject it). Conditions, per field:
#   p_update       a coin per stage (coin_seed fixed), so 0.5 skips some updates;
#   delay          4 steps > delay 1, so from step 2 a stage sees its synthesizer's older parameters;
#   synth_width    acts through hidden layers: DNI (2 hidden) must change; cDNI and recurrent DNI (linear
#                  synthesizers by default) must reject it: a width without a hidden layer does nothing;
#   input_width    likewise with input_hidden_layers (2 by default: acts);
#   *_loss_weight, synth_reduction ("sum" = B x "mean")  scale the regression's gradient: under Adam this
#                  acts only where gradients are near Adam's eps (the zero-initialised synthesizer's first
#                  steps), which is enough to change these first steps' parameters;
#   clip_norm      1e-3 bites on the first window's gradient (norm ~0.1-1 here);
#   aux_pool       (DGL example) pools conv features only: exercised on a CNN.
# A field added later needs an entry here: the test below names it otherwise.
NON_DEFAULT = {
    "p_update": 0.5, "delay": 1,
    "synth_hidden_layers": 1, "synth_width": 16, "synth_loss_weight": 10.0, "synth_reduction": "sum",
    "synth_lr": 1e-3,
    "input_hidden_layers": 1, "input_width": 16, "input_loss_weight": 10.0, "input_lr": 1e-3,
    "T": 2, "clip_norm": 1e-3, "synth_scale": 1.0, "target_discount": 0.5, "aux_weight": 10.0,
    "aux_width": 16, "aux_pool": 1,
}
MODEL_FOR = {"aux_pool": "cnn3"}                                 # default: fcn3
STEPS, LR = 4, 1e-2
IN_SHAPE = (1, 8, 8)
RNN_IN, RNN_H, RNN_OUT, RNN_B = 4, 6, 3, 5


def all_methods():
    for path in EXAMPLES:                                       # the shipped example variants count too
        load_method_file(path)
    return sorted(REGISTRY.items())


def ff_trained(name, model, **settings):
    method = build_method(name, IN_SHAPE, model=model, lr=LR, coin_seed=0, **settings)
    for step in range(STEPS):
        method.step(*random_batch(IN_SHAPE, seed=step))
    return {f"stages.{k}": v for k, v in method.stages.state_dict().items()}


def rnn_trained(name, **settings):
    torch.manual_seed(0)
    core = LSTMCore(RNN_IN, RNN_H, RNN_OUT)
    cls = REGISTRY[name]
    method = cls(core, cls.Settings(**settings), lr=LR)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, RNN_B, RNN_IN, generator=g)
    y = torch.randint(0, RNN_OUT, (24, RNN_B), generator=g)
    T = method.settings.T
    for k in range(STEPS):                                      # STEPS windows of T steps, state carried on
        xs, ys = x[k * T:(k + 1) * T], y[k * T:(k + 1) * T]
        method.window(xs, lambda logits, ys=ys: F.cross_entropy(logits.reshape(-1, RNN_OUT), ys.reshape(-1),
                                                                reduction="none").view(ys.shape))
    return {f"core.{k}": v for k, v in core.state_dict().items()}


def trained(cls, name, model, settings):
    if issubclass(cls, RecurrentMethod):
        return rnn_trained(name, **settings)
    return ff_trained(name, model, **settings)


def field_cases():
    cases = []
    for name, cls in all_methods():
        for field in cls.Settings.model_fields:
            cases.append(pytest.param(name, field, id=f"{name}.{field}"))
    return cases


@pytest.mark.parametrize("name, field", field_cases())
def test_every_setting_changes_the_first_steps_or_is_rejected(name, field):
    cls = REGISTRY[name]
    assert field in NON_DEFAULT, (f"{name}.{field} has no entry in NON_DEFAULT (tests/test_settings.py): give it a "
                                  "non-default value that makes it act on a tiny model, or make the method reject it")
    value = NON_DEFAULT[field]
    default = cls.Settings.model_fields[field].default
    assert value != default, f"NON_DEFAULT[{field!r}] = {value!r} is {name}'s default"
    try:
        cls.Settings(**{field: value})
    except ValidationError as err:                               # rejected: in one line naming the field
        assert err.error_count() == 1 and field in str(err.errors()[0]["msg"]) + str(err.errors()[0]["loc"]), err
        return
    model = MODEL_FOR.get(field, "fcn3")
    base, other = trained(cls, name, model, {}), trained(cls, name, model, {field: value})
    moved = max((base[k].float() - other[k].float()).abs().max().item() for k in base)
    assert moved > 1e-6, (f"{name}.{field} = {value!r} leaves the trained network's parameters unchanged after "
                          f"{STEPS} steps (max difference {moved:.3g}): it is silently ignored")


def test_the_table_has_no_stale_entries():
    fields = {f for _, cls in all_methods() for f in cls.Settings.model_fields}
    assert set(NON_DEFAULT) <= fields, sorted(set(NON_DEFAULT) - fields)


# ---- 3. a number is a number: true/false is refused wherever a float is read from a suite ----------------

def _float_fields(model) -> list[str]:
    """The fields of a pydantic model whose values are floats (float, or float | None)."""
    import typing
    out = []
    for name, info in model.model_fields.items():
        kinds = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
                 for a in (typing.get_args(info.annotation) or (info.annotation,))]
        if float in kinds or info.annotation is float:
            out.append(name)
    return out


def settings_models():
    from dnibench.suite import Profile, TrainSettings
    from dnibench.tasks import TASKS
    models = {f"method {name}": cls.Settings for name, cls in all_methods()}
    models.update({f"task {name}": task.Settings for name, task in TASKS.items() if getattr(task, "Settings", None)})
    models.update(train=TrainSettings, profile=Profile)
    return models


def test_every_float_setting_refuses_true_and_reads_yamls_exponent_text():
    """pydantic's lax mode read `p_update: true` as 1.0 and ran; YAML 1.1 reads `1e-4` (no dot) as text,
    which must still be the number. Every float field of every settings model, found by its annotation."""
    checked = []
    for label, model in settings_models().items():
        for field in _float_fields(model):
            with pytest.raises(ValidationError, match=r"expected a number; got True"):
                model.model_validate({field: True}, strict=False)
            checked.append(f"{label}.{field}")
    assert {"method dni.synth_lr", "method dni_bptt_aux.aux_weight", "method unlock_cdni.input_lr", "train.lr",
            "train.lr_decay_factor", "method bprop.p_update"} <= set(checked), checked
    assert any(c.startswith("task copy.") for c in checked) and any(c.startswith("method bptt.clip") for c in checked)
    from dnibench.suite import TrainSettings, UniformSweep
    assert TrainSettings(lr="1e-4").lr == 1e-4 and TrainSettings(lr=3).lr == 3.0
    with pytest.raises(ValidationError, match=r"expected a number; got False"):
        UniformSweep(uniform=[False, 0.5], samples=2)                # a sweep's bounds too
    assert UniformSweep(uniform=[0, "5e-1"], samples=1).uniform == (0.0, 0.5)
