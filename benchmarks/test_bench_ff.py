"""Training steps per second for bprop, dni and cdni on FCN-6 at batch 256 (the paper's synthesizers),
and the achieved FLOP/s of each against a plain matmul of comparable size timed in the same run."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes

from bench_device import DEVICE, sync

BATCH, IN_SHAPE = 256, (1, 28, 28)
MATMUL = {}                       # FLOP/s of the reference matmul, measured first in this session


def timed(benchmark, fn, rounds=20, warmup=5):
    def run():
        fn()
        sync()                    # a step is finished when the device is
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    return benchmark.stats.stats.mean


def test_matmul_reference(benchmark, record):
    # A matmul as large as FCN-6's biggest layers are together: (256 x 1024) @ (1024 x 1024).
    a, b = torch.randn(BATCH, 1024, device=DEVICE), torch.randn(1024, 1024, device=DEVICE)
    mean = timed(benchmark, lambda: a @ b, rounds=200, warmup=20)
    flops = 2 * BATCH * 1024 * 1024
    MATMUL["flops_per_s"] = flops / mean
    benchmark.extra_info.update(flops_per_s=flops / mean)
    record(case="matmul 256x1024x1024", steps_per_s=1 / mean, gflop_per_step=flops / 1e9,
           gflop_per_s=flops / mean / 1e9, vs_matmul=1.0, vs_bprop="")


@pytest.mark.parametrize("method,args", [
    ("bprop", {}), ("dni", {}), ("cdni", {}), ("dni", {"synth_width": 256}),
], ids=["bprop", "dni-2x1024", "cdni-linear", "dni-2x256"])
def test_fcn6_training_step(benchmark, record, method, args):
    torch.manual_seed(0)
    stages = build_stages("fcn6", IN_SHAPE, 10).to(DEVICE)
    cls = get_method(method)
    trainer = cls(stages, cls.Settings(**args),
                  Setup(10, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), 3e-5, DEVICE))
    x = torch.rand(BATCH, *IN_SHAPE, device=DEVICE)
    y = torch.randint(0, 10, (BATCH,), device=DEVICE)
    with FlopCounterMode(display=False) as counter:       # FLOPs of one step, counted by torch
        trainer.step(x, y)
    flops = counter.get_total_flops()
    mean = timed(benchmark, lambda: trainer.step(x, y))
    name = f"{method}{'' if not args else '-' + '-'.join(f'{k}={v}' for k, v in args.items())}"
    benchmark.extra_info.update(steps_per_s=1 / mean, flops_per_step=flops, flops_per_s=flops / mean)
    if method == "bprop":
        MATMUL["bprop_steps_per_s"] = 1 / mean
    record(case=f"fcn6 {name} ({DEVICE.type})", steps_per_s=1 / mean, gflop_per_step=flops / 1e9,
           gflop_per_s=flops / mean / 1e9,
           vs_matmul=(flops / mean) / MATMUL["flops_per_s"] if "flops_per_s" in MATMUL else "",
           vs_bprop=(1 / mean) / MATMUL["bprop_steps_per_s"] if "bprop_steps_per_s" in MATMUL else "")
