"""The model's trainable parameters as the arrays a federated round exchanges.

One list of float32 arrays, in ``model.parameters()`` order, of the parameters that require
gradients (frozen encoders are public and never sent). The ClientApp sends and receives
them, the ServerApp initialises and finally loads them; both check count and shapes here.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import SemioFedError


def get_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    """Copies of ``model``'s trainable parameters."""
    return [p.detach().cpu().numpy().copy() for p in model.parameters() if p.requires_grad]


def set_arrays(model: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    """Load ``arrays`` into ``model``'s trainable parameters; refused on a count or shape
    that does not match (nothing is loaded then)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if len(params) != len(arrays):
        raise SemioFedError(f"got {len(arrays)} arrays for a model with {len(params)} parameters")
    for i, (p, a) in enumerate(zip(params, arrays, strict=True)):
        if tuple(a.shape) != tuple(p.shape):
            raise SemioFedError(
                f"array {i} of shape {tuple(a.shape)} for a parameter of shape {tuple(p.shape)}"
            )
    with torch.no_grad():
        for p, a in zip(params, arrays, strict=True):
            p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))
