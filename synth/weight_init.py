"""Weight initialisation of the official code: xavier_normal with gain 0.02, biases 0 (§5.3)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor: the original under a spectral-norm parametrisation."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


@torch.no_grad()
def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """Re-initialise every conv and linear layer of `net` in place; norms stay parameter-free."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(raw_weight(m), gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net
