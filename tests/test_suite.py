"""Suite files: schema validation with precise one-line errors, plan resolution, stable hashes."""
from pathlib import Path

import pytest

from dnibench.errors import SuiteError
from dnibench.suite import load_suite, plan, skipped_entries

SUITES = sorted(Path(__file__).resolve().parent.parent.joinpath("suites").glob("*.yaml"))

MINIMAL = """
name: tiny
task: mnist
train: {steps: 4, batch_size: 8, eval_every: 2, log_every: 1}
profiles: {smoke: {}, quick: {}, paper: {}}
entries:
  - model: fcn3
    method: [bprop, dni]
    args: {dni: {synth_hidden_layers: 0}}
"""


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_shipped_suite_plans_at_every_profile(path):
    suite = load_suite(path)
    for profile in ("smoke", "quick", "paper"):
        specs = plan(suite, profile)
        assert specs or skipped_entries(suite, profile), f"{path.name} at {profile} plans nothing"
        assert len({s.config_hash for s in specs}) == len(specs)


def test_mnist_ff_grid_is_the_papers_table():
    suite = load_suite(Path("suites/mnist_ff.yaml"))
    paper = plan(suite, "paper")
    assert {(s.model, s.method) for s in paper} == {
        (m, k) for m in ["fcn3", "fcn4", "fcn5", "fcn6", "cnn3", "cnn4"] for k in ["nobprop", "bprop", "dni", "cdni"]}
    spec = next(s for s in paper if s.model == "fcn4" and s.method == "dni")
    assert spec.train.lr == 3e-5 and spec.train.steps == 500_000 and spec.train.batch_size == 256
    assert spec.train.lr_decay_at == [300_000, 400_000]
    assert spec.method_args["synth_hidden_layers"] == 2 and spec.method_args["synth_width"] == 1024
    cdni = next(s for s in paper if s.model == "fcn4" and s.method == "cdni")
    assert cdni.method_args["synth_hidden_layers"] == 0
    quick = plan(suite, "quick")
    assert {s.model for s in quick} == {"fcn3", "fcn4", "fcn5", "fcn6"}
    assert {e["model"] for e in skipped_entries(suite, "quick")} == {"cnn3", "cnn4"}


def test_plan_resolves_overrides_and_hashes_are_stable(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL))
    a, b = plan(suite, "smoke", seeds=2), plan(suite, "smoke", seeds=2)
    assert len(a) == 4 and [s.config_hash for s in a] == [s.config_hash for s in b]
    dni = [s for s in a if s.method == "dni"]
    assert dni[0].method_args["synth_hidden_layers"] == 0 and dni[0].config_hash != dni[1].config_hash
    assert plan(suite, "smoke", device="cuda")[0].config_hash != a[0].config_hash


@pytest.mark.parametrize("mutation, expected", [
    (("method: [bprop, dni]", "method: [bprop, dnii]"), "unknown method 'dnii'"),
    (("steps: 4", "steps: four"), "field 'steps'"),
    (("args: {dni: {synth_hidden_layers: 0}}", "args: {dni: {synth_hidden_layers: 7}}"), "synth_hidden_layers"),
    (("args: {dni: {synth_hidden_layers: 0}}", "args: {dni: {synth_colour: 1}}"), "synth_colour"),
    (("task: mnist", "task: imagenet"), "unknown task 'imagenet'"),
    (("model: fcn3", "model: resnet50"), "unknown model 'resnet50'"),
    (("profiles: {smoke: {}, quick: {}, paper: {}}", "profiles: {smoke: {}, quick: {}}"), "missing paper"),
    (("name: tiny", "name: Tiny Suite"), "field 'name'"),
    (("entries:", "entries:\n  - 3\nxentries:"), "field 'entries.0'"),
])
def test_bad_suites_name_the_file_and_field(tmp_path, mutation, expected):
    path = write(tmp_path, MINIMAL.replace(*mutation))
    with pytest.raises(SuiteError) as info:
        plan(load_suite(path), "smoke")
    message = str(info.value)
    assert str(path) in message and expected in message, message
    assert "\n" not in message


def test_malformed_yaml_and_missing_file(tmp_path):
    with pytest.raises(SuiteError, match=r"malformed YAML at line \d+"):
        load_suite(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(SuiteError, match="expected a mapping"):
        load_suite(write(tmp_path, "- a\n- b\n"))


def test_wrong_type_in_train_settings_names_the_field(tmp_path):
    path = write(tmp_path, MINIMAL.replace("steps: 4", "steps: four"))
    with pytest.raises(SuiteError, match=r"field 'steps'.*integer.*'four'"):
        plan(load_suite(path), "smoke")


def test_cnn_filters_is_refused_only_where_no_model_it_reaches_is_a_cnn(tmp_path):
    """A suite-wide cnn_filters may serve the CNN entries while the FCN entries ignore it; an entry's own,
    or a suite's without any CNN, would only be ignored."""
    mixed = MINIMAL.replace("steps: 4,", "steps: 4, cnn_filters: 8,") + "  - model: cnn3\n    method: bprop\n"
    specs = plan(load_suite(write(tmp_path, mixed)), "smoke")
    assert {s.model: s.train.cnn_filters for s in specs} == {"fcn3": 8, "cnn3": 8}
    per_entry = MINIMAL + "    train: {cnn_filters: 8}\n  - model: cnn3\n    method: bprop\n"
    with pytest.raises(SuiteError, match=r"entries\[0\]\.train\.cnn_filters: no model of this entry is a CNN"):
        plan(load_suite(write(tmp_path, per_entry)), "smoke")
    on_cnn = MINIMAL + "  - model: cnn3\n    method: bprop\n    train: {cnn_filters: 8}\n"
    assert {s.train.cnn_filters for s in plan(load_suite(write(tmp_path, on_cnn)), "smoke") if s.model == "cnn3"} == {8}
    profile_only = MINIMAL.replace("smoke: {}", "smoke: {train: {cnn_filters: 8}}")
    with pytest.raises(SuiteError, match=r"profiles\.smoke\.train\.cnn_filters: no entry has a CNN"):
        plan(load_suite(write(tmp_path, profile_only)), "smoke")


def test_bad_value_message_parts():
    """The one-line message a bad suite value gets (suite._format_validation): the field's dotted path, pydantic's
    message, what was given (not for a mapping), how many more errors there are, each part cut to its length."""
    from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

    from dnibench.suite import _format_validation, _short

    assert _short("a  b\n c", 10) == "a b c"                            # whitespace made one line
    assert _short("x" * 10, 10) == "x" * 10 and _short("x" * 11, 10) == "x" * 7 + "..."

    class Inner(BaseModel):
        n: int

    class Outer(BaseModel):
        inner: Inner
        m: int = 0
        k: int = 0

    class Closed(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Wordy(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def _long(cls, value):
            raise ValueError("w" * 300)

    def message(value, path="suite.yaml", model=Outer) -> str:
        with pytest.raises(ValidationError) as err:
            model.model_validate(value)
        return _format_validation(Path(path), err.value)

    assert message({"inner": {"n": "x"}}) == ("suite.yaml: field 'inner.n': Input should be a valid integer, unable to "
                                              "parse string as an integer; got 'x'")
    assert message({"inner": {"n": "x"}, "m": "y", "k": "z"}).endswith("; got 'x' (and 2 more)")
    assert message({"inner": {"n": "x"}, "m": "y"}).endswith("; got 'x' (and 1 more)")
    assert message({"inner": {}}) == "suite.yaml: field 'inner.n': Field required"   # the input was a mapping
    assert message([1]) == "suite.yaml: field '(top level)': Input should be a valid dictionary or instance of Outer; got [1]"
    long = message({"inner": {"n": "q" * 500}}, path="d/" * 100 + "s.yaml")
    where, rest = long.split(": field ", 1)
    assert where == _short("d/" * 100 + "s.yaml", 120) and len(where) == 120
    assert rest.endswith("; got " + "'" + "q" * 116 + "...")           # repr cut to 120 characters
    assert message({"k" * 150: 1}, "s.yaml", Closed) == f"s.yaml: field '{'k' * 97}...': Extra inputs are not permitted; got 1"
    assert message({"n": 1}, "s.yaml", Wordy) == "s.yaml: field 'n': Value error, " + "w" * 144 + "...; got 1"


def test_skipped_entries_name_each_left_out_pair_and_why(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL.replace("entries:\n", "entries:\n  - model: fcn4\n    method: [bprop, dni]\n"
                                                         "    profiles: [paper]\n    skip_reason: too slow here\n"
                                                         "  - model: fcn5\n    method: dni\n    profiles: [paper]\n")))
    left = skipped_entries(suite, "smoke")
    assert left == [{"model": "fcn4", "method": "bprop", "reason": "too slow here"},
                    {"model": "fcn4", "method": "dni", "reason": "too slow here"},
                    {"model": "fcn5", "method": "dni", "reason": "not in this profile"}]
    assert skipped_entries(suite, "paper") == []


def test_uniform_sweep_values_are_seeded_sorted_and_rounded():
    from dnibench.suite import UniformSweep

    sweep = UniformSweep(uniform=(0.1, 0.9), samples=6, seed=7)
    values = sweep.values()
    assert values == UniformSweep(uniform=(0.1, 0.9), samples=6, seed=7).values() == sorted(values)
    assert values != UniformSweep(uniform=(0.1, 0.9), samples=6, seed=8).values()
    assert len(values) == 6 and all(0.1 <= v <= 0.9 and v == round(v, 4) for v in values)
    assert any(v != round(v, 3) for v in values)                        # 4 decimals, not fewer
