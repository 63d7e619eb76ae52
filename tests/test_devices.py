"""Device placement without a GPU: models and a training step on the 'meta' device, where a tensor that
some code makes on the CPU instead of the model's device fails exactly as it would on CUDA (the first GPU
run found one: the shape probe in models.stage_output_shapes made its input on the CPU)."""
import pytest
import torch

from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes

IN_SHAPE = (1, 28, 28)


@pytest.mark.parametrize("model", ["fcn4", "cnn3"])
def test_stage_shapes_on_the_models_device(model):
    cpu = stage_output_shapes(build_stages(model, IN_SHAPE, 10, 4), IN_SHAPE)
    meta = stage_output_shapes(build_stages(model, IN_SHAPE, 10, 4).to("meta"), IN_SHAPE)
    assert meta == cpu and len(cpu) == int(model[-1])


@pytest.mark.parametrize("name", ["bprop", "nobprop", "dni", "cdni", "unlock_dni", "unlock_cdni"])
@pytest.mark.parametrize("p_update", [1.0, 0.5])
def test_a_step_makes_nothing_off_the_device(name, p_update):
    stages = build_stages("fcn4", IN_SHAPE, 10, 4).to("meta")
    setup = Setup(10, IN_SHAPE, stage_output_shapes(stages, IN_SHAPE), lr=1e-3, device=torch.device("meta"),
                  generator=torch.Generator().manual_seed(0))
    cls = get_method(name)
    args = {"p_update": p_update}
    if name not in ("bprop", "nobprop"):
        args.update(synth_hidden_layers=1, synth_width=16)
    if name.startswith("unlock"):
        args.update(input_hidden_layers=1, input_width=16)
    method = cls(stages, cls.Settings.model_validate(args), setup)
    metrics = method.step(torch.empty(8, *IN_SHAPE, device="meta"), torch.empty(8, dtype=torch.long, device="meta"))
    assert metrics and all(v.device.type == "meta" for v in metrics.values())
