"""What a model would send to a GPU, recorded with no GPU: run it on meta tensors and
write down every launch.

Launches come from two places:

* **ATen ops** (all of eager PyTorch, and the plain-torch glue around the fused ops):
  every op that computes or moves data is counted as one launch (views, allocations and
  metadata ops as none); its bytes are the sizes of its tensor inputs plus outputs, its
  FLOPs those of torch's own flop formulas (:mod:`torch.utils.flop_counter`).
* **Fused ops**: :func:`planning_backend` serves the six ops with their fake kernels and
  records, for the same arguments, the launches of the backend's launch plan
  (``op_plan(op, args, target)``: the function the real launcher executes), so the trace
  holds each kernel with its grid, tile config, bytes, FLOPs and serial depth.

Nothing is computed: meta tensors carry shapes, dtypes and strides only, so a whole
ResNet-50 training step at batch 128 is traced in seconds on any machine.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from ._fakes import (
    _FAKES,
    OP_NAMES,
    fake_block_end_bwd_bn,
    fake_bn_backward,
    fake_conv_bn_fwd,
    fake_conv_bwd,
    fake_conv_bwd_data_bn,
)
from .launch_plan import Launch, Target
from .ops import EXTRA_KERNELS, Backend

aten = torch.ops.aten

# ATen ops that launch nothing: allocation and bookkeeping (views are found by is_view).
_NO_LAUNCH = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty,
              aten.new_empty_strided, aten.detach, aten.lift_fresh, aten.alias, aten.resize_,
              aten.set_, aten._local_scalar_dense, aten.sym_size, aten.sym_stride,
              aten.sym_numel, aten.sym_storage_offset, aten.is_same_size}


@dataclass(frozen=True)
class TracedLaunch:
    """One launch of a trace: ``source`` is ``"aten"`` or the fused backend's name; ``op``
    the ATen op or fused op it belongs to. ATen launches have no grid (``launch.grid``
    is empty): their kernels belong to PyTorch's libraries."""

    source: str
    op: str
    launch: Launch

    @property
    def is_aten(self) -> bool:
        return self.source == "aten"


@dataclass
class Trace:
    """The launches of one traced call, in order."""

    launches: list[TracedLaunch] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.launches)

    def __iter__(self) -> Iterator[TracedLaunch]:
        return iter(self.launches)

    @property
    def bytes(self) -> int:
        return sum(t.launch.bytes for t in self.launches)

    @property
    def flops(self) -> int:
        return sum(t.launch.flops for t in self.launches)

    def by_op(self) -> dict[str, int]:
        """Launches per op (ATen or fused), most first."""
        counts: dict[str, int] = {}
        for t in self.launches:
            counts[t.op] = counts.get(t.op, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _launches(func) -> bool:
    return not (func.is_view or func.overloadpacket in _NO_LAUNCH)


class LaunchRecorder(TorchDispatchMode):
    """Records the ATen ops dispatched while active as launches into ``trace``; the fused
    ops of a :func:`planning_backend` add their plans' launches to the same trace."""

    def __init__(self, trace: Trace | None = None):
        super().__init__()
        self.trace = trace if trace is not None else Trace()
        self._paused = 0
        self._active = False

    def __enter__(self):
        self._active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self._active = False
        return super().__exit__(*exc)

    @contextlib.contextmanager
    def paused(self):
        """Ops run inside are not recorded (the fake kernels of fused ops)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def add(self, source: str, op: str, launches) -> None:
        """Record ``launches`` of ``op`` (only while the recorder is active)."""
        if self._active and not self._paused:
            self.trace.launches.extend(TracedLaunch(source, op, launch) for launch in launches)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._paused or not _launches(func):
            return out
        inputs = {id(t): t for t in _tensors((args, kwargs))}
        outputs = _tensors(out)
        if not any(t.numel() for t in (*inputs.values(), *outputs)):
            return out  # nothing to do: no kernel starts
        packet = func.overloadpacket
        flops = 0
        if packet in flop_registry:
            flops = int(flop_registry[packet](*args, **kwargs, out_val=out))
        nbytes = sum(map(_nbytes, inputs.values())) + sum(map(_nbytes, outputs))
        self.add("aten", str(packet).removeprefix("aten."),
                 [Launch(str(func), (), bytes=nbytes, flops=flops)])
        return out


_KERNELS = {**_FAKES, "bn_backward": fake_bn_backward, "conv_bn_fwd": fake_conv_bn_fwd,
            "block_end_bwd_bn": fake_block_end_bwd_bn,
            "conv_bwd_data_bn": fake_conv_bwd_data_bn, "conv_bwd": fake_conv_bwd}
_SIGNATURES = {op: inspect.signature(fake) for op, fake in _KERNELS.items()}


def planning_backend(name: str, op_plan: Callable, target: Target,
                     recorder: LaunchRecorder) -> Backend:
    """A :class:`~fused_resnet.ops.Backend` named ``name`` whose ops return fake outputs
    (meta tensors of the right shapes) and record ``op_plan(op, args, target)``, the
    launches backend ``name``'s launcher would make for the same arguments. The extra ops
    (ops.EXTRA_OPS) are planned where the backend has them; elsewhere BN backward runs in
    torch, recorded as the ATen ops it is, and the others as the ops they compose."""

    def serve(op: str) -> Callable:
        def call(*args, **kwargs):
            bound = _SIGNATURES[op].bind(*args, **kwargs)
            bound.apply_defaults()
            recorder.add(name, op, op_plan(op, bound.args, target))
            with recorder.paused():
                return _KERNELS[op](*bound.args)
        return call

    return Backend(name, **{op: serve(op) for op in (*OP_NAMES, *EXTRA_KERNELS.get(name, ()))})


@contextlib.contextmanager
def planned(model: torch.nn.Module, backend: Backend):
    """Every fused block of ``model`` runs ``backend``'s ops while inside (for a
    :func:`planning_backend`); their own choice comes back on exit."""
    from .modules import _FusedUnits

    fused = [m for m in model.modules() if isinstance(m, _FusedUnits)]
    saved = [(m._ops, m._ops_error) for m in fused]
    for m in fused:
        m._ops, m._ops_error = backend, None
    try:
        yield
    finally:
        for m, (ops, error) in zip(fused, saved):
            m._ops, m._ops_error = ops, error
