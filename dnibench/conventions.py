"""Task settings that carry the paper's *conventions*: readings of the paper that move a whole row
when read the other way (``conventions`` in dnibench/published/jaderberg2016.yaml). Low in the package
(pydantic only) so the training loops validate them without importing the task registry."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_serializer


class ConventionSettings(BaseModel):
    """Task settings some of whose fields are *conventions*: readings of the paper that move a whole
    row when read the other way (``conventions`` in dnibench/published/jaderberg2016.yaml). A
    convention at its default is left out of the dump, so it enters a run's params and config hash
    only when it departs from the default reading, and runs logged before it was a setting keep their
    hashes; readers of ``task_args`` validate them back through the class (a missing one is the default)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    CONVENTIONS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_default_conventions(self, handler):
        data = handler(self)
        for name in self.CONVENTIONS:
            if name in data and data[name] == type(self).model_fields[name].default:
                del data[name]
        return data


class ImageSettings(ConventionSettings):
    """MNIST / CIFAR-10 ``task_args``: the two conventions of the paper's Table 1 models (dnibench/models.py)."""
    CONVENTIONS = ("layer_count", "pool_stride")
    # What the N of FCN-N / CNN-N counts: with_output (hidden layers + the output layer, e.g. FCN-3 is
    # two hidden layers and the classifier) or hidden_only (N hidden layers, then the classifier).
    layer_count: Literal["with_output", "hidden_only"] = "with_output"
    # Stride of the CNN's 3x3 pooling (padding 1): 2 halves the resolution, 1 keeps it.
    pool_stride: StrictInt = Field(2, ge=1, le=3)
