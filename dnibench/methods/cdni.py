"""cDNI: DNI whose synthesizers are conditioned on the label (paper §3.1): delta_hat = M(h, c), c the
one-hot label, concatenated for fully-connected features, as 10 constant channels for conv features.
The paper's FCN cDNI synthesizer is linear (no hidden layer)."""
from __future__ import annotations

from pydantic import Field, StrictInt

from . import register
from .dni import DNI, DNISettings


class CDNISettings(DNISettings):
    synth_hidden_layers: StrictInt = Field(0, ge=0, le=2)


@register
class ConditionedDNI(DNI):
    name = "cdni"
    description = "DNI with label-conditioned synthesizers"
    Settings = CDNISettings
    conditioned = True
