"""Helpers of benchmarks/gpu_check.sh (issue 9, §5), no MLflow import needed:

    gpu_check.py suite OUT.yaml --name NAME --steps N [--models fcn4] [--methods bprop,cdni] [--seeds S]
        the mnist_ff suite with its paper profile truncated to N steps (no lr decay inside them, one
        evaluation at the end), for timing the paper's configurations
    gpu_check.py table STORE.db [--json OUT.json]
        one row per child run read from the sqlite store (throughput, wall, GPU utilisation from the
        NVML sampler, threads) and the aggregate: all runs' samples over the span from the first start
        to the last end
    gpu_check.py estimate --timing STORE.db --jobs N=STORE.db ... [--json OUT.json]
        the wall time of the whole paper-profile MNIST FF table (mnist_ff paper: every model x method x
        3 seeds x 500k steps) on one GPU from measured step times, at --jobs 1 and at the best N measured
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PAPER_STEPS, PAPER_SEEDS, PAPER_EVAL_EVERY = 500_000, 3, 5_000


def cmd_suite(args) -> int:
    suite = yaml.safe_load((ROOT / "suites" / "mnist_ff.yaml").read_text())
    models, methods = set(args.models.split(",")), set(args.methods.split(","))
    entries = []
    for entry in suite["entries"]:
        keep_models = [m for m in _as_list(entry["model"]) if m in models]
        keep_methods = [m for m in _as_list(entry["method"]) if m in methods]
        if keep_models and keep_methods:
            entries.append({**entry, "model": keep_models, "method": keep_methods})
    if not entries:
        raise SystemExit(f"no mnist_ff entry has models {args.models} and methods {args.methods}")
    suite["name"] = args.name
    suite["entries"] = entries
    paper = suite["profiles"]["paper"]
    paper["seeds"] = args.seeds
    paper["train"] = {**paper.get("train", {}), "steps": args.steps, "lr_decay_at": [],
                      "eval_every": args.steps, "log_every": max(1, args.steps // args.intervals)}
    paper["departures"] = [f"truncated to {args.steps} steps for timing (benchmarks/gpu_check.sh); no lr decay"]
    Path(args.out).write_text(yaml.safe_dump(suite, sort_keys=False))
    n = sum(len(e["model"]) * len(e["method"]) for e in entries) * args.seeds
    print(f"wrote {args.out}: {n} run(s) of {args.steps} steps at the paper profile")
    return 0


def _as_list(value):
    return value if isinstance(value, list) else [value]


def read_store(path: str) -> list[dict]:
    """The child runs of a dnibench store, with their tags, params and last metric values."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        runs = {}
        for run_id, name, status, start, end in conn.execute(
                "SELECT r.run_uuid, r.name, r.status, r.start_time, r.end_time FROM runs r JOIN tags t "
                "ON t.run_uuid = r.run_uuid WHERE t.key = 'dnibench.role' AND t.value = 'child'"):
            runs[run_id] = {"run": name, "status": status, "start_s": (start or 0) / 1e3,
                            "end_s": (end or 0) / 1e3, "tags": {}, "params": {}, "metrics": {}, "history": {}}
        for table, field in (("tags", "tags"), ("params", "params"), ("latest_metrics", "metrics")):
            for key, value, run_id in conn.execute(f"SELECT key, value, run_uuid FROM {table}"):
                if run_id in runs:
                    runs[run_id][field][key] = value
        for key, value, run_id, step in conn.execute(
                "SELECT key, value, run_uuid, step FROM metrics WHERE key = 'samples_per_s' ORDER BY step"):
            if run_id in runs:
                runs[run_id]["history"].setdefault(key, []).append(value)
    finally:
        conn.close()
    return sorted(runs.values(), key=lambda r: r["start_s"])


def summarise(runs: list[dict]) -> tuple[list[dict], dict]:
    rows = []
    for r in runs:
        m, p = r["metrics"], r["params"]
        steps, batch = int(p.get("train.steps", 0)), int(p.get("train.batch_size", 0))
        history = r["history"].get("samples_per_s", [])
        steady = statistics.median(history[1:]) if len(history) > 1 else (history[0] if history else float("nan"))
        rows.append({"run": r["run"], "model": r["tags"].get("model"), "method": r["tags"].get("method"),
                     "status": r["status"], "steps": steps, "batch": batch, "device": r["tags"].get("device"),
                     "mean_samples_per_s": m.get("mean_samples_per_s", float("nan")),
                     "steady_samples_per_s": steady,
                     "train_s": m.get("total_wall_s/train", float("nan")),
                     "eval_s": m.get("total_wall_s/eval", float("nan")),
                     "run_wall_s": r["end_s"] - r["start_s"] if r["end_s"] else float("nan"),
                     "gpu_util_mean": m.get("gpu_util_pct_mean"), "gpu_util_p95": m.get("gpu_util_pct_p95"),
                     "gpu_mem_mb": m.get("gpu_mem_mb_mean"), "cpu_util_mean": m.get("cpu_util_pct_mean"),
                     "threads": m.get("cpu_threads"), "dispersion": m.get("wall_step_dispersion"),
                     "start_s": r["start_s"], "end_s": r["end_s"]})
    done = [r for r in rows if r["status"] == "FINISHED"]
    agg = {"runs": len(rows), "finished": len(done)}
    if done:
        span = max(r["end_s"] for r in done) - min(r["start_s"] for r in done)
        samples = sum(r["steps"] * r["batch"] for r in done)
        gpu = [r["gpu_util_mean"] for r in done if r["gpu_util_mean"] is not None]
        agg.update(span_s=span, samples=samples, aggregate_samples_per_s=samples / max(span, 1e-9),
                   train_samples_per_s_sum=sum(r["steps"] * r["batch"] / max(r["train_s"], 1e-9) for r in done),
                   runs_with_gpu_metrics=len(gpu), gpu_util_mean_of_runs=statistics.fmean(gpu) if gpu else None)
    return rows, agg


def _f(value, fmt="{:.0f}"):
    return "-" if value is None or value != value else fmt.format(value)


def cmd_table(args) -> int:
    rows, agg = summarise(read_store(args.store))
    print(f"{args.store}: {agg['finished']}/{agg['runs']} child runs FINISHED")
    print(f"{'run':34s} {'status':8s} {'steps':>6s} {'samples/s':>9s} {'steady':>8s} {'train s':>7s} "
          f"{'wall s':>6s} {'GPU %':>5s} {'GPU p95':>7s} {'GPU MB':>7s} {'CPU %':>5s} {'thr':>3s} {'disp':>5s}")
    for r in rows:
        print(f"{r['run'][:34]:34s} {r['status']:8s} {r['steps']:6d} {_f(r['mean_samples_per_s']):>9s} "
              f"{_f(r['steady_samples_per_s']):>8s} {_f(r['train_s'], '{:.1f}'):>7s} "
              f"{_f(r['run_wall_s'], '{:.1f}'):>6s} "
              f"{_f(r['gpu_util_mean']):>5s} {_f(r['gpu_util_p95']):>7s} {_f(r['gpu_mem_mb']):>7s} "
              f"{_f(r['cpu_util_mean']):>5s} {_f(r['threads']):>3s} {_f(r['dispersion'], '{:.2f}'):>5s}")
    if agg["finished"]:
        print(f"aggregate: {agg['samples']} samples in {agg['span_s']:.1f} s from first start to last end = "
              f"{agg['aggregate_samples_per_s']:.0f} samples/s (sum of per-run training rates "
              f"{agg['train_samples_per_s_sum']:.0f}); GPU metrics logged by {agg['runs_with_gpu_metrics']}/"
              f"{agg['finished']} runs, mean GPU utilisation {_f(agg['gpu_util_mean_of_runs'])} %")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "aggregate": agg}, indent=1))
    return 0


def cmd_estimate(args) -> int:
    rows, _ = summarise(read_store(args.timing))
    per = {}
    for r in rows:
        if r["status"] == "FINISHED" and r["steady_samples_per_s"] == r["steady_samples_per_s"]:
            per.setdefault((r["model"], r["method"]), []).append(r)
    if not per:
        print("estimate: no finished timing runs")
        return 1
    # Throughput of N runs at once over one at a time, measured on the FCN-4 runs of each --jobs store.
    agg = {}
    for item in args.jobs:
        n, path = item.split("=", 1)
        _, a = summarise(read_store(path))
        if a.get("finished"):
            agg[int(n)] = a
    base = agg.get(1, {}).get("aggregate_samples_per_s")
    speedup = {n: a["aggregate_samples_per_s"] / base for n, a in agg.items()} if base else {}
    best = max(speedup, key=speedup.get) if speedup else 1
    print(f"{'model':6s} {'method':8s} {'ms/step':>8s} {'eval s':>6s} {'h per run':>9s} {'h, 3 seeds':>10s}")
    total = {"fcn": 0.0, "cnn": 0.0}
    for (model, method), rs in sorted(per.items()):
        ms = 1e3 * statistics.fmean(r["batch"] / r["steady_samples_per_s"] for r in rs)
        eval_s = statistics.fmean(r["eval_s"] for r in rs)       # one evaluation of the test set
        hours = (PAPER_STEPS * ms / 1e3 + (PAPER_STEPS // PAPER_EVAL_EVERY) * eval_s) / 3600
        total["cnn" if model.startswith("cnn") else "fcn"] += PAPER_SEEDS * hours
        print(f"{model:6s} {method:8s} {ms:8.3f} {eval_s:6.2f} {hours:9.2f} {PAPER_SEEDS * hours:10.2f}")
    one = total["fcn"] + total["cnn"]
    suite = yaml.safe_load((ROOT / "suites" / "mnist_ff.yaml").read_text())
    expected = {(mo, me) for e in suite["entries"] if "paper" in e.get("profiles", ["paper"])
                for mo in _as_list(e["model"]) for me in _as_list(e["method"])}
    missing = sorted(expected - set(per))
    if missing:
        print(f"NOT MEASURED (left out of the sums below): {', '.join(f'{a}/{b}' for a, b in missing)}")
    print(f"paper MNIST FF table, {len(per)} configurations x {PAPER_SEEDS} seeds x {PAPER_STEPS} steps, one GPU:")
    print(f"  --jobs 1: {one:.1f} h (FCN {total['fcn']:.1f} h, CNN {total['cnn']:.1f} h)")
    for n in sorted(speedup):
        print(f"  --jobs {n}: aggregate FCN-4 throughput {agg[n]['aggregate_samples_per_s']:.0f} samples/s = "
              f"{speedup[n]:.2f}x --jobs 1; GPU utilisation (mean of runs) {_f(agg[n]['gpu_util_mean_of_runs'])} %")
    s = speedup.get(best, 1.0)
    estimate = {"jobs1_h": one, "missing": [f"{a}/{b}" for a, b in missing], "best_jobs": best, "speedup": s,
                "best_h_if_cnn_scales": one / s, "best_h_if_cnn_does_not": total["fcn"] / s + total["cnn"]}
    print(f"  at --jobs {best} (best measured, {s:.2f}x, measured on FCN-4 only): "
          f"{estimate['best_h_if_cnn_scales']:.1f} h "
          f"if the CNN runs gain as much, {estimate['best_h_if_cnn_does_not']:.1f} h if they gain nothing "
          "(the CNN steps fill more of the GPU)")
    if args.json:
        Path(args.json).write_text(json.dumps(estimate, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("suite")
    s.add_argument("out")
    s.add_argument("--name", required=True)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--intervals", type=int, default=6, help="log points per run (throughput samples)")
    s.add_argument("--models", default="fcn3,fcn4,fcn5,fcn6,cnn3,cnn4")
    s.add_argument("--methods", default="nobprop,bprop,dni,cdni")
    s.add_argument("--seeds", type=int, default=1)
    s.set_defaults(func=cmd_suite)
    t = sub.add_parser("table")
    t.add_argument("store")
    t.add_argument("--json", default=None)
    t.set_defaults(func=cmd_table)
    e = sub.add_parser("estimate")
    e.add_argument("--timing", required=True)
    e.add_argument("--jobs", nargs="*", default=[], help="N=STORE.db of the --jobs N measurement")
    e.add_argument("--json", default=None)
    e.set_defaults(func=cmd_estimate)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
