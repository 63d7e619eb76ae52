"""dnibench's FF steps against a minimal hand-written PyTorch loop doing the same arithmetic (the
reference: what a researcher would write for one method in one file, with the fastest Adam), at
batch 64 and 256 on FCN-6. Target: every method's step <= 1.05x the reference's.

Measured interleaved (dnibench step, reference step, dnibench, reference, ...) on the same batch after
a warm-up, so a neighbour's load falls on both alike; the ratio is of the medians. Both start from the
same parameters and take the same steps, so their parameters must still agree at the end: the
reference is checked to be the same arithmetic, not just similar work. On a shared machine the medians
can still land in different modes (seen here: one 4 ms, the other 8 ms, either way round); the ratio
of the fastest calls is printed next to it, with the load average."""
import os
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes

from bench_device import DEVICE, sync

IN_SHAPE, MODEL, CLASSES = (1, 28, 28), "fcn6", 10
WARMUP, ROUNDS = 10, 60


def adam(params, lr):
    return torch.optim.Adam(params, lr=lr, fused=DEVICE.type in ("cpu", "cuda"))


# ---- the references, written plainly ----------------------------------------------------------------

class PlainBackprop:
    def __init__(self, stages, lr):
        self.net = nn.Sequential(*stages)
        self.opt = adam(self.net.parameters(), lr)

    def step(self, x, y):
        loss = F.cross_entropy(self.net(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


class PlainNoBackprop:
    def __init__(self, stages, lr):
        self.lower, self.top = nn.Sequential(*stages[:-1]), stages[-1]
        self.opt = adam(self.top.parameters(), lr)

    def step(self, x, y):
        with torch.no_grad():
            h = self.lower(x)
        loss = F.cross_entropy(self.top(h), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def dni_backward(stages, synths, x, y, c=None):
    """One DNI step's gradients (no optimizer step): each stage's with M(h[, c]) / B injected at its
    output, each M's squared error against B x the gradient that reached the next stage's input
    (bootstrapped; the true gradient below the output stage). Returns the task loss."""
    batch, top = x.shape[0], len(stages) - 1
    inputs, outs, grads, preds = [], [], [], []
    h = x
    for i, stage in enumerate(stages):
        h_in = h.detach().requires_grad_(i > 0)
        out = stage(h_in)
        if i < top:
            pred = synths[i](out.detach() if c is None else torch.cat([out.detach(), c], 1))
            preds.append(pred)
            outs.append(out)
            grads.append(pred.detach() / batch)
        else:
            loss = F.cross_entropy(out, y)
            outs.append(loss)
            grads.append(None)
        inputs.append(h_in)
        h = out.detach()
    torch.autograd.backward(outs, grads)
    synth_loss = sum((preds[i - 1] - inputs[i].grad * batch).pow(2).sum(1).mean() for i in range(1, top + 1))
    synth_loss.backward()
    return loss


class PlainDNI:
    """DNI between every pair of stages: each stage updates with M(h, c) / B injected at its output;
    M_i regresses (squared error summed over features, batch mean) towards B x the gradient that
    reached stage i's input (bootstrapped; the true gradient below the output stage)."""

    def __init__(self, stages, synths, lr, conditioned):
        self.stages, self.synths, self.conditioned = stages, synths, conditioned
        self.opt = adam([p for m in [*stages, *synths] for p in m.parameters()], lr)

    def step(self, x, y):
        loss = dni_backward(self.stages, self.synths, x, y, F.one_hot(y, CLASSES).float() if self.conditioned else None)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def plain_synthesizer(features, context, hidden_layers, width):
    layers, n = [], features + context
    for _ in range(hidden_layers):
        layers += [nn.Linear(n, width), nn.BatchNorm1d(width), nn.ReLU()]
        n = width
    final = nn.Linear(n, features)
    nn.init.zeros_(final.weight)
    nn.init.zeros_(final.bias)
    return nn.Sequential(*layers, final)


# ---- the pairs ----------------------------------------------------------------------------------------

CASES = {"bprop": ("bprop", {}), "nobprop": ("nobprop", {}), "dni-linear": ("dni", {"synth_hidden_layers": 0}),
         "cdni-linear": ("cdni", {}), "dni-2x1024": ("dni", {})}


def build_pair(case, lr=3e-4):
    """dnibench's method and the plain loop, on two copies of the same freshly seeded parameters."""
    method, settings = CASES[case]
    torch.manual_seed(0)
    stages = build_stages(MODEL, IN_SHAPE, CLASSES).to(DEVICE)
    cls = get_method(method)
    ours = cls(stages, cls.Settings(**settings),
               Setup(CLASSES, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), lr, DEVICE))
    twin = nn.ModuleList(build_stages(MODEL, IN_SHAPE, CLASSES)).to(DEVICE)
    twin.load_state_dict(stages.state_dict())
    if method == "bprop":
        return ours, PlainBackprop(list(twin), lr)
    if method == "nobprop":
        return ours, PlainNoBackprop(list(twin), lr)
    s = ours.settings
    synths = nn.ModuleList(plain_synthesizer(shape[0], CLASSES if ours.conditioned else 0, s.synth_hidden_layers,
                                             s.synth_width) for shape in ours.setup.stage_shapes[:-1]).to(DEVICE)
    for mine, theirs in zip(synths, ours.synthesizers):     # same hidden-layer initialisation
        mine.load_state_dict(theirs.net.state_dict())
    return ours, PlainDNI(list(twin), list(synths), lr, ours.conditioned)


def stage_state(stages) -> list[torch.Tensor]:
    return [v for s in stages for v in s.state_dict().values()]


def interleaved(a, b, rounds=ROUNDS, warmup=WARMUP):
    """Per-call seconds of a() and b(), called alternately (warm-up calls not kept)."""
    ta, tb = [], []
    for r in range(warmup + rounds):
        for fn, out in ((a, ta), (b, tb)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                out.append(time.perf_counter() - t0)
    return ta, tb


@pytest.mark.parametrize("batch", [64, 256])
@pytest.mark.parametrize("case", list(CASES))
def test_step_vs_hand_written_loop(benchmark, record, case, batch):
    ours, plain = build_pair(case)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *IN_SHAPE, generator=g).to(DEVICE)
    y = torch.randint(0, CLASSES, (batch,), generator=g).to(DEVICE)
    rounds = ROUNDS // 3 if case == "dni-2x1024" and DEVICE.type == "cpu" else ROUNDS
    result = {}

    def pair():
        result["t"] = interleaved(lambda: ours.step(x, y), lambda: plain.step(x, y), rounds=rounds)
    benchmark.pedantic(pair, rounds=1, iterations=1)
    t_ours, t_plain = result["t"]
    ratio = statistics.median(t_ours) / statistics.median(t_plain)
    # Same start, same steps: the same parameters (fused Adam in both; summation order may differ).
    plain_stages = getattr(plain, "stages", None) or list(getattr(plain, "net", [])) or [*plain.lower, plain.top]
    for mine, theirs in zip(stage_state(ours.stages), stage_state(plain_stages)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    benchmark.extra_info.update(ratio_to_reference=ratio, ours_ms=1e3 * statistics.median(t_ours),
                                reference_ms=1e3 * statistics.median(t_plain))
    record(case=f"{MODEL} {case} batch {batch} ({DEVICE.type}, {torch.get_num_threads()} threads)",
           ours_ms=1e3 * statistics.median(t_ours), reference_ms=1e3 * statistics.median(t_plain),
           vs_reference=ratio, vs_reference_min=min(t_ours) / min(t_plain), target="<= 1.05",
           steps=2 * (WARMUP + rounds), load_avg_1m=os.getloadavg()[0])
