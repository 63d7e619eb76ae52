"""Build a method on a tiny network and draw a seeded random batch: what the method tests share."""
import copy

import torch
from torch import nn

from dnibench.methods import Setup, get_method
from dnibench.models import build_stages, stage_output_shapes


def build_method(method: str, in_shape: tuple[int, ...], model: str = "fcn4", seed: int = 0, lr: float = 1e-2,
                 coin_seed: int | None = None, fused_step: bool = True, **settings):
    """``method`` on freshly seeded ``model`` stages (4-filter CNNs), CPU; ``coin_seed`` seeds p_update's coins;
    ``fused_step=False`` keeps the per-stage path even where the fused one applies."""
    torch.manual_seed(seed)
    stages = build_stages(model, in_shape, 10, cnn_filters=4)
    cls = get_method(method)
    setup = Setup(10, in_shape, stage_output_shapes(stages, in_shape), lr=lr, device=torch.device("cpu"),
                  fused_step=fused_step)
    if coin_seed is not None:
        setup.generator = torch.Generator().manual_seed(coin_seed)
    return cls(stages, cls.Settings(**settings), setup)


def random_batch(in_shape: tuple[int, ...], n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *in_shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def true_forward(stages, x, y):
    """The real forward chain h_1..h_N on a copy of ``stages`` (detached), and dL/dh_i below the top by
    plain autograd: what an exact method must reproduce."""
    hs, h = [], x
    for stage in copy.deepcopy(stages):
        h = stage(h)
        hs.append(h)
    grads = torch.autograd.grad(nn.functional.cross_entropy(h, y), hs[:-1])
    return [h.detach() for h in hs], grads


def window_loss(y: torch.Tensor):
    """A recurrent window's loss function: per-step, per-stream cross-entropy of logits [T, B, C] against
    labels y [T, B], shaped [T, B] (what backward_window sums over steps and averages over the batch)."""
    import torch.nn.functional as F
    return lambda logits: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                          reduction="none").view(y.shape)
