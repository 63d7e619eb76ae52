"""Truncated BPTT (paper §3.2, the baseline): the LSTM is unrolled for windows of T steps, the state
is carried across windows (and across episode boundaries) but no gradient crosses a window boundary.
Everything is the recurrent base class as is: see dnibench/rnn/core.py."""
from __future__ import annotations

from ..rnn.core import RecurrentMethod, RNNSettings
from . import register


@register
class BPTT(RecurrentMethod):
    name = "bptt"
    description = "LSTM with truncated BPTT over windows of T steps"
    Settings = RNNSettings
