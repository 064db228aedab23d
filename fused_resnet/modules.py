"""Drop-in fused ResNet blocks (and the fused ResNet stem that ``convert()`` installs).

``FusedBottleneck`` and ``FusedBasicBlock`` have the submodules, parameters and buffers
of torchvision's ``Bottleneck`` / ``BasicBlock`` (v1.5: the stride sits on the 3x3), so
torchvision checkpoints load unchanged in both directions. ``FusedTimmBottleneck`` and
``FusedTimmBasicBlock`` do the same for timm's blocks (``convert()`` makes them; they
add ResNet-D's average-pool shortcut and stochastic depth). Their forward runs the fused
ops instead of the submodules, so forward/backward hooks registered on the inner
``conv*`` / ``bn*`` modules do not fire (hooks on the block itself do).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from . import onednn, ops
from .block_autograd import (
    UNIT_TENSORS,
    BlockPlan,
    ConvSpec,
    NormSpec,
    PoolSpec,
    UnitSpec,
    run_block,
)
from .derived_cache import DerivedCache
from .distributed import group_size
from .reference import stat_dtype

Tensor = torch.Tensor


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1,
             dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     groups=groups, bias=False, dilation=dilation)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


# ------------------------------------------------------------------ what can be fused
def _is_frozen_bn(m: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d, matched by name so torchvision stays optional.
    return type(m).__name__ == "FrozenBatchNorm2d" and hasattr(m, "running_var")


def _conv_problem(conv: nn.Module, name: str) -> str | None:
    if type(conv) not in (nn.Conv2d, FusedStemConv):
        return f"{name} is a {type(conv).__name__}, not an nn.Conv2d"
    if _tensor(conv, "bias") is not None:
        return f"{name} has a bias"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"{name} uses padding {conv.padding!r} ({conv.padding_mode})"
    for attr in ("stride", "padding", "dilation", "kernel_size"):
        v = getattr(conv, attr)
        if v[0] != v[1]:
            return f"{name} has an asymmetric {attr} {v}"
    return None


def _norm_problem(bn: nn.Module, name: str) -> str | None:
    if _is_frozen_bn(bn):
        return None
    if type(bn) not in (nn.BatchNorm2d, nn.SyncBatchNorm, FoldedBatchNorm2d):
        return f"{name} is a {type(bn).__name__}, not an nn.BatchNorm2d or FrozenBatchNorm2d"
    return None


def _pool_spec(pool: nn.Module) -> PoolSpec | str | None:
    """A ResNet-D shortcut's pool as a PoolSpec (None: nn.Identity), or why not fusable."""
    if type(pool) is nn.Identity:
        return None
    if type(pool) is not nn.AvgPool2d:
        return f"the shortcut pool is a {type(pool).__name__}, not an nn.AvgPool2d"
    k, st, p = (_pair(v) for v in (pool.kernel_size, pool.stride, pool.padding))
    if k[0] != k[1] or st[0] != st[1] or p[0] != p[1] or pool.divisor_override is not None:
        return f"the shortcut pool {pool} is asymmetric or has a divisor override"
    return PoolSpec(k[0], st[0], p[0], bool(pool.ceil_mode), bool(pool.count_include_pad))


def shortcut_units(downsample: nn.Module | None) -> list[tuple[nn.Module, nn.Module]] | str:
    """A block's projection as [(conv, norm)] ([] for identity), or why it is not fusable.

    Fusable: ``Sequential(conv1x1, norm)``, or ResNet-D's ``Sequential(pool, conv1x1,
    norm)`` with an ``nn.AvgPool2d`` (or ``nn.Identity``) pool (:func:`shortcut_pool`).
    """
    if downsample is None:
        return []
    if not isinstance(downsample, nn.Sequential) or len(downsample) not in (2, 3):
        return "the shortcut is not the standard Sequential([avg_pool,] conv1x1, norm)"
    if len(downsample) == 3 and isinstance(_pool_spec(downsample[0]), str):
        return _pool_spec(downsample[0])
    conv, norm = downsample[-2], downsample[-1]
    if getattr(conv, "kernel_size", None) != (1, 1):
        return "the shortcut conv is not 1x1"
    return [(conv, norm)]


def shortcut_pool(downsample: nn.Module | None) -> PoolSpec | None:
    """The pool in front of a fusable shortcut's conv (ResNet-D), or None."""
    if isinstance(downsample, nn.Sequential) and len(downsample) == 3:
        return _pool_spec(downsample[0])
    return None


def units_problem(chain: list[tuple[nn.Module, nn.Module]],
                  shortcut: list[tuple[nn.Module, nn.Module]]) -> str | None:
    """Why conv/BN pairs ``chain`` (conv1/bn1, ...) and ``shortcut`` cannot run fused."""
    named = [(f"conv{i + 1}", c, f"bn{i + 1}", b) for i, (c, b) in enumerate(chain)]
    named += [("downsample.0", c, "downsample.1", b) for c, b in shortcut]
    for cname, conv, bname, bn in named:
        problem = _conv_problem(conv, cname) or _norm_problem(bn, bname)
        if problem:
            return problem
    return None


def _unit_spec(conv: nn.Conv2d, bn: nn.Module, sync_group) -> UnitSpec:
    """Static description of one conv->BN unit; ``sync_group`` is the block's sync setting."""
    c = ConvSpec(conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)
    if _is_frozen_bn(bn):
        return UnitSpec(c, NormSpec(False, False, None, float(bn.eps)))
    has_running = _tensor(bn, "running_mean") is not None
    batch_stats = bn.training or not has_running
    if isinstance(bn, nn.SyncBatchNorm):
        sync_group = (bn.process_group,)
    # Synchronised BN syncs in training only, and only in a group of several ranks.
    sync = sync_group is not None and bn.training and group_size(sync_group[0]) > 1
    return UnitSpec(c, NormSpec(batch_stats=batch_stats, update=bn.training and has_running,
                                momentum=bn.momentum, eps=float(bn.eps), sync=sync,
                                group=sync_group[0] if sync else None))


def _tensor(m: nn.Module, name: str) -> Tensor | None:
    """``getattr(m, name, None)`` for a parameter or buffer, in that lookup order (an instance
    attribute, then parameters, then buffers), without nn.Module.__getattr__'s cost, which
    a block call pays per tensor."""
    d = m.__dict__
    if name in d:
        return d[name]
    params = d["_parameters"]
    return params[name] if name in params else d["_buffers"].get(name)


def _unit_tensors(conv: nn.Conv2d, bn: nn.Module) -> tuple:
    return (_tensor(conv, "weight"), _tensor(bn, "weight"), _tensor(bn, "bias"),
            _tensor(bn, "running_mean"), _tensor(bn, "running_var"),
            _tensor(bn, "num_batches_tracked"))


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast would run this block's convs in, or None outside autocast."""
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _out_size(size: int, conv: nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


_NOT_SCRIPTABLE = (
    "fused blocks run custom ops inside an autograd Function, which TorchScript "
    "(torch.jit.script / torch.jit.trace) and the TorchScript-based ONNX exporter cannot "
    "capture. Call fused_resnet.unconvert(model) first to get torchvision blocks back, or "
    "use torch.compile / torch.export, which work on fused blocks.")


def _fx_symbolic_tracing() -> bool:
    """True under torch.fx symbolic tracing (not under torch.compile / torch.export)."""
    from torch.fx import _symbolic_trace as st

    if hasattr(st, "is_fx_symbolic_tracing"):  # newer torch; older: is_fx_tracing alone
        return st.is_fx_symbolic_tracing()
    return st.is_fx_tracing() and not torch.compiler.is_compiling()


@torch.fx.wrap
def fused_block(x: Tensor, plan_key: tuple, branch_scale: Tensor | None,
                *tensors: Tensor | None) -> Tensor:
    """A fused block call as one node of a torch.fx graph (see ``_FusedUnits.forward``)."""
    return run_block(BlockPlan.from_key(plan_key), x, tensors, branch_scale)


# ------------------------------------------------------------------ shared machinery
class _FusedUnits:
    """Mixin for modules made of conv->BN units run fused: backend choice, input checks,
    the fused forward. Subclasses say what their units are (``_chain``, ``_shortcut``),
    whether a residual ends them, and which conv sees the input first."""

    residual: bool = True  # out = relu(bn(y_last) + shortcut); False: relu(bn(y_last))

    def _chain(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def _shortcut(self) -> list[tuple[nn.Module, nn.Module]] | str:
        """The projection unit ([] for none), or why the shortcut cannot be fused."""
        return []

    def _shortcut_pool(self) -> PoolSpec | None:
        return None

    def _layers_problem(self) -> str | None:
        """Why layers other than the conv/BN units prevent fusing, or None."""
        return None

    def _branch_scale(self, x: Tensor) -> Tensor | None:
        """Per-sample factors (N,) of the residual branch (drop path), or None."""
        return None

    def _drops_path(self) -> bool:
        """Whether a call draws per-sample drop-path factors (:meth:`_branch_scale`)."""
        return False

    def fuse_problem(self) -> str | None:
        """Why this module cannot run fused (its layers as they are now), or None."""
        return self._units_problem(self._chain(), self._shortcut())

    def _units_problem(self, chain: list, shortcut: list | str) -> str | None:
        if isinstance(shortcut, str):
            return shortcut
        return units_problem(chain, shortcut) or self._layers_problem()

    def _first_conv(self) -> nn.Conv2d:
        raise NotImplementedError

    def _eager_forward(self, x: Tensor) -> Tensor:
        """The unfused forward (used for empty batches, N == 0)."""
        raise NotImplementedError

    def _init_backend(self, backend: str | None) -> None:
        # (process_group,) when the block's BNs use the statistics of a whole process group
        # (set by convert(sync_bn=True)); None for per-process statistics.
        self.sync_bn: tuple | None = None
        self.backend = ops.default_backend() if backend in (None, "auto") else backend
        if self.backend != "auto":
            ops.get_backend(self.backend)  # unknown or not built: fail now, not in forward
        self._ops: ops.Backend | None = None
        self._ops_error: str | None = None
        self.resolve_backend(strict=False)

    @property
    def backend_in_use(self) -> str | None:
        """The backend the fused forward runs now (None if none can serve the block)."""
        return self._ops.name if self._ops is not None else None

    def resolve_backend(self, strict: bool = True) -> None:
        """(Re)choose the backend for the block's current device and dtype.

        ``strict``: raise when the requested backend cannot serve them. When not strict
        (construction on the CPU of a block meant for a GPU), the error is kept and
        raised by ``forward`` instead.
        """
        w = self._first_conv().weight
        shortcut = self._shortcut()
        convs = [c for c, _ in self._chain() + (shortcut if isinstance(shortcut, list) else [])]
        groups = max((getattr(c, "groups", 1) for c in convs), default=1)
        try:
            self._ops, self._ops_error = ops.resolve_backend(self.backend, w.device, w.dtype,
                                                             groups), None
        except (RuntimeError, TypeError) as e:
            self._ops, self._ops_error = None, str(e)
            if strict:
                raise

    def set_backend(self, backend: str) -> _FusedUnits:
        """Switch to ``backend`` (``"auto"`` re-chooses); raises if it cannot serve the block."""
        self.backend = ops.default_backend() if backend == "auto" else backend
        self.resolve_backend(strict=True)
        return self

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.half() may change device or dtype: choose the backend again.
        module = super()._apply(fn, recurse)
        for cache in ("_onednn_cache", "_fold_cache"):  # their tensors are the old ones
            self.__dict__.pop(cache, None)
        if "_ops" in self.__dict__:
            self.resolve_backend(strict=self.backend != "auto")
        return module

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling it.
        raise RuntimeError(f"{type(self).__name__}: {_NOT_SCRIPTABLE}")

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, in_use={self.backend_in_use!r}"

    def backend_status(self, x: Tensor) -> dict[str, str | None]:
        """How a call on ``x`` would run now (``path``: ``onednn``, ``aten`` or the fused
        backend's name) and ``why``, with the ``requested`` and resolved (``in_use``) backend."""
        units, plan = self._plan()
        tensors = tuple(t for c, b in units for t in _unit_tensors(c, b))
        path, why = onednn.choose_path(self.backend, plan, x, tensors,
                                       _autocast_dtype(x) is not None)
        return {"requested": self.backend, "in_use": self.backend_in_use, "path": path,
                "why": why}

    # -- forward ------------------------------------------------------------------
    def _check_input(self, x: Tensor, autocast: bool) -> None:
        name = type(self).__name__
        if x.dim() != 4:
            raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        w = self._first_conv().weight
        in_channels = self._first_conv().in_channels
        if x.shape[1] != in_channels:
            raise ValueError(f"{name} expects {in_channels} input channels, got "
                             f"{x.shape[1]} (input shape {tuple(x.shape)})")
        if x.device != w.device:
            raise ValueError(f"{name}: input is on {x.device} but the parameters are on "
                             f"{w.device}")
        if x.dtype not in ops.SUPPORTED_DTYPES:
            raise TypeError(f"{name}: unsupported input dtype {x.dtype}; use one of "
                            f"{ops.SUPPORTED_DTYPES}")
        if x.dtype != w.dtype and not autocast:
            raise TypeError(f"{name}: input dtype {x.dtype} differs from the parameters' "
                            f"dtype {w.dtype}; convert one to the other")

    def _check_batch_stats(self, x: Tensor, units: list, plan: BlockPlan) -> None:
        """nn.BatchNorm2d's check: batch statistics need more than one value per channel."""
        if plan.fixed_stats:
            return
        h, w = x.shape[2], x.shape[3]
        sizes = []
        for conv, _ in units[:len(plan.chain)]:
            h, w = _out_size(h, conv), _out_size(w, conv)
            sizes.append((conv.out_channels, h, w))
        h, w = x.shape[2], x.shape[3]
        if plan.shortcut_pool is not None:
            h, w = plan.shortcut_pool.out_size(h), plan.shortcut_pool.out_size(w)
        for conv, _ in units[len(plan.chain):]:
            sizes.append((conv.out_channels, _out_size(h, conv), _out_size(w, conv)))
        for spec, (c, h, w) in zip(plan.units, sizes):
            if spec.norm.batch_stats and x.shape[0] * h * w == 1:
                size = torch.Size([x.shape[0], c, h, w])
                raise ValueError("Expected more than 1 value per channel when training, "
                                 f"got input size {size}")

    def _plan(self) -> tuple[list, BlockPlan]:
        chain, shortcut = self._chain(), self._shortcut()
        reason = self._units_problem(chain, shortcut)
        if reason:
            raise ValueError(f"{type(self).__name__} cannot run fused: {reason}")
        if self._ops is None:
            raise RuntimeError(f"{type(self).__name__}: {self._ops_error}")
        specs = [_unit_spec(c, b, self.sync_bn) for c, b in chain + shortcut]
        plan = BlockPlan(tuple(specs[:len(chain)]), specs[len(chain)] if shortcut else None,
                         self._ops, self.residual, self._shortcut_pool() if shortcut else None)
        return chain + shortcut, plan

    def forward(self, x: Tensor) -> Tensor:
        if _fx_symbolic_tracing():
            # Symbolic tracing (torch.fx, feature extraction) sees no values: the block
            # becomes one opaque node, checked and run when the traced graph runs.
            units, plan = self._plan()
            return fused_block(x, plan.key(), self._branch_scale(x),
                               *[t for c, b in units for t in _unit_tensors(c, b)])
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a Tensor, got {type(x).__name__}")
        if not torch.compiler.is_compiling() and (torch.jit.is_tracing()
                                                  or torch.onnx.is_in_onnx_export()):
            raise RuntimeError(f"{type(self).__name__}: {_NOT_SCRIPTABLE}")
        autocast = _autocast_dtype(x)
        self._check_input(x, autocast is not None)
        units, plan = self._plan()
        if x.shape[0] == 0:
            return self._eager_forward(x)  # empty output; BN counters tick as in torchvision
        self._check_batch_stats(x, units, plan)
        tensors = [t for c, b in units for t in _unit_tensors(c, b)]
        path, _ = onednn.choose_path(self.backend, plan, x, tuple(tensors), autocast is not None)
        if path == onednn.ONEDNN and not self._drops_path():  # drop path: per-sample scales
            out = onednn.forward(self.__dict__, plan, x, tuple(tensors))
            if out is not None:
                return out
        if path == onednn.ONEDNN:  # not served: drop path, or a NaN or infinity in x or weights
            path = onednn.ATEN if self.backend == "auto" else plan.backend.name
        if path == onednn.ATEN:
            return self._eager_forward(x)
        inp = x
        if autocast is not None:
            # As torchvision under autocast: convs in the autocast dtype (weights cast,
            # differentiably), BN parameters and statistics in fp32.
            inp = x.to(autocast)
            for i in range(0, len(tensors), len(UNIT_TENSORS)):
                tensors[i] = tensors[i].to(autocast)
        branch_scale = self._branch_scale(inp)
        folds = self.__dict__.get("_fold_cache")
        if folds is None:
            folds = self.__dict__["_fold_cache"] = DerivedCache()
        if autocast is None:
            return run_block(plan, inp, tuple(tensors), branch_scale, folds)
        with torch.autocast(x.device.type, enabled=False):
            return run_block(plan, inp, tuple(tensors), branch_scale, folds)



# ----------------------------------------------------------------------------- blocks
class _FusedBlock(_FusedUnits, nn.Module):
    """A residual block: conv1/bn1, conv2/bn2[, conv3/bn3] and an optional downsample."""

    expansion: int

    def _first_conv(self) -> nn.Conv2d:
        return self.conv1

    def _shortcut(self) -> list[tuple[nn.Module, nn.Module]] | str:
        return shortcut_units(self.downsample)

    def _shortcut_pool(self) -> PoolSpec | None:
        return shortcut_pool(self.downsample)

    def _eager_forward(self, x: Tensor) -> Tensor:
        """torchvision's forward through the submodules (used for empty batches, N == 0)."""
        chain = self._chain()
        out = x
        for i, (conv, bn) in enumerate(chain):
            out = bn(conv(out))
            if i < len(chain) - 1:
                out = self.relu(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class FusedBottleneck(_FusedBlock):
    """torchvision ``Bottleneck`` (v1.5) whose forward runs the fused kernels.

    Same signature, submodules and state_dict keys as torchvision's block, plus
    ``backend``: ``"auto" | "reference" | "cpp" | "triton" | "cuda"`` (default
    ``$FUSED_RESNET_BACKEND`` or ``"auto"``: the fastest backend that serves the block's
    device and dtype). Hooks on the inner ``conv*``/``bn*`` modules do not fire.
    """

    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1, norm_layer: Callable[..., nn.Module] | None = None, *,
                 backend: str = "auto") -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self._init_backend(backend)

    def _chain(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]


class FusedBasicBlock(_FusedBlock):
    """torchvision ``BasicBlock`` whose forward runs the fused kernels.

    Same signature, submodules and state_dict keys as torchvision's block, plus
    ``backend`` (see :class:`FusedBottleneck`). Hooks on the inner modules do not fire.
    """

    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, groups: int = 1, base_width: int = 64,
                 dilation: int = 1, norm_layer: Callable[..., nn.Module] | None = None, *,
                 backend: str = "auto") -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride
        self._init_backend(backend)

    def _chain(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]


# ------------------------------------------------------------------------ timm blocks
class _FusedTimmBlock(_FusedBlock):
    """A timm ``BasicBlock`` / ``Bottleneck`` run fused; made by ``convert()`` from timm's
    block, whose submodules (``conv*``, ``bn*``, ``act*``, ``drop_block``, ``aa``, ``se``,
    ``downsample``, ``drop_path``) and state_dict keys it keeps.

    Fused when every ``act*`` is an ``nn.ReLU``, ``drop_block`` and ``aa`` are identities
    and ``se`` is None. The shortcut may be ResNet-D's average pool + 1x1 conv + BN.
    ``drop_path`` (timm's ``DropPath``, stochastic depth) runs inside the block end, with
    the per-sample keep mask drawn as timm draws it (same seed, same mask).
    """

    _acts: tuple[str, ...]

    def _layers_problem(self) -> str | None:
        for name in self._acts:
            act = getattr(self, name)
            if type(act) is not nn.ReLU:
                return f"{name} is a {type(act).__name__}, not an nn.ReLU"
        for name in ("drop_block", "aa"):
            if type(getattr(self, name)) is not nn.Identity:
                return f"{name} is a {type(getattr(self, name)).__name__}"
        if self.se is not None:
            return f"se is a {type(self.se).__name__} (attention inside the block)"
        dp = self.drop_path
        if dp is not None and type(dp).__name__ != "DropPath":
            return f"drop_path is a {type(dp).__name__}, not timm's DropPath"
        return None

    def _drops_path(self) -> bool:
        dp = self.drop_path
        return dp is not None and dp.training and dp.drop_prob != 0.0

    def _branch_scale(self, x: Tensor) -> Tensor | None:
        # timm's drop_path(): x.new_empty((N, 1, 1, 1)).bernoulli_(keep_prob) on the
        # branch output (the data dtype and device of x), divided by keep_prob.
        dp = self.drop_path
        if not self._drops_path():
            return None
        keep_prob = 1.0 - dp.drop_prob
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0 and dp.scale_by_keep:
            mask.div_(keep_prob)
        return mask.view(-1).to(stat_dtype(x.dtype))

    def _eager_forward(self, x: Tensor) -> Tensor:
        return self._timm_class().forward(self, x)

    @staticmethod
    def _timm_class() -> type:
        raise NotImplementedError


class FusedTimmBottleneck(_FusedTimmBlock):
    """timm's ``Bottleneck`` (ResNet-50/101/152, ResNeXt, Wide ResNet, their -D variants)."""

    _acts = ("act1", "act2", "act3")

    def _chain(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]

    @staticmethod
    def _timm_class() -> type:
        from timm.models.resnet import Bottleneck

        return Bottleneck


class FusedTimmBasicBlock(_FusedTimmBlock):
    """timm's ``BasicBlock`` (ResNet-18/34 and their -D variants)."""

    _acts = ("act1", "act2")

    def _chain(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]

    @staticmethod
    def _timm_class() -> type:
        from timm.models.resnet import BasicBlock

        return BasicBlock


# ------------------------------------------------------------------------------- stem
class FoldedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose work the preceding :class:`FusedStemConv` does: it keeps its
    parameters, buffers and state_dict keys, and passes its input through."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class FusedStemConv(_FusedUnits, nn.Conv2d):
    """A ResNet stem's ``conv1`` + ``bn1`` + ``relu`` as one fused unit.

    ``convert()`` installs it in place of ``conv1`` (same parameter, same key), turns
    ``bn1`` into a :class:`FoldedBatchNorm2d` and ``relu`` into an ``nn.Identity``;
    ``unconvert()`` undoes all three. Training: statistics in the conv epilogue, then one
    BN+ReLU pass (the max-pool that follows needs the activation in memory); inference:
    one conv kernel with BN and ReLU in its epilogue.
    """

    residual = False

    def _chain(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self, self.__dict__["_folded_bn"])]

    def _first_conv(self) -> nn.Conv2d:
        return self

    def _eager_forward(self, x: Tensor) -> Tensor:
        bn = self.__dict__["_folded_bn"]
        return torch.relu(nn.BatchNorm2d.forward(bn, nn.Conv2d.forward(self, x)))

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {_FusedUnits.extra_repr(self)}"
