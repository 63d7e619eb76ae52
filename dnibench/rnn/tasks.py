"""The sequence tasks of paper §3.2 and their registration: Copy and Repeat Copy (the NTM tasks of
Graves et al. 2014, generated on the fly, with the curriculum), Penn Treebank characters, and the
two-timescale system. Each task has its own pydantic ``Settings`` (a suite's ``task_args``).

Copy / Repeat Copy episode (our layout; the paper gives the task, not the encoding). A character is
a random binary vector of ``bits`` bits (Graves et al. 2014). The network reads N characters, then a
delimiter step (stop channel on; for Repeat Copy the repeat count R on its own channel, as R /
``repeat_norm``), then writes the N characters (R times for Repeat Copy) and finally an end marker.
The loss (bits per character) is counted on the written characters and the end marker only. Input
channels: bits + stop (+ repeat); output channels: bits + end.

Length, as the paper reports it: T_task = N + 3 for Copy and N*R + 3 for Repeat Copy (a convention,
``length_counts``: "N" / "N*R" counts the characters only; see ``conventions`` in
dnibench/published/jaderberg2016.yaml for why +3 is the default). The curriculum
starts at N = R = 1 and, once the average error at the current length falls below 0.15 bits per
character, lengthens by one step: N + 1 for Copy; for Repeat Copy N and R grow in turn
((1,1), (2,1), (2,2), (3,2), ...: lengths 4, 5, 7, 9, 12, 15, 19, 23, ...; every Repeat Copy value of
the paper's table is one of these lengths).

Between episodes (the paper is silent): with ``reset_state`` (the Copy suites' setting) the state is
zeroed as a stream starts an episode (inside the window, so no gradient crosses the restart): episodes
are independent, as in the NTM tasks. Without it (the settings' default, the older layout) each stream's
LSTM state runs on from one episode into the next, so truncated BPTT and the bootstrapped target see one
continuing stream; there the undiscounted target collapsed DNI to chance at the quick schedule (numbers
in suites/rnn_copy.yaml).
"""
from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from ..conventions import ConventionSettings
from ..errors import SuiteError
from ..fields import Real
from ..tasks import Task, register_task

MAX_UNITS = 16384


def lstm_units(model: str) -> int:
    """'lstm256' -> 256: RNN tasks name their model by the LSTM's size."""
    match = re.fullmatch(r"lstm(\d+)", model)
    if not match or not 1 <= int(match.group(1)) <= MAX_UNITS:
        raise SuiteError(f"model {model!r}: expected lstmN, an LSTM with N units (1..{MAX_UNITS}), e.g. lstm256")
    return int(match.group(1))


# ---- Copy and Repeat Copy ---------------------------------------------------------------------------

class CopySettings(ConventionSettings):                       # extra fields, .inf / .nan: one-line error
    CONVENTIONS = ("length_counts",)
    # The length reported (max_len_solved, samples_at_len/<L>): N + 3 (the paper's T_task) or N alone.
    # Training is the same either way; the reading decides which published cell a run is held against.
    length_counts: Literal["N+3", "N"] = "N+3"
    bits: StrictInt = Field(8, ge=1, le=64)                  # a character: random binary vector (NTM: 8 bits)
    threshold_bpc: Real = Field(0.15, gt=0, le=64)           # lengthen once the error is below this
    check_every: StrictInt = Field(100, ge=1, le=1_000_000)  # steps between curriculum checks
    start_n: StrictInt = Field(1, ge=1, le=10_000)           # N of the first episodes
    max_n: StrictInt | None = Field(None, ge=1, le=10_000)   # stop once this N is solved (None: the step budget)
    # True: a stream's LSTM state (h and c) is set to zeros as it starts each episode, so the episodes
    # are independent, as the NTM tasks are, and no gradient or bootstrapped target crosses an episode
    # boundary. False: the state runs on from one episode into the next (the older layout).
    reset_state: StrictBool = False

    @property
    def length_offset(self) -> int:
        return 3 if self.length_counts.endswith("+3") else 0

    @model_validator(mode="after")
    def _ranges(self):
        if self.threshold_bpc >= self.bits + 1:          # a uniform guess costs 1 bit per channel
            raise ValueError(f"threshold_bpc {self.threshold_bpc} must be below the chance level of {self.bits + 1} "
                             f"bits per character ({self.bits} bits and the end marker)")
        if self.max_n is not None and self.max_n < self.start_n:
            raise ValueError(f"max_n {self.max_n} must be at least start_n {self.start_n}")
        return self


class RepeatCopySettings(CopySettings):
    repeat_norm: Real = Field(10.0, gt=0)                    # R is presented as R / repeat_norm
    length_counts: Literal["N*R+3", "N*R"] = "N*R+3"         # as Copy's: T_task, or the characters written


class Curriculum:
    """The current (N, R) and the record of every length solved with the samples seen by then."""

    def __init__(self, repeat: bool, start_n: int = 1, offset: int = 3):
        self.repeat = repeat
        self.offset = offset                                 # length = N*R + offset (length_counts)
        self.n, self.r = start_n, 1
        self.solved: list[tuple[int, int]] = []              # (length, samples seen when first solved)

    @property
    def length(self) -> int:
        return self.n * self.r + self.offset

    def advance(self, samples: int) -> None:
        self.solved.append((self.length, samples))
        if self.repeat and self.r < self.n:
            self.r += 1
        else:
            self.n += 1

    @property
    def max_len_solved(self) -> int:
        return self.solved[-1][0] if self.solved else 0


class EpisodeStreams:
    """``batch`` independent streams of episodes, back to back. Each stream starts after a random
    number of idle steps, so window boundaries fall at different places of the episodes in different
    streams. A stream takes the curriculum's current (N, R) when it starts an episode; ``current``
    marks positions whose episode is at the current length (the only ones the curriculum check
    counts); ``starts`` (after each ``window``) marks [T, B] the steps at which a stream starts an
    episode: with ``reset_state`` the LSTM state is zeroed there (LSTMCore.forward), otherwise the
    LSTM runs on across episode boundaries."""

    def __init__(self, batch: int, bits: int, curriculum: Curriculum, generator: torch.Generator,
                 repeat_norm: float = 10.0):
        self.batch, self.bits, self.cur, self.gen = batch, bits, curriculum, generator
        self.repeat_norm = repeat_norm
        self.in_dim = bits + (2 if curriculum.repeat else 1)
        self.out_dim = bits + 1
        first = curriculum.n * (curriculum.r + 1) + 2
        self.phase = -torch.randint(0, first, (batch,), generator=generator)   # idle steps first
        self.n = torch.full((batch,), curriculum.n)
        self.r = torch.full((batch,), curriculum.r)
        self.chars = torch.zeros(batch, curriculum.n, bits)
        self.episodes = 0                                    # completed episodes, all streams
        self.starts = torch.zeros(0, batch)                  # [T, B] of the last window: episode starts

    def window(self, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next T steps: x [T, B, in], y [T, B, out], mask [T, B] (positions with a loss), current [T, B]."""
        B, rows = self.batch, torch.arange(self.batch)
        x = torch.zeros(T, B, self.in_dim)
        y = torch.zeros(T, B, self.out_dim)
        mask = torch.zeros(T, B)
        current = torch.zeros(T, B)
        self.starts = torch.zeros(T, B)
        for t in range(T):
            start = self.phase == 0
            self.starts[t] = start.float()
            if bool(start.any()):
                self.n[start], self.r[start] = self.cur.n, self.cur.r
                if self.cur.n > self.chars.shape[1]:
                    self.chars = torch.cat([self.chars, torch.zeros(B, self.cur.n - self.chars.shape[1], self.bits)], 1)
                fresh = torch.randint(0, 2, self.chars.shape, generator=self.gen).float()
                self.chars[start] = fresh[start]
            p, n, r = self.phase, self.n, self.r
            reading = (p >= 0) & (p < n)
            writing = (p > n) & (p <= n + n * r)
            end = p == n + n * r + 1
            x[t, :, :self.bits] = self.chars[rows, p.clamp(0, self.chars.shape[1] - 1)] * reading[:, None]
            x[t, :, self.bits] = (p == n).float()
            if self.cur.repeat:
                x[t, :, self.bits + 1] = (p == n).float() * r / self.repeat_norm
            out_index = ((p - n - 1).clamp(min=0) % n).clamp(max=self.chars.shape[1] - 1)
            y[t, :, :self.bits] = self.chars[rows, out_index] * writing[:, None]
            y[t, :, self.bits] = end.float()
            mask[t] = (writing | end).float()
            current[t] = ((n == self.cur.n) & (r == self.cur.r)).float()
            self.phase = torch.where(end, torch.zeros_like(p), p + 1)
            self.episodes += int(end.sum())
        return x, y, mask, current


# ---- Penn Treebank characters -----------------------------------------------------------------------

class PTBSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)   # .inf / .nan: one-line error
    valid_chars: StrictInt | None = Field(None, ge=2)        # first N validation characters (None: all)
    test_chars: StrictInt | None = Field(None, ge=2)         # first N test characters (None: all)
    eval_streams: StrictInt = Field(16, ge=1, le=4096)       # evaluation runs the text as this many streams
    patience: StrictInt | None = Field(None, ge=1)           # stop after this many evals without a new best


class TextStreams:
    """The usual character-LM batching: the text cut into ``batch`` contiguous streams read side by
    side, T characters per window; the state runs on, and the streams wrap round at the end."""

    def __init__(self, ids: torch.Tensor, batch: int):
        length = (len(ids) - 1) // batch
        if length < 2:
            raise SuiteError(f"PTB: {len(ids)} characters cannot feed a batch of {batch} streams")
        self.inputs = ids[:length * batch].view(batch, length).t()
        self.targets = ids[1:length * batch + 1].view(batch, length).t()
        self.pos = 0

    def window(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + T > self.inputs.shape[0]:
            self.pos = 0
        x, y = self.inputs[self.pos:self.pos + T], self.targets[self.pos:self.pos + T]
        self.pos += T
        return x, y


# ---- the two-timescale system ------------------------------------------------------------------------

class MultiscaleSettings(BaseModel):
    """Network A ticks every step on a stream of random digits and classifies the current digit;
    network B ticks every T steps (the method's T), reads A's message, and must say how many of the
    last T digits were odd. A learns to send the count only through B's loss (our concrete choice of
    the paper's two-timescale task, whose data the paper leaves unspecified here: MNIST digits are
    replaced by random one-hot digits so the task needs no data set)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)   # .inf / .nan: one-line error
    digits: StrictInt = Field(10, ge=2, le=1000)
    message_dim: StrictInt = Field(16, ge=1, le=4096)
    b_units: StrictInt = Field(64, ge=1, le=MAX_UNITS)
    # "method": the method decides (bptt: A waits for B's true gradient; dni_bptt: synthetic gradient);
    # "none": the message is cut, A gets no gradient from B (the floor).
    message_gradient: Literal["method", "none"] = "method"
    # true: the message read-out and B are drawn from the seed alone (their own stream), so at one seed every
    # method and message_gradient starts A, the message and B from the same weights: a paired comparison.
    # false: drawn after the method's own models, as every run logged before this setting existed (a DNI run
    # then started B from other weights than the BPTT run of its seed).
    paired_init: StrictBool = True


def digit_window(T: int, batch: int, digits: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, digits, (T, batch), generator=generator)


# ---- registration ------------------------------------------------------------------------------------

def _generated(_data_dir, _cifar_dir):
    return None                                              # generated on the fly, seeded per run


def _ptb(data_dir, _cifar_dir):
    from ..data import load_ptb
    return load_ptb(data_dir)


def _train(kind: str):
    def train(spec, data, log, on_step=lambda n: None):
        from . import train as loops
        return getattr(loops, f"train_{kind}")(spec, data, log, on_step)
    return train


# The image tasks' data and model settings; the generated tasks also have no evaluation schedule (Copy checks
# its curriculum every check_every steps, a task setting; the two-timescale system logs its training loss).
IMAGE_ONLY = ("train_subset", "test_subset", "cnn_filters")
GENERATED_UNUSED = (*IMAGE_ONLY, "eval_every")
register_task(Task("copy", "rnn", _generated, lstm_units, _train("copy"), CopySettings, unused_train=GENERATED_UNUSED))
register_task(Task("repeat_copy", "rnn", _generated, lstm_units, _train("copy"), RepeatCopySettings,
                   unused_train=GENERATED_UNUSED))
register_task(Task("ptb", "rnn", _ptb, lstm_units, _train("ptb"), PTBSettings, unused_train=IMAGE_ONLY))
register_task(Task("multiscale", "rnn", _generated, lstm_units, _train("multiscale"), MultiscaleSettings,
                   unused_train=GENERATED_UNUSED))
