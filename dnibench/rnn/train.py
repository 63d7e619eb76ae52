"""The recurrent training loops: one run from a RunSpec, metrics out through ``log(metrics, step)``.

A step is one window of T steps on every stream of the batch. Timing as in dnibench/train.py: the
training clock stops at every log point (evaluation is timed apart), CUDA is synchronised before
every clock read, and per-step metrics stay on the device until a log point.

Metrics (step = iteration): train_bpc (bits per character), samples_per_s (characters, i.e. time
steps x streams, per second), steps_per_s, wall_s/train (cumulative), lr, synth_loss, aux_loss,
cpu_util_pct; Copy tasks add current_len, max_len_solved and samples_at_len/<L> (episodes seen when
length L was first solved, logged at that step); PTB adds valid_bpc per evaluation and test_bpc at
the best-validation parameters; the two-timescale system adds b_bpc and b_error (%).
"""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..loop import DivergenceWatch, apply_schedule, lr_factor, lr_metrics, resolve_device, seed_everything, sync
from ..methods.base import adam
from ..tracking import ResourceSampler, RunThreads, StepTimes
from .core import LN2, LSTMCore, RecurrentMethod
from .tasks import (Curriculum, EpisodeStreams, MultiscaleSettings, PTBSettings, RepeatCopySettings, CopySettings,
                    TextStreams, digit_window, lstm_units)

if TYPE_CHECKING:
    from ..suite import RunSpec

LogFn = Callable[[dict[str, float], int], None]


class Meter:
    """Device-side sums between log points (no host sync in a step) and the training clock."""

    def __init__(self, device: torch.device, sampler: ResourceSampler, threads: int = 0):
        self.device, self.sampler, self.threads = device, sampler, threads
        self.times = StepTimes(device)                 # step-time dispersion (tracking.StepTimes)
        self.sums: dict[str, torch.Tensor] = {}
        self.train_s = 0.0
        self.steps = self.samples = 0
        self.mark = sampler.mark()
        sync(device)
        self.t0 = time.perf_counter()
        self.times.start()

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value.detach().clone()

    def count(self, samples: int) -> None:
        self.times.step()                              # CPU only: a clock read, no sync
        self.steps += 1
        self.samples += samples

    def row(self, bits: dict[str, tuple[str, str]], percent: dict[str, tuple[str, str]] | None = None) -> dict[str, float]:
        """Stop the clock and return the interval's row. ``bits``: key -> (sum of nats, count), logged
        in bits per item; ``percent``: key -> (sum of errors, count), logged in percent."""
        sync(self.device)
        elapsed = time.perf_counter() - self.t0
        self.train_s += elapsed
        self.times.window(elapsed, self.steps)
        ratio = {key: (self.sums[num] / self.sums[den].clamp(min=1e-12)).item()
                 for key, (num, den) in {**bits, **(percent or {})}.items() if num in self.sums}
        row = {key: value / LN2 if key in bits else 100 * value for key, value in ratio.items()}
        row.update({key: (v / self.steps).item() for key, v in self.sums.items() if key in ("synth_loss", "aux_loss")})
        row.update({"samples_per_s": self.samples / max(elapsed, 1e-9), "steps_per_s": self.steps / max(elapsed, 1e-9),
                    "wall_s/train": self.train_s, "cpu_threads": float(self.threads), **self.sampler.since(self.mark)})
        self.sums, self.steps, self.samples, self.mark = {}, 0, 0, self.sampler.mark()
        return row

    def restart(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()
        self.times.start()


def _build(spec: RunSpec, in_dim: int, out_dim: int):
    device = resolve_device(spec.device)
    seed_everything(spec.seed)
    core = LSTMCore(in_dim, lstm_units(spec.model), out_dim).to(device)
    cls = spec.method_class()
    if not issubclass(cls, RecurrentMethod):
        raise TypeError(f"method {spec.method!r} is not a recurrent method")
    method = cls(core, cls.Settings.model_validate(spec.method_args), spec.train.lr, device)
    return device, core, method


def _set_lr(spec: RunSpec, optimizers: list[torch.optim.Optimizer], step: int) -> float:
    """Scale each optimizer's own base rate (synth_lr for a synthesizer); returns the run's lr."""
    factor = lr_factor(spec, step)
    apply_schedule(optimizers, factor)
    return spec.train.lr * factor


# ---- Copy and Repeat Copy ---------------------------------------------------------------------------

def copy_loss(y: torch.Tensor, mask: torch.Tensor):
    """Bits summed over the output channels (in nats here), counted where the episode asks for output."""
    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(-1) * mask
    return loss_fn


def train_copy(spec: RunSpec, data, log: LogFn, on_step=lambda n: None) -> dict:
    repeat = spec.task == "repeat_copy"
    args = (RepeatCopySettings if repeat else CopySettings).model_validate(spec.task_args)
    curriculum = Curriculum(repeat, args.start_n, args.length_offset)
    gen = torch.Generator().manual_seed(spec.seed)
    streams = EpisodeStreams(spec.train.batch_size, args.bits, curriculum, gen, getattr(args, "repeat_norm", 10.0))
    device, core, method = _build(spec, streams.in_dim, streams.out_dim)
    T, cfg = method.settings.T, spec.train
    level_err = level_chars = torch.zeros((), device=device)
    steps_done = 0
    with RunThreads() as threads, ResourceSampler(device) as sampler:
        meter = Meter(device, sampler, threads)
        watch = DivergenceWatch()
        for step in range(1, cfg.steps + 1):
            lr = _set_lr(spec, method.optimizers(), step)
            x, y, mask, current = (t.to(device) for t in streams.window(T))
            reset = streams.starts if args.reset_state else None      # on the CPU: LSTMCore.forward reads it
            out = method.window(x, copy_loss(y, mask), reset)
            watch.add(step, out)
            meter.add("err", out["losses"].sum())
            meter.add("chars", mask.sum())
            for key in ("synth_loss", "aux_loss"):
                if key in out:
                    meter.add(key, out[key])
            level_err = level_err + (out["losses"] * current).sum()
            level_chars = level_chars + (mask * current).sum()
            meter.count(T * x.shape[1])
            on_step(step)
            steps_done = step
            solved_now = {}
            if step % args.check_every == 0:
                # The curriculum check (host sync): the error at the current length since the last check.
                if level_chars.item() > 0 and level_err.item() / level_chars.item() / LN2 < args.threshold_bpc:
                    curriculum.advance(streams.episodes)
                    solved_now = {f"samples_at_len/{curriculum.max_len_solved}": float(streams.episodes)}
                level_err = level_chars = torch.zeros((), device=device)
            done = args.max_n is not None and curriculum.n > args.max_n
            if step % cfg.log_every == 0 or step == cfg.steps or solved_now or done:
                watch.check()
                row = meter.row({"train_bpc": ("err", "chars")})
                row.update(solved_now)
                row.update(lr_metrics(method.optimizer_roles(), method.optimizers()))
                row.update({"lr": lr, "current_len": float(curriculum.length),
                            "max_len_solved": float(curriculum.max_len_solved), "samples": float(streams.episodes)})
                log(row, step)
                meter.restart()
            if done:
                break
    summary = {"max_len_solved": float(curriculum.max_len_solved), "final_len": float(curriculum.length),
               "total_wall_s/train": meter.train_s, "steps_done": float(steps_done),
               "mean_samples_per_s": steps_done * T * spec.train.batch_size / max(meter.train_s, 1e-9)}
    summary.update(sampler.summary())
    summary.update(meter.times.summary(), cpu_threads=float(threads))
    log(summary, steps_done)
    return summary


# ---- Penn Treebank characters -----------------------------------------------------------------------

def ptb_loss(y: torch.Tensor, vocab: int):
    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="none").view(y.shape)
    return loss_fn


@torch.no_grad()
def bits_per_char(core: LSTMCore, ids: torch.Tensor, vocab: int, streams: int, device, chunk: int = 256) -> float:
    """Bits per character of the text read as ``streams`` side-by-side streams, state carried on."""
    text = TextStreams(ids, min(streams, max(1, (len(ids) - 1) // 2)))
    state = core.initial_state(text.inputs.shape[1], device)
    total = torch.zeros((), device=device)
    for start in range(0, text.inputs.shape[0], chunk):
        x = F.one_hot(text.inputs[start:start + chunk].to(device), vocab).float()
        logits, state, _ = core(x, state)
        total += ptb_loss(text.targets[start:start + chunk].to(device), vocab)(logits).sum()
    return total.item() / text.targets.numel() / LN2


def train_ptb(spec: RunSpec, data, log: LogFn, on_step=lambda n: None) -> dict:
    args = PTBSettings.model_validate(spec.task_args)
    vocab = len(data.vocab)
    device, core, method = _build(spec, vocab, vocab)
    T, cfg = method.settings.T, spec.train
    streams = TextStreams(data.train, cfg.batch_size)
    valid = data.valid[:args.valid_chars] if args.valid_chars else data.valid
    test = data.test[:args.test_chars] if args.test_chars else data.test
    best_valid, best_step, best_params, since_best, eval_s, steps_done = float("inf"), 0, None, 0, 0.0, 0
    with RunThreads() as threads, ResourceSampler(device) as sampler:
        meter = Meter(device, sampler, threads)
        watch = DivergenceWatch()
        for step in range(1, cfg.steps + 1):
            lr = _set_lr(spec, method.optimizers(), step)
            x, y = streams.window(T)
            x, y = F.one_hot(x.to(device), vocab).float(), y.to(device)
            out = method.window(x, ptb_loss(y, vocab))
            watch.add(step, out)
            meter.add("err", out["losses"].sum())
            meter.add("chars", torch.tensor(float(y.numel()), device=device))
            for key in ("synth_loss", "aux_loss"):
                if key in out:
                    meter.add(key, out[key])
            meter.count(y.numel())
            on_step(step)
            steps_done = step
            is_eval = step % cfg.eval_every == 0 or step == cfg.steps
            stop = False
            if step % cfg.log_every == 0 or is_eval:
                watch.check()
                row = meter.row({"train_bpc": ("err", "chars")})
                row["lr"] = lr
                row.update(lr_metrics(method.optimizer_roles(), method.optimizers()))
                if is_eval:
                    e0 = time.perf_counter()
                    row["valid_bpc"] = bits_per_char(core, valid, vocab, args.eval_streams, device)
                    if row["valid_bpc"] < best_valid:      # early stopping keeps the best-validation parameters
                        best_valid, best_step, since_best = row["valid_bpc"], step, 0
                        best_params = copy.deepcopy(core.state_dict())
                    else:
                        since_best += 1
                    eval_s += time.perf_counter() - e0
                    row["wall_s/eval"] = eval_s
                    stop = args.patience is not None and since_best >= args.patience
                log(row, step)
                meter.restart()
            if stop:
                break
    core.load_state_dict(best_params)
    e0 = time.perf_counter()
    test_bpc = bits_per_char(core, test, vocab, args.eval_streams, device)
    eval_s += time.perf_counter() - e0
    summary = {"test_bpc": test_bpc, "best_valid_bpc": best_valid, "best_step": float(best_step),
               "steps_done": float(steps_done), "total_wall_s/train": meter.train_s, "total_wall_s/eval": eval_s,
               "mean_samples_per_s": steps_done * T * cfg.batch_size / max(meter.train_s, 1e-9)}
    summary.update(sampler.summary())
    summary.update(meter.times.summary(), cpu_threads=float(threads))
    log(summary, steps_done)
    return summary


# ---- the two-timescale system ------------------------------------------------------------------------

PAIRED_INIT_OFFSET = 7919            # the message and B's stream: another seed than A's LSTM and the method's


def _multiscale_parts(seed: int, hidden: int, args: MultiscaleSettings, T: int, device):
    """A's message read-out, B's cell and B's head. With ``paired_init`` they are drawn from a stream of their
    own (seed + PAIRED_INIT_OFFSET, the global generator restored after), the same whatever the method built."""
    def build():
        return (torch.nn.Linear(hidden, args.message_dim).to(device),
                torch.nn.LSTMCell(args.message_dim, args.b_units).to(device),
                torch.nn.Linear(args.b_units, T + 1).to(device))
    if not args.paired_init:
        return build()
    with torch.random.fork_rng(devices=[]):            # the CPU generator, where the modules are initialised
        torch.default_generator.manual_seed(seed + PAIRED_INIT_OFFSET)    # (torch.manual_seed would reseed CUDA too)
        return build()


def train_multiscale(spec: RunSpec, data, log: LogFn, on_step=lambda n: None) -> dict:
    """A (the LSTM of the run's model, own task: the current digit) ticks every step; B (an LSTM cell)
    ticks at the last step of every window of T steps on A's message m = W h_A and must output the
    number of odd digits in the window. How A learns from B's loss: the method's message interface
    (None: A's window waits for B's backward and gets the true gradient; DNI: a synthetic gradient
    at once, the synthesizer regressed on B's true gradient later), or not at all ("none").
    A's own recurrence is plain truncated BPTT over the window: the method object supplies T and the
    message interface; its state synthesizer (DNI) plays no part here."""
    args = MultiscaleSettings.model_validate(spec.task_args)
    device, core, method = _build(spec, args.digits, args.digits)
    T, cfg = method.settings.T, spec.train
    message, b_cell, b_head = _multiscale_parts(spec.seed, core.hidden, args, T, device)
    # A's LSTM and message read-out train together; the method contributes only its message interface.
    a_opt = adam(list(core.parameters()) + list(message.parameters()), cfg.lr)
    b_opt = adam(list(b_cell.parameters()) + list(b_head.parameters()), cfg.lr)
    cut = args.message_gradient == "none"
    interface = None if cut else method.message_interface(args.message_dim)
    extra_opts = [a_opt, b_opt] + ([interface.optimizer] if interface else [])
    roles = {"a": [a_opt], "b": [b_opt], **({"synth": [interface.optimizer]} if interface else {})}
    gen = torch.Generator().manual_seed(spec.seed)
    batch = cfg.batch_size
    a_state = core.initial_state(batch, device)
    b_state = (torch.zeros(batch, args.b_units, device=device), torch.zeros(batch, args.b_units, device=device))
    steps_done, final = 0, {}
    with RunThreads() as threads, ResourceSampler(device) as sampler:
        meter = Meter(device, sampler, threads)
        watch = DivergenceWatch()
        for step in range(1, cfg.steps + 1):
            lr = _set_lr(spec, extra_opts, step)
            d = digit_window(T, batch, args.digits, gen).to(device)
            count = (d % 2).sum(0)                           # B's target: odd digits in the window
            logits, s_out, outputs = core(F.one_hot(d, args.digits).float(), a_state)
            a_losses = ptb_loss(d, args.digits)(logits)
            m = message(outputs[-1])
            a_objective = a_losses.sum(0).mean()
            b_in = m if (interface is None and not cut) else m.detach().requires_grad_(interface is not None)
            if interface is not None:                       # DNI: A updates now with the synthetic gradient
                a_objective = a_objective + (m * interface.send(m)).sum()
            b_state = b_cell(b_in, tuple(s.detach() for s in b_state))
            b_logits = b_head(b_state[0])
            b_losses = F.cross_entropy(b_logits, count, reduction="none")
            if interface is None and not cut:                # A waits: one backward through B and A
                (a_objective + b_losses.mean()).backward()
            else:
                a_objective.backward()
                b_losses.mean().backward()
            if interface is not None:                       # B's true gradient at m trains the synthesizer
                meter.add("synth_loss", interface.receive(b_in.grad))
            for opt in (a_opt, b_opt):
                opt.step()
                opt.zero_grad(set_to_none=True)
            a_state = s_out.detach()
            watch.add(step, {"a": a_losses, "b": b_losses})
            meter.add("err", a_losses.sum())
            meter.add("chars", torch.tensor(float(d.numel()), device=device))
            meter.add("b_err", b_losses.sum())
            meter.add("b_wrong", (b_logits.detach().argmax(1) != count).sum().float())
            meter.add("b_n", torch.tensor(float(batch), device=device))
            meter.count(d.numel())
            on_step(step)
            steps_done = step
            if step % cfg.log_every == 0 or step == cfg.steps:
                watch.check()
                row = meter.row({"train_bpc": ("err", "chars"), "b_bpc": ("b_err", "b_n")},
                                percent={"b_error": ("b_wrong", "b_n")})
                row["lr"] = lr
                row.update(lr_metrics(roles, extra_opts))
                log(row, step)
                final = row
                meter.restart()
    summary = {"final_b_error": final["b_error"], "final_b_bpc": final["b_bpc"], "final_train_bpc": final["train_bpc"],
               "total_wall_s/train": meter.train_s,
               "mean_samples_per_s": steps_done * T * batch / max(meter.train_s, 1e-9)}
    summary.update(sampler.summary())
    summary.update(meter.times.summary(), cpu_threads=float(threads))
    log(summary, steps_done)
    return summary
