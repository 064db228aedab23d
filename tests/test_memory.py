"""Training saves less for backward than eager torchvision: only x, the raw conv outputs,
out and per-channel vectors (docs/design.md §1). Counted with saved-tensor hooks, on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import make_blocks


def _saved_bytes(block, x) -> int:
    """Bytes of distinct tensor storages autograd keeps for ``block(x)``'s backward."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x.requires_grad_())
    return sum(storages.values())


@pytest.mark.parametrize("kind,inplanes,planes,stride,proj",
                         [("bottleneck", 64, 16, 1, False), ("bottleneck", 64, 32, 2, True),
                          ("basic", 32, 32, 1, False)])
def test_fused_training_saves_less_than_eager(cpu_backend, kind, inplanes, planes, stride,
                                              proj):
    tv, fused = make_blocks(kind, inplanes, planes, stride, proj, backend=cpu_backend)
    x = torch.randn(4, inplanes, 14, 14).contiguous(memory_format=torch.channels_last)
    eager = _saved_bytes(tv.train(), x.clone())
    ours = _saved_bytes(fused.train(), x.clone())
    assert ours < eager, f"fused saves {ours} bytes, eager {eager}"
    if kind == "bottleneck" and not proj:
        # Exactly x, y1, y2, y3, out, plus the weights and C-sized vectors (eager also
        # keeps relu(bn1(y1)) and relu(bn2(y2))).
        width, out_c = planes, planes * 4
        per_channel = x.numel() // inplanes * x.element_size()
        activations = per_channel * (inplanes + width + width + out_c + out_c)
        weights = sum(p.numel() * p.element_size() for p in fused.parameters())
        assert activations <= ours <= activations + 2 * weights, (ours, activations, weights)
