"""Pydantic field types shared by the settings models (suite, methods, tasks): what a number read from
YAML may be.

pydantic's lax mode reads ``true`` as 1.0 for a float and ``1`` as true for a bool, so ``p_update: true``
or ``lr: yes`` ran silently at 1.0. ``Real`` refuses booleans and keeps the rest of lax mode: ints, and
numeric strings such as ``1e-4``, which YAML 1.1 (PyYAML) reads as text when the mantissa has no dot.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator


def _not_a_bool(value):
    if isinstance(value, bool):
        raise ValueError(f"expected a number; got {value} (true/false is not a number)")
    return value


Real = Annotated[float, BeforeValidator(_not_a_bool)]
