"""Values derived from a block's tensors (folded BN, prepacked weights), kept between
calls and never stale.

An entry is dropped as soon as any source tensor changes: its version counter (in-place
edits, optimizer steps, ``load_state_dict``), its storage, dtype, device or shape
(``.to()``), or the extra key (eps, compute dtype). The cache keeps its source tensors
alive, so a stale entry can never match a new tensor at a recycled address. It is not
used while torch.compile or torch.export traces (there, the derivation is part of the graph).

Not seen: in-place edits through ``tensor.data`` (a ``.data`` view has a version counter
of its own, which PyTorch does not share with the parameter). Edit parameters and buffers
in place under ``torch.no_grad()`` instead, as optimizers do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def stamp(t: torch.Tensor) -> tuple:
    """What identifies a tensor's current contents without reading them."""
    return (t._version, t.data_ptr(), t.dtype, t.device, t.shape)


class DerivedCache:
    """One value derived from ``sources`` by ``make``; recomputed when a source changes."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.sources: tuple = ()
        self.key: tuple | None = None
        self.value: Any = None

    def get(self, sources: tuple, extra: tuple, make: Callable[[], Any]) -> Any:
        sources = tuple(t for t in sources if t is not None)
        key = (tuple(stamp(t) for t in sources), extra)
        if key != self.key or any(a is not b for a, b in zip(sources, self.sources)):
            self.clear()
            self.value, self.sources, self.key = make(), sources, key
        return self.value

    # Derived tensors need not pickle or deep-copy: a copy starts empty.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()


def usable() -> bool:
    """Whether a cache may serve this call: not while torch.compile or torch.export traces
    it (torch.fx symbolic tracing never reaches a block's kernels)."""
    return not torch.compiler.is_compiling()
