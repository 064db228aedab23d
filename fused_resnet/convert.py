"""``convert()`` / ``unconvert()``: swap torchvision's and timm's ResNet blocks for fused
twins and back.

The swap keeps the very same submodule objects (weights, buffers, device, dtype,
train/eval state, hooks on the block itself), so module names and state_dict keys do
not change. torchvision (or timm) is needed only for ``unconvert`` and the builders.
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
    FusedTimmBasicBlock,
    FusedTimmBottleneck,
    _FusedBlock,
    units_problem,
)

_FUSED_ATTRS = ("backend", "_ops", "_ops_error", "sync_bn", "_folded_bn", "_replaced_relu",
                "_relu_slot")


def _fusable_blocks() -> dict[type, type]:
    """torchvision / timm block class -> fused twin (for those installed)."""
    pairs: dict[type, type] = {}
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
        pairs.update({Bottleneck: FusedBottleneck, BasicBlock: FusedBasicBlock})
    except ImportError:
        pass
    try:
        from timm.models.resnet import BasicBlock, Bottleneck
        pairs.update({Bottleneck: FusedTimmBottleneck, BasicBlock: FusedTimmBasicBlock})
    except ImportError:
        pass
    return pairs


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
    return _set_up(_retype(m, cls), backend, sync_bn, process_group)


def _set_up(fused: nn.Module, backend: str, sync_bn: bool, process_group):
    fused.sync_bn = (process_group,) if sync_bn else None
    fused.backend = backend
    fused._ops, fused._ops_error = None, None
    fused.resolve_backend(strict=backend != "auto")
    return fused


def _stem_units(model: nn.Module) -> list[tuple]:
    """The conv -> BN -> ReLU units of a ResNet stem as ``(parent, name)`` slots.

    A ResNet (or a backbone cut from one) has ``conv1``, ``bn1``, ``relu`` (timm:
    ``act1``), ``maxpool`` and ``layer1``; timm's deep stem (ResNet-C/D) makes ``conv1``
    a ``Sequential(conv, bn, act, conv, bn, act, conv)`` whose last conv feeds ``bn1``.
    """
    if not (hasattr(model, "maxpool") and hasattr(model, "layer1")):
        return []
    act = "act1" if hasattr(model, "act1") else "relu"
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Sequential):
        return [((model, "conv1"), (model, "bn1"), (model, act))]
    units = [tuple((conv1, str(j)) for j in range(i, i + 3))
             for i in range(0, len(conv1) - 1, 3)]
    return units + [((conv1, str(len(conv1) - 1)), (model, "bn1"), (model, act))]


def _fuse_stem(model: nn.Module, backend: str, sync_bn: bool, process_group) -> None:
    """Each conv + BN + ReLU of a torchvision or timm ResNet stem -> :class:`FusedStemConv`
    (the BN folded into it, the ReLU an ``nn.Identity``; state_dict keys unchanged)."""
    for conv_slot, bn_slot, act_slot in _stem_units(model):
        conv, bn, act = (getattr(*slot, None) for slot in (conv_slot, bn_slot, act_slot))
        if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d
                and isinstance(act, nn.ReLU) and units_problem([(conv, bn)], []) is None):
            continue
        stem = _retype(conv, FusedStemConv)
        stem.__dict__["_folded_bn"] = _retype(bn, FoldedBatchNorm2d)
        stem.__dict__["_replaced_relu"] = act  # unconvert() puts it back in _relu_slot
        stem.__dict__["_relu_slot"] = nn.Identity()
        _set_up(stem, backend, sync_bn, process_group)
        for (parent, name), new in zip((conv_slot, bn_slot, act_slot),
                                       (stem, stem._folded_bn, stem._relu_slot)):
            setattr(parent, name, new)


def _unfuse_stems(model: nn.Module) -> None:
    """Put back the conv, BN and ReLU of every :class:`FusedStemConv` in ``model``."""
    restore: dict[int, nn.Module] = {}
    for stem in model.modules():
        if isinstance(stem, FusedStemConv):
            restore[id(stem)] = _retype(stem, nn.Conv2d)
            restore[id(stem.__dict__["_folded_bn"])] = _retype(stem._folded_bn, nn.BatchNorm2d)
            restore[id(stem.__dict__["_relu_slot"])] = stem.__dict__["_replaced_relu"]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in restore:
                setattr(parent, name, restore[id(child)])


def convert(model: nn.Module, *, backend: str = "auto", inplace: bool = True,
            sync_bn: bool = False, process_group=None, fuse_stem: bool = True) -> nn.Module:
    """Swap every torchvision or timm ``Bottleneck`` / ``BasicBlock`` in ``model`` for its
    fused twin.

    Works on any model that holds such blocks (classifiers, detection backbones, timm's
    ResNet / ResNeXt / Wide ResNet and their ResNet-D variants). A block that cannot be
    fused (say, a non-standard shortcut or norm layer, or timm's squeeze-excitation or
    anti-aliasing) stays as it was; all of them are listed, with the reason, in one
    warning. An explicitly named ``backend`` that cannot serve the model's device and
    dtype raises here.

    ``sync_bn=True``: every BN normalises with the statistics of the whole
    ``process_group`` (None: the default group) in training. Fused blocks do it
    themselves (on any device; their BN modules keep their type); BatchNorms outside them
    become ``nn.SyncBatchNorm`` (PyTorch's, which runs on GPUs only). Blocks whose BNs
    already are ``nn.SyncBatchNorm`` sync without asking.

    ``fuse_stem``: also fuse a ResNet stem's conv1 + bn1 + relu, and each conv + BN + ReLU
    of timm's deep stem (:class:`FusedStemConv`; state_dict keys unchanged). Returns the
    converted model (``model`` itself when ``inplace``, else a converted deep copy).
    """
    if not inplace:
        model = copy.deepcopy(model)
    pairs = _fusable_blocks()
    backend = ops.default_backend() if backend == "auto" else backend
    if backend != "auto":
        ops.get_backend(backend)  # unknown or not built: raise before touching the model
    skipped: list[str] = []

    def decide(name: str, m: nn.Module):
        cls = pairs.get(type(m))
        if cls is None:
            return None
        twin = _retype(m, cls)
        reason = twin.fuse_problem()
        if reason:
            skipped.append(f"{name or '<root>'}: {reason}")
            return None
        return _set_up(twin, backend, sync_bn, process_group)

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
    """Give torchvision's (or timm's) blocks back for every fused block in ``model`` (same
    state).

    A block converted with ``sync_bn=True`` comes back with ``nn.SyncBatchNorm`` layers.
    A fused stem comes back as its convs, BNs and ReLUs.
    """
    if not inplace:
        model = copy.deepcopy(model)
    back = {fused: original for original, fused in _fusable_blocks().items()}
    if not back:
        raise ImportError("fused_resnet.unconvert needs torchvision or timm")

    def decide(name: str, m: nn.Module):
        if not isinstance(m, _FusedBlock):
            return None
        block = _retype(m, back[type(m)])
        if m.sync_bn is not None:
            block = nn.SyncBatchNorm.convert_sync_batchnorm(block, m.sync_bn[0])
        return block

    _unfuse_stems(model)
    return _swap(model, decide)
