"""StageGroup (methods/units.py), the unit a parallel worker trains, in one process: a group of several
stages computes exactly what one group per stage computes (the one-process step), the fused rule split
into two groups exactly what the whole fused step computes, and a stale synthetic input is predicted
again when asked. These are the paths the one-process methods never take (they use one group per
stage, or one group of every stage), so without them a change there would go unnoticed until a
multi-process run."""
import pytest
import torch

from dnibench.dni import synthetic_gradient_loss
from dnibench.methods.units import StageGroup
from tiny_methods import build_method, random_batch

IN_SHAPE = (1, 6, 6)
SMALL = {"synth_hidden_layers": 1, "synth_width": 16}


def make(method, **settings):
    return build_method(method, IN_SHAPE, "fcn5", coin_seed=3, **settings)


def state(method) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer the method trains: stages, synthesizers, synthetic input models."""
    out = {f"stage{i}.{k}": v for i, s in enumerate(method.stages) for k, v in s.state_dict().items()}
    for i, synth in enumerate(method.synthesizers):
        out.update({f"synth{i}.{k}": v for k, v in synth.state_dict().items()})
    for i, iface in enumerate(getattr(method, "inputs", [])):
        out.update({f"input{i}.{k}": v for k, v in iface.model.state_dict().items()})
    return {k: v.clone() for k, v in out.items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_trained(method, start: dict):
    """Both sides really trained: a frozen pair would agree too."""
    now = state(method)
    moved = [k for k in now if now[k].is_floating_point() and not torch.equal(now[k], start[k])]
    assert any(k.startswith("stage0") for k in moved) and any(k.startswith("synth") for k in moved)


@pytest.mark.parametrize("name", ["dni", "cdni", "unlock_dni", "unlock_cdni"])
def test_one_group_of_every_stage_is_the_one_process_step(name):
    settings = dict(SMALL, p_update=0.7, **({"input_hidden_layers": 1, "input_width": 16} if "unlock" in name else {}))
    per_stage, grouped = make(name, **settings), make(name, **settings)
    start = state(per_stage)
    whole = StageGroup(grouped, 0, len(grouped.stages))
    assert whole.is_top and not StageGroup(grouped, 0, 2).is_top
    for step in range(4):
        x, y = random_batch(IN_SHAPE, seed=step)
        want = per_stage.step(x, y)
        coins = grouped.coins()
        grouped.record_synthesizers()
        got: dict[str, torch.Tensor] = {}
        if "unlock" in name:
            real, down = whole.train_unlocked(x, y, grouped.context(y), coins, got)
            whole.regress_inputs(real, x, coins, got)
        else:
            h, down = whole.train(x, y, grouped.context(y), coins, got)
            assert h.shape == (16, 10) and not h.requires_grad            # the top stage's output
        assert down is None                                # nothing below stage 0
        assert got.keys() == want.keys(), step
        for key in want:
            assert torch.equal(got[key], want[key]), (step, key)
    assert_same(state(grouped), state(per_stage))
    assert_trained(per_stage, start)
    assert grouped.update_counts == per_stage.update_counts and 0 < min(per_stage.update_counts) < 4


@pytest.mark.parametrize("name", ["dni", "cdni"])
def test_fused_rule_split_into_two_groups_is_the_whole_fused_step(name):
    whole, split = make(name, **SMALL, p_update=1.0), make(name, **SMALL, p_update=1.0)
    assert whole.fused and split.fused
    start = state(whole)
    groups = [StageGroup(split, 0, 1), StageGroup(split, 1, 3), StageGroup(split, 3, len(split.stages))]
    for step in range(4):
        x, y = random_batch(IN_SHAPE, seed=step)
        want = whole.step(x, y)
        got: dict[str, torch.Tensor] = {}
        h = x
        for k, group in enumerate(groups):
            h, target = group.train_fused(h, y, split.context(y), got)
            assert (target is None) == (k == 0)
            if target is not None:                         # the target at h_lo reaches M on h_lo, one group down
                groups[k - 1].regress(target, got)
                assert not split.pending                   # regress() updated it at once
        assert h.shape == (16, 10) and not h.requires_grad
        assert got.keys() == want.keys(), step
        for key in want:
            assert torch.equal(got[key], want[key]), (step, key)
    assert_same(state(split), state(whole))
    assert_trained(whole, start)


def test_a_stale_synthetic_input_is_predicted_again_when_asked():
    """``fresh``: a worker's real input arrives steps after its stage used the synthetic one, and I has
    learnt since: the regression must start from I's current parameters, not the held prediction."""
    method = make("unlock_dni", **SMALL, input_hidden_layers=0, p_update=1.0, fused_step=False)
    x, _ = random_batch(IN_SHAPE)
    group = StageGroup(method, 1, 2)                       # stage 1, fed by I on h_1 (inputs[0])
    real = {0: torch.randn(16, *method.setup.stage_shapes[0], generator=torch.Generator().manual_seed(5))}
    for fresh in (False, True):
        iface = method.inputs[0]
        held = iface.send(x)
        with torch.no_grad():
            for p in iface.model.parameters():            # I learnt after the send
                p.add_(0.5)
        iface.optimizer = None                             # keep the loss a pure function of the prediction
        metrics: dict[str, torch.Tensor] = {}
        group.regress_inputs(real, x, [True] * len(method.stages), metrics, fresh=fresh)
        current, stale = (synthetic_gradient_loss(p.detach(), real[0]) for p in (iface.model(x), held))
        assert not torch.equal(current, stale)             # the two readings can be told apart
        assert torch.equal(metrics["input_loss/h1"], current if fresh else stale), fresh


@pytest.mark.parametrize("lo,hi", [(0, 0), (2, 1), (-1, 2), (0, 6), (5, 6)])
def test_a_group_outside_the_stages_is_refused(lo, hi):
    method = make("dni", **SMALL)
    with pytest.raises(ValueError, match=rf"stage group \[{lo}, {hi}\) outside the 5 stages"):
        StageGroup(method, lo, hi)
