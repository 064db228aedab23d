"""``convert()`` / ``unconvert()``: swap torchvision ResNet blocks for fused twins and back.

The swap keeps the very same submodule objects (weights, buffers, device, dtype,
train/eval state, hooks on the block itself), so module names and state_dict keys do
not change. torchvision is needed only for ``unconvert`` and the builders.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from . import ops
from .modules import (
    FoldedBatchNorm2d,
    FusedBasicBlock,
    FusedBottleneck,
    FusedStemConv,
    _FusedBlock,
    shortcut_units,
    units_problem,
)

_FUSED_ATTRS = ("backend", "_ops", "_ops_error", "sync_bn", "_folded_bn", "_replaced_relu")


def _torchvision_blocks() -> dict[type, type]:
    """torchvision block class -> fused twin (empty when torchvision is not installed)."""
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:
        return {}
    return {Bottleneck: FusedBottleneck, BasicBlock: FusedBasicBlock}


def _chain_of(block: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    names = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    return [(getattr(block, c), getattr(block, b)) for c, b in names if hasattr(block, c)]


def _retype(block: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` instance sharing ``block``'s state (submodules, buffers, flags, hooks)."""
    twin = cls.__new__(cls)
    # Own copies of the registries (_modules, _parameters, hooks...), same objects inside.
    twin.__dict__.update({k: copy.copy(v) if isinstance(v, dict) else v
                          for k, v in block.__dict__.items()})
    for attr in _FUSED_ATTRS:
        twin.__dict__.pop(attr, None)
    return twin


def _swap(model: nn.Module, decide) -> nn.Module:
    """Replace each submodule ``m`` for which ``decide(name, m)`` returns a module."""
    root = decide("", model)
    if root is not None:
        return root
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = decide(f"{name}.{child_name}" if name else child_name, child)
            if new is not None:
                setattr(parent, child_name, new)
    return model


def _fused_twin(m: nn.Module, cls: type, backend: str, sync_bn: bool, process_group):
    """``m`` retyped to fused ``cls``, its backend chosen (raising if a named one cannot
    serve ``m``'s device and dtype)."""
    fused = _retype(m, cls)
    fused.sync_bn = (process_group,) if sync_bn else None
    fused.backend = backend
    fused._ops, fused._ops_error = None, None
    fused.resolve_backend(strict=backend != "auto")
    return fused


def _fuse_stem(model: nn.Module, backend: str, sync_bn: bool, process_group) -> None:
    """conv1 + bn1 + relu of a torchvision ResNet (or a backbone cut from one) -> fused."""
    conv, bn, relu = (getattr(model, n, None) for n in ("conv1", "bn1", "relu"))
    if not (hasattr(model, "maxpool") and hasattr(model, "layer1")
            and type(bn) is nn.BatchNorm2d and isinstance(relu, nn.ReLU)
            and units_problem([(conv, bn)], []) is None):
        return
    stem = _fused_twin(conv, FusedStemConv, backend, sync_bn, process_group)
    stem.__dict__["_folded_bn"] = model.bn1 = _retype(bn, FoldedBatchNorm2d)
    stem.__dict__["_replaced_relu"] = relu  # unconvert() puts it back
    model.conv1, model.relu = stem, nn.Identity()


def _unfuse_stem(model: nn.Module) -> None:
    stem = getattr(model, "conv1", None)
    if isinstance(stem, FusedStemConv):
        model.relu = stem.__dict__["_replaced_relu"]
        model.bn1 = _retype(model.bn1, nn.BatchNorm2d)
        model.conv1 = _retype(stem, nn.Conv2d)


def convert(model: nn.Module, *, backend: str = "auto", inplace: bool = True,
            sync_bn: bool = False, process_group=None, fuse_stem: bool = True) -> nn.Module:
    """Swap every torchvision ``Bottleneck`` / ``BasicBlock`` in ``model`` for its fused twin.

    Works on any model that holds torchvision blocks (classifiers, detection backbones).
    A block that cannot be fused (say, a non-standard shortcut or norm layer) stays as it
    was; all of them are listed in one warning. An explicitly named ``backend`` that
    cannot serve the model's device and dtype raises here.

    ``sync_bn=True``: every BN normalises with the statistics of the whole
    ``process_group`` (None: the default group) in training. Fused blocks do it
    themselves (on any device; their BN modules keep their type); BatchNorms outside them
    become ``nn.SyncBatchNorm`` (PyTorch's, which runs on GPUs only). Blocks whose BNs
    already are ``nn.SyncBatchNorm`` sync without asking.

    ``fuse_stem``: also fuse a ResNet stem's conv1 + bn1 + relu (:class:`FusedStemConv`;
    state_dict keys unchanged). Returns the converted model (``model`` itself when
    ``inplace``, else a converted deep copy).
    """
    if not inplace:
        model = copy.deepcopy(model)
    pairs = _torchvision_blocks()
    backend = ops.default_backend() if backend == "auto" else backend
    if backend != "auto":
        ops.get_backend(backend)  # unknown or not built: raise before touching the model
    skipped: list[str] = []

    def decide(name: str, m: nn.Module):
        cls = pairs.get(type(m))
        if cls is None:
            return None
        shortcut = shortcut_units(m.downsample)
        reason = shortcut if isinstance(shortcut, str) else units_problem(_chain_of(m), shortcut)
        if reason:
            skipped.append(f"{name or '<root>'}: {reason}")
            return None
        return _fused_twin(m, cls, backend, sync_bn, process_group)

    model = _swap(model, decide)
    if fuse_stem:
        for m in list(model.modules()):
            _fuse_stem(m, backend, sync_bn, process_group)
    if sync_bn:
        model = _sync_other_batchnorms(model, process_group)
    if skipped:
        warnings.warn(f"fused_resnet.convert left {len(skipped)} block(s) unfused:\n  "
                      + "\n  ".join(skipped), stacklevel=2)
    return model


def _sync_other_batchnorms(model: nn.Module, process_group) -> nn.Module:
    """``nn.SyncBatchNorm`` for each BatchNorm that is not inside a fused block."""
    def decide(name: str, m: nn.Module):
        if (isinstance(m, nn.modules.batchnorm._BatchNorm)
                and not isinstance(m, (nn.SyncBatchNorm, FoldedBatchNorm2d))):
            return nn.SyncBatchNorm.convert_sync_batchnorm(m, process_group)
        return None

    root = decide("", model)
    if root is not None:
        return root
    for parent in _modules_outside_fused_blocks(model):
        for child_name, child in list(parent.named_children()):
            new = decide(child_name, child)
            if new is not None:
                setattr(parent, child_name, new)
    return model


def _modules_outside_fused_blocks(model: nn.Module):
    yield model
    for child in model.children():
        if not isinstance(child, _FusedBlock):
            yield from _modules_outside_fused_blocks(child)


def unconvert(model: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Give torchvision blocks back for every fused block in ``model`` (same state).

    A block converted with ``sync_bn=True`` comes back with ``nn.SyncBatchNorm`` layers.
    A fused stem comes back as conv1, bn1 and relu.
    """
    if not inplace:
        model = copy.deepcopy(model)
    back = {fused: tv for tv, fused in _torchvision_blocks().items()}
    if not back:
        raise ImportError("fused_resnet.unconvert needs torchvision")

    def decide(name: str, m: nn.Module):
        if not isinstance(m, _FusedBlock):
            return None
        block = _retype(m, back[type(m)])
        if m.sync_bn is not None:
            block = nn.SyncBatchNorm.convert_sync_batchnorm(block, m.sync_bn[0])
        return block

    for m in list(model.modules()):
        _unfuse_stem(m)
    return _swap(model, decide)
