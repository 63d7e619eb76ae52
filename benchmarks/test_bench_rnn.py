"""Recurrent training steps per second (one window of T = 5 steps on every stream) for truncated BPTT
and recurrent DNI at the paper's sizes: LSTM-256 on Copy (8-bit characters) and LSTM-1024 on PTB
characters (50 symbols), batch 256. steps/s x the step budget of a suite's paper profile is that
profile's cost on this machine (see suites/rnn_*.yaml)."""
import pytest
import torch
import torch.nn.functional as F

from dnibench.methods import get_method
from dnibench.rnn.core import LSTMCore
from dnibench.rnn.train import copy_loss, ptb_loss

from bench_device import DEVICE, sync

BATCH, T = 256, 5
CASES = {"copy-lstm256": (256, 9, 9), "ptb-lstm1024": (1024, 50, 50)}
BASE = {}                                                  # bptt steps/s per case, measured first


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["bptt", "dni_bptt", "dni_bptt_aux"])
def test_lstm_window_step(benchmark, record, case, method):
    hidden, in_dim, out_dim = CASES[case]
    torch.manual_seed(0)
    core = LSTMCore(in_dim, hidden, out_dim).to(DEVICE)
    cls = get_method(method)
    trainer = cls(core, cls.Settings(T=T), lr=1e-3, device=DEVICE)
    if case.startswith("copy"):
        x = torch.randint(0, 2, (T, BATCH, in_dim), device=DEVICE).float()
        loss_fn = copy_loss(torch.randint(0, 2, (T, BATCH, out_dim), device=DEVICE).float(), torch.ones(T, BATCH, device=DEVICE))
    else:
        ids = torch.randint(0, in_dim, (T, BATCH), device=DEVICE)
        x, loss_fn = F.one_hot(ids, in_dim).float(), ptb_loss(ids.roll(-1, 0), in_dim)

    def step():
        trainer.window(x, loss_fn)
        sync()                                             # a step is finished when the device is
    big = hidden >= 1024 and DEVICE.type == "cpu"          # seconds a step on a CPU: fewer rounds
    benchmark.pedantic(step, rounds=3 if big else 20, iterations=1, warmup_rounds=1 if big else 3)
    steps_per_s = 1 / benchmark.stats.stats.mean
    if method == "bptt":
        BASE[case] = steps_per_s
    benchmark.extra_info.update(steps_per_s=steps_per_s, chars_per_s=steps_per_s * T * BATCH)
    record(case=f"{case} {method} T={T} batch {BATCH} ({DEVICE.type})", steps_per_s=steps_per_s,
           chars_per_s=steps_per_s * T * BATCH, vs_bptt=steps_per_s / BASE[case] if case in BASE else "")
