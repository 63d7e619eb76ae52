"""Pipelined bprop (dnibench/parallel/pipelined.py) in 2 real gloo processes equals one process.

The FCN has BatchNorm, so with M micro-batches the one-process reference does the same micro-batch
gradient accumulation (each BatchNorm normalises over B/M examples); with M = 1 the reference is a
plain whole-batch bprop step with ``task_loss``. The optimizer is SGD: Adam is nearly invariant to the
scale of the gradient, so it would hide a loss scaled by M, which SGD does not.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dnibench.methods.base import task_loss
from dnibench.models import build_stages

IN_SHAPE, CLASSES, BATCH, STEPS, LR = (12,), 5, 16, 3, 0.1
CASES = [(1, "gpipe"), (4, "gpipe"), (4, "1f1b")]
SPLIT = 2                                    # rank 0 holds stages [0, SPLIT), rank 1 the rest


def _model() -> nn.ModuleList:
    torch.manual_seed(0)
    return build_stages("fcn4", IN_SHAPE, CLASSES)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, *IN_SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g))
            for _ in range(STEPS)]


def _worker(rank: int, world: int, rdzv: str, out: str) -> None:
    import types

    from dnibench.parallel import pipelined
    from dnibench.parallel.pipelined import PipelinedBprop

    sleeps: list[float] = []                   # the pipeline's yields to gloo after a send (module doc)
    ticks = itertools.count()                  # a clock that moves by 1 at each reading: the timings are exact counts
    pipelined.time = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)), sleep=sleeps.append)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rdzv, rank=rank, world_size=world)
    try:
        results = {}
        for m, schedule in CASES:
            stages = _model()
            part = nn.Sequential(*(stages[:SPLIT] if rank == 0 else stages[SPLIT:]))
            in_shape = IN_SHAPE if rank == 0 else (256,)
            opt = torch.optim.SGD(part.parameters(), lr=LR)
            pipe = PipelinedBprop(part, rank, world, m, BATCH, in_shape, opt, schedule=schedule)
            chunks: list[str] = []             # the order of the library's forward (F) and backward (B) chunks
            for name, mark in (("forward_one_chunk", "F"), ("backward_one_chunk", "B")):
                def recorded(*args, _inner=getattr(pipe.stage, name), _mark=mark, **kwargs):
                    chunks.append(_mark)
                    return _inner(*args, **kwargs)
                setattr(pipe.stage, name, recorded)
            losses = []
            sleeps.clear()
            for x, y in _batches():
                loss = pipe.step(x if rank == 0 else None, y if rank == world - 1 else None)
                losses.append(None if loss is None else float(loss))
            results[(m, schedule)] = {"state": part.state_dict(), "losses": losses,
                                      "timings": dict(pipe.timings), "sleeps": list(sleeps), "chunks": "".join(chunks)}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _reference(m: int) -> tuple[dict, list[float]]:
    stages = _model()
    net = nn.Sequential(*stages)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    losses = []
    for x, y in _batches():
        opt.zero_grad()
        if m == 1:
            loss = task_loss(net(x), y)
            loss.backward()
        else:
            loss = 0.0
            for xc, yc in zip(x.chunk(m), y.chunk(m)):
                part = task_loss(net(xc), yc) * (len(yc) / BATCH)
                part.backward()
                loss = loss + part.detach()
        losses.append(float(loss.detach()))
        opt.step()
    return net.state_dict(), losses


def test_pipelined_two_processes_equal_one_process(tmp_path):
    world = 2
    # the references first: the forked children then inherit torch's warmed-up state (the first
    # backward and optimizer step in a process cost seconds)
    refs = {m: _reference(m) for m in {m for m, _ in CASES}}
    # fork: the children start with torch already imported (spawn re-imports it, seconds per process)
    mp.start_processes(_worker, args=(world, f"file://{tmp_path}/rdzv", str(tmp_path / "out")),
                       nprocs=world, join=True, start_method="fork")
    parts = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(world)]
    for m, schedule in CASES:
        ref_state, ref_losses = refs[m]
        first, last = parts[0][(m, schedule)], parts[1][(m, schedule)]
        assert first["losses"] == [None] * STEPS
        assert last["losses"] == __import__("pytest").approx(ref_losses, rel=1e-5)
        # rank 0's Sequential holds stages 0..SPLIT-1, rank 1's holds the rest: rename to the reference's keys
        got = {}
        for rank, state in ((0, first["state"]), (1, last["state"])):
            for key, value in state.items():
                idx, rest = key.split(".", 1)
                got[f"{int(idx) + (0 if rank == 0 else SPLIT)}.{rest}"] = value
        assert set(got) == set(ref_state)
        for key, value in ref_state.items():
            # parameters and BatchNorm buffers (running statistics move once per micro-batch in both)
            assert torch.allclose(got[key].float(), value.float(), atol=1e-5, rtol=1e-4), (m, schedule, key)
        # the parameters really moved (the comparison is not of two untouched initialisations)
        init = nn.Sequential(*_model()).state_dict()
        assert not torch.allclose(init["0.1.weight"], ref_state["0.1.weight"])
        # with a clock that moves by 1 at each reading, a step reads it at its start, before and after each chunk
        # (busy: 1 each), before and after each micro-batch's loss on the last rank (busy: 1 each), and before and
        # after the optimizer's step (busy: 1); wait is the rest of the step, as many ticks again
        for rank, part, losses in ((0, first, 0), (1, last, m)):
            per_step = 2 * m + losses + 1
            assert part["timings"] == {"busy": per_step * STEPS, "wait": per_step * STEPS}, (m, schedule, rank)
        # the schedule asked for ran: GPipe every forward then every backward; 1F1B as many forwards before its first
        # backward as there are ranks from this one to the last (its warm-up), then one of each in turn
        for rank, part in ((0, first), (1, last)):
            order = {"gpipe": "F" * m + "B" * m,
                     "1f1b": "F" * (world - rank) + "BF" * (m - world + rank) + "B" * (world - rank)}[schedule]
            assert part["chunks"] == order * STEPS, (m, schedule, rank)
        # GPipe yields 20 us before a chunk that follows a sent one: rank 0 sends after each forward (M per step,
        # the last before the first backward), rank 1 after each backward but the step's last; 1F1B never
        sent = {0: m, 1: m - 1} if schedule == "gpipe" else {0: 0, 1: 0}
        for rank, part in ((0, first), (1, last)):
            assert part["sleeps"] == [20e-6] * (sent[rank] * STEPS), (m, schedule, rank)


def test_cuda_over_gloo_is_refused_in_one_line(tmp_path):
    """On the GPU machine the library handed gloo CUDA tensors and the run died in gloo ("writev: Bad
    address"); now it is refused up front, naming what it needs."""
    import torch.distributed as dist

    from dnibench.errors import DnibenchError
    from dnibench.parallel.pipelined import PipelinedBprop
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        module = torch.nn.Sequential(torch.nn.Linear(4, 3))
        with pytest.raises(DnibenchError) as err:
            PipelinedBprop(module, 0, 2, 2, 8, (4,), torch.optim.SGD(module.parameters(), lr=0.1), device="cuda")
        assert str(err.value) == ("schedule pipelined on CUDA needs NCCL and one GPU per worker; the executor's gloo "
                                  "transport carries only host tensors (run it with --device cpu)")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("args,message", [
    ({"schedule": "interleaved"}, "schedule 'interleaved': expected one of gpipe, 1f1b"),
    ({"rank": 2}, "rank 2 out of range for 2 workers"),
    ({"rank": -1}, "rank -1 out of range for 2 workers"),
    ({"microbatches": 0}, "batch size 8 does not split into 0 equal micro-batches"),
    ({"microbatches": 3}, "batch size 8 does not split into 3 equal micro-batches"),
    ({"microbatches": 1, "schedule": "1f1b"}, "1f1b needs at least as many micro-batches as workers (1 < 2); use gpipe"),
])
def test_arguments_the_pipeline_cannot_run_are_refused_in_one_line(args, message):
    """Refused before any process group or pipeline stage is touched (none exists here), each in one line."""
    from dnibench.parallel.pipelined import PipelinedBprop
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    kwargs = {"rank": 0, "world": 2, "microbatches": 2, "batch_size": 8, "schedule": "gpipe", **args}
    with pytest.raises(ValueError) as err:
        PipelinedBprop(module, in_shape=(4,), optimizer=torch.optim.SGD(module.parameters(), lr=0.1), **kwargs)
    assert str(err.value) == message


def test_a_step_without_its_whole_batch_is_refused_in_one_line(tmp_path):
    """Rank 0 needs the batch's images and the last rank its labels, each of the batch size (one rank is both)."""
    from dnibench.parallel.pipelined import PipelinedBprop
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rdv", rank=0, world_size=1)
    try:
        module = torch.nn.Sequential(torch.nn.Linear(4, 3))
        pipe = PipelinedBprop(module, 0, 1, 2, 8, (4,), torch.optim.SGD(module.parameters(), lr=0.1))
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        for args, message in (((None, y), "rank 0 needs the batch x of 8 examples"),
                              ((x[:4], y), "rank 0 needs the batch x of 8 examples"),
                              ((x, None), "the last rank needs the labels y of 8 examples"),
                              ((x, y[:4]), "the last rank needs the labels y of 8 examples")):
            with pytest.raises(ValueError) as err:
                pipe.step(*args)
            assert str(err.value) == message
        assert float(pipe.step(x, y)) > 0          # and the whole batch trains
    finally:
        dist.destroy_process_group()
