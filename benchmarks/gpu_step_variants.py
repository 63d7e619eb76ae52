"""FCN-4 training steps at batch 256 (the paper's lr), eager against torch.compile against one CUDA graph
of the whole step (issue 9, §5: on a GPU these tiny steps are bound by kernel launches, not arithmetic).

The same step function runs in every variant (backprop, and cDNI with the paper's linear synthesizer,
written as in benchmarks/test_bench_reference.py), from the same initial parameters, on the same batch
sequence; the stages' state after all steps is compared with the eager run's, so a variant is a faster
way to do the same arithmetic, not other work. dnibench's own method step is timed next to it (eager).

Timing: after the warm-up (compilation or graph capture not counted), K steps are queued back to back and
the device synchronised once (what the training loop does: it syncs only at log points), giving ms per
step; per-step synchronised medians are printed too. The CUDA graph variant copies each batch into its
static input tensors inside the timed loop, as a training loop would.

    python3 benchmarks/gpu_step_variants.py --device cuda [--steps 300] [--no-compile]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # run from anywhere in the checkout
from dnibench.methods import Setup, get_method                      # noqa: E402
from dnibench.models import build_stages, stage_output_shapes       # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_bench_reference import dni_backward                       # noqa: E402

IN_SHAPE, CLASSES, BATCH, LR, MODEL = (1, 28, 28), 10, 256, 3e-5, "fcn4"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Net:
    """The stages (and cDNI's synthesizers) with one Adam over everything, and one step function."""

    def __init__(self, method: str, stages, synths, device, capturable: bool = False):
        self.method, self.stages, self.synths = method, stages, synths
        params = [p for m in [*stages, *synths] for p in m.parameters()]
        self.opt = torch.optim.Adam(params, lr=LR, fused=True, capturable=capturable)
        # The label's one-hot by indexing: F.one_hot checks its input's range on the host (a sync, which
        # graph capture refuses).
        self.eye = torch.eye(CLASSES, device=device)

    def step(self, x, y):
        if self.method == "bprop":
            h = x
            for stage in self.stages:
                h = stage(h)
            loss = F.cross_entropy(h, y)
            loss.backward()
        else:
            loss = self._cdni(x, y)
        self.opt.step()
        return loss.detach()

    def _cdni(self, x, y):
        # The reference loop's DNI step; the label's one-hot by indexing (see __init__).
        return dni_backward(self.stages, self.synths, x, y, self.eye[y])

    def state(self) -> list[torch.Tensor]:
        return [v.detach().float().cpu() for s in self.stages for v in s.state_dict().values()]


def fresh(method: str, device) -> tuple[list, list]:
    torch.manual_seed(0)
    stages = build_stages(MODEL, IN_SHAPE, CLASSES)
    synths = []
    if method == "cdni":
        for shape in stage_output_shapes(stages, IN_SHAPE)[:-1]:
            linear = nn.Linear(shape[0] + CLASSES, shape[0])
            nn.init.zeros_(linear.weight)      # the paper's synthesizer starts by predicting zero
            nn.init.zeros_(linear.bias)
            synths.append(linear)
    return [s.to(device) for s in stages], [s.to(device) for s in synths]


def batches(n, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(BATCH, *IN_SHAPE, generator=g).to(device),
             torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)) for _ in range(n)]


def timed_loop(run_one, n_steps, first, device):
    """ms per step over n_steps queued back to back (one sync), and the per-step synchronised median."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(n_steps):
        run_one(first + i)
    sync(device)
    throughput_ms = 1e3 * (time.perf_counter() - t0) / n_steps
    return throughput_ms


def per_step_median(run_one, n_steps, first, device):
    times = []
    for i in range(n_steps):
        sync(device)
        t0 = time.perf_counter()
        run_one(first + i)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def run_variant(variant: str, method: str, device, data, warmup: int, steps: int) -> dict:
    stages, synths = fresh(method, device)
    for m in [*stages, *synths]:
        m.train()
    net = Net(method, stages, synths, device, capturable=(variant == "graph"))
    n_data = len(data)
    t_setup = time.perf_counter()
    if variant == "eager":
        def one(i):
            x, y = data[i % n_data]
            net.step(x, y)
            net.opt.zero_grad(set_to_none=True)
        for i in range(warmup):
            one(i)
    elif variant == "compile":
        compiled = torch.compile(net.step)

        def one(i):
            x, y = data[i % n_data]
            compiled(x, y)
            net.opt.zero_grad(set_to_none=True)
        for i in range(warmup):
            one(i)
    elif variant == "graph":
        static_x, static_y = data[0][0].clone(), data[0][1].clone()
        # Warm-up on a side stream (the capture recipe of torch.cuda.graphs): these are real steps.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for i in range(warmup):
                static_x.copy_(data[i % n_data][0])
                static_y.copy_(data[i % n_data][1])
                net.step(static_x, static_y)
                net.opt.zero_grad(set_to_none=True)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        net.opt.zero_grad(set_to_none=True)     # gradients are allocated (then overwritten) inside the graph
        with torch.cuda.graph(graph):            # recorded, not run: capture is not a step
            net.step(static_x, static_y)

        def one(i):
            x, y = data[i % n_data]
            static_x.copy_(x, non_blocking=True)
            static_y.copy_(y, non_blocking=True)
            graph.replay()
    else:
        raise ValueError(variant)
    sync(device)
    setup_s = time.perf_counter() - t_setup
    ms = timed_loop(one, steps, warmup, device)
    median_ms = per_step_median(one, max(10, steps // 4), warmup + steps, device)
    total = warmup + steps + max(10, steps // 4)
    return {"variant": variant, "method": method, "ms_per_step": ms, "synced_median_ms": median_ms,
            "samples_per_s": BATCH / (ms / 1e3), "setup_s": setup_s, "steps": total, "state": net.state()}


def dnibench_eager(method: str, device, data, warmup: int, steps: int) -> dict:
    """dnibench's own method object (its fused path where it has one), same model and schedule."""
    torch.manual_seed(0)
    stages = build_stages(MODEL, IN_SHAPE, CLASSES).to(device)
    cls = get_method(method)
    ours = cls(stages, cls.Settings(), Setup(CLASSES, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), LR, device))

    def one(i):
        x, y = data[i % len(data)]
        ours.step(x, y)
    for i in range(warmup):
        one(i)
    ms = timed_loop(one, steps, warmup, device)
    median_ms = per_step_median(one, max(10, steps // 4), warmup + steps, device)
    return {"variant": "dnibench", "method": method, "ms_per_step": ms, "synced_median_ms": median_ms,
            "samples_per_s": BATCH / (ms / 1e3), "setup_s": 0.0, "steps": warmup + steps + max(10, steps // 4),
            "state": [v.detach().float().cpu() for s in ours.stages for v in s.state_dict().values()]}


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--methods", default="bprop,cdni")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its warm-up compiles)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    variants = ["eager", "graph", "compile"]
    if device.type != "cuda":
        variants.remove("graph")
        print("CUDA graphs: skipped (not a CUDA device)")
    if args.no_compile:
        variants.remove("compile")
    data = batches(16, device)
    rows = []
    print(f"{MODEL} batch {BATCH} lr {LR} on {device} (torch {torch.__version__}"
          f"{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''})", flush=True)
    header = f"{'method':6s} {'variant':9s} {'ms/step':>8s} {'synced ms':>9s} {'samples/s':>10s} {'vs eager':>8s} " \
             f"{'setup s':>7s} {'max |state - eager|':>19s}"
    print(header, flush=True)
    methods = args.methods.split(",")
    # Compilation last (it takes the longest; a time limit then cuts only that), the costlier method first.
    order = [(m, v) for v in ["eager", "dnibench", "graph"] for m in methods if v in variants + ["eager", "dnibench"]]
    order += [(m, "compile") for m in reversed(methods) if "compile" in variants]
    eager = {}
    for method, variant in order:
        try:
            if variant == "dnibench":
                row = dnibench_eager(method, device, data, args.warmup, args.steps)
            else:
                row = run_variant(variant, method, device, data, args.warmup, args.steps)
        except Exception as err:         # one variant failing (a compiler error) must not lose the others
            first = (str(err).strip().splitlines() or [""])[0][:200]
            print(f"{method:6s} {variant:9s} FAILED: {type(err).__name__}: {first}", flush=True)
            rows.append({"variant": variant, "method": method, "error": f"{type(err).__name__}: {first}"})
            continue
        base = eager.setdefault(method, row)
        row["vs_eager"] = base["ms_per_step"] / row["ms_per_step"]
        row["max_state_diff"] = max_diff(row["state"], base["state"]) if row["steps"] == base["steps"] else None
        diff = "n/a" if row["max_state_diff"] is None else f"{row['max_state_diff']:.2e}"
        print(f"{method:6s} {variant:9s} {row['ms_per_step']:8.3f} {row['synced_median_ms']:9.3f} "
              f"{row['samples_per_s']:10.0f} {row['vs_eager']:7.2f}x {row['setup_s']:7.1f} {diff:>19s}", flush=True)
        rows.append({k: v for k, v in row.items() if k != "state"})
        if args.json:                    # written as it goes: a time limit keeps what was measured
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print("vs eager: eager ms/step / this ms/step (above 1: faster). max |state - eager|: largest difference "
          "of any stage parameter or BatchNorm statistic after the same steps (compiled kernels and the graph's "
          "capturable Adam may round differently; ~1e-6 is the same arithmetic).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
