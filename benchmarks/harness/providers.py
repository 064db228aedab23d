"""The providers: eager PyTorch, torch.compile and the fused backends, each a module on the
benchmark's device, dtype and channels_last layout holding the master copy's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .cases import Case

try:
    import fused_resnet
    FUSED_IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - any import failure just skips the fused providers
    fused_resnet = None
    FUSED_IMPORT_ERROR = f"import fused_resnet failed: {type(e).__name__}: {e}"

PROVIDERS = ("eager", "compile", "compile_freezing", "fused_cuda", "fused_triton", "fused_cpp",
             "fused_reference", "fused_auto")
SUMMARY_PROVIDERS = ("eager", "compile", "fused_cuda", "fused_triton", "fused_cpp")


class Skipped(Exception):
    """A provider that cannot run here; the message says why."""


def fused_reason(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused ``backend`` cannot run on ``device`` in ``dtype``, or None."""
    if fused_resnet is None:
        return FUSED_IMPORT_ERROR
    if backend == "auto":
        return None  # auto serves every device and dtype (per call, the fastest path)
    try:
        return fused_resnet.backend_status(device, dtype).get(backend, f"unknown backend {backend}")
    except Exception as e:  # noqa: BLE001 - an API still in flux: report, do not crash
        return f"backend_status failed: {e}"


def fused_twin(master: nn.Module, backend: str, case: Case | None) -> nn.Module:
    """The fused module holding ``master``'s weights (same state_dict keys)."""
    if case is None:
        fused = fused_resnet.resnet50(backend=backend)
    else:
        cls = (fused_resnet.FusedBottleneck if case.kind == "bottleneck"
               else fused_resnet.FusedBasicBlock)
        fused = cls(case.inplanes, case.planes, case.stride, copy.deepcopy(master.downsample),
                    backend=backend)
    fused.load_state_dict(master.state_dict())
    return fused


def build(provider: str, master: nn.Module, case: Case | None, args, training: bool) -> nn.Module:
    """``provider``'s module on the device, in the dtype, channels_last."""
    if provider.startswith("fused_"):
        backend = provider[len("fused_"):]
        reason = fused_reason(backend, args.device, args.dtype)
        if reason:
            raise Skipped(reason)
        module = fused_twin(master, backend, case)
    else:
        module = copy.deepcopy(master)
    module = module.to(device=args.device, dtype=args.dtype, memory_format=torch.channels_last)
    module.train(training)
    if provider == "compile":
        torch._dynamo.reset()  # a fresh cache per module: no recompile limit, no stale graphs
        module = torch.compile(module, mode=args.compile_mode, dynamic=False)
    elif provider == "compile_freezing":
        # Inductor with the weights frozen as constants (BN folded, weights prepacked): the
        # strongest inference anchor on a CPU; freezing applies only without gradients.
        if training:
            raise Skipped("freezing compiles inference graphs only")
        torch._dynamo.reset()
        module = torch.compile(module, options={"freezing": True}, dynamic=False)
    return module


def params_of(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(getattr(module, "_orig_mod", module).named_parameters())
