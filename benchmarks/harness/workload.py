"""One case's (or the network's) inputs, master weights, float64 references and the error
yardsticks the gate needs, computed once and shared by every provider and mode."""

from __future__ import annotations

import copy
import math

import roofline
import torch

from . import gate
from .cases import Case, make_block, make_network, scaled, seed_for
from .providers import build
from .timing import n_buffers


class Workload:
    def __init__(self, case: Case | None, args):
        self.case, self.args = case, args
        self.name = case.name if case else "resnet50"
        self.refs: dict[str, dict] = {}
        self.eager_errs: dict[str, dict[str, float]] = {}
        self.rounding_errs: dict[str, dict[str, float]] = {}
        gen = torch.Generator().manual_seed(seed_for(self.name) + 1)
        if case:
            self.master = make_block(case)
            hw = scaled(case.hw, args.hw_div)
            chain, _ = roofline.block_convs(case.kind, case.inplanes, case.planes, case.stride,
                                            hw, case.proj)
            self.out_shape = (args.batch, chain[-1].cout, chain[-1].hout, chain[-1].hout)
            self.in_shape = (args.batch, case.inplanes, hw, hw)
        else:
            image = scaled(224, args.hw_div)
            self.master = make_network(image)
            self.in_shape = (args.batch, 3, image, image)
            self.out_shape = (args.batch, 1000)
        elem = torch.tensor([], dtype=args.dtype).element_size()
        k = n_buffers(math.prod(self.in_shape) * elem, args.device)
        # A block sits inside a network: training computes its input gradient too.
        self.xs = [self._rand(self.in_shape, gen).requires_grad_(case is not None)
                   for _ in range(k)]
        self.gs = [self._rand(self.out_shape, gen) for _ in range(k)]
        self.labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(args.device)

    @property
    def tf32(self) -> bool:
        return (self.args.device.type == "cuda" and self.args.dtype == torch.float32
                and torch.backends.cudnn.allow_tf32)

    def _rand(self, shape, gen) -> torch.Tensor:
        t = torch.randn(shape, generator=gen).to(self.args.dtype)
        return t.to(self.args.device, memory_format=torch.channels_last if len(shape) == 4
                    else torch.contiguous_format)

    def _outputs(self, module, x, g, mode: str) -> dict:
        outputs = gate.network_outputs if self.case is None else gate.block_outputs
        return outputs(module, x, g, mode)

    def gate_inputs(self, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks: the first timing buffer. Network in training: a smaller batch (the float64
        reference of a whole ResNet-50 at batch 128 takes minutes); in inference the rows
        are independent, so the full batch runs and its first rows are compared."""
        x, g = self.xs[0], self.gs[0]
        if self.case is None and mode != "inference":
            n = min(self.args.batch, self.args.network_gate_batch)
            x, g = x[:n].contiguous(memory_format=torch.channels_last), g[:n]
        return x, g

    def _float64(self, mode: str, rounded: bool = False) -> dict:
        """float64 CPU outputs of the torchvision module, built from the dtype-rounded weights
        and inputs; ``rounded``: with the dtype's rounding emulated (gate.rounded_outputs)."""
        x, g = self.gate_inputs(mode)
        if self.case is None and mode == "inference":
            x = x[: self.args.network_gate_batch]
        x, g = x.detach().to("cpu", torch.float64).contiguous(), g.to("cpu", torch.float64)
        module = copy.deepcopy(self.master).to(self.args.dtype).double()
        module.train(mode != "inference")

        def run(m):
            return self._outputs(m, x, g, mode)
        if rounded:
            dtype = self.args.dtype
            outs = gate.rounded_outputs(module, x, run, dtype,
                                       gate.rounding_band(dtype, self.tf32))
        else:
            outs = run(module)
        return {k: v.detach() for k, v in outs.items()}

    def reference(self, mode: str) -> dict:
        if mode not in self.refs:
            self.refs[mode] = self._float64(mode)
        return self.refs[mode]

    def errors(self, module, mode: str) -> dict[str, float]:
        """Relative error of each compared tensor of ``module`` against the reference."""
        x, g = self.gate_inputs(mode)
        got = self._outputs(module, x, g, mode)
        ref = self.reference(mode)
        if "out" in got and got["out"].shape[0] > ref["out"].shape[0]:
            got["out"] = got["out"][: ref["out"].shape[0]]
        return gate.errors(got, ref)

    def eager_errors(self, mode: str) -> dict[str, float]:
        """Plain PyTorch's error per tensor in this dtype: the providers' yardstick."""
        if mode not in self.eager_errs:
            module = build("eager", self.master, self.case, self.args, mode != "inference")
            self.eager_errs[mode] = self.errors(module, mode)
        return self.eager_errs[mode]

    def rounding_errors(self, mode: str) -> dict[str, float]:
        """Error per tensor of the float64 run with the dtype's rounding emulated: eager's
        yardstick."""
        if mode not in self.rounding_errs:
            got = self._float64(mode, rounded=True)
            self.rounding_errs[mode] = gate.errors(got, self.reference(mode))
        return self.rounding_errs[mode]

    def check(self, provider: str, module, mode: str) -> tuple[bool, str, float, float]:
        """(passed, worst tensor, its error, its tolerance) for ``provider``'s ``module``."""
        errs = self.errors(module, mode)
        if provider == "eager":
            self.eager_errs.setdefault(mode, errs)
            plain = self.rounding_errors(mode)
        else:
            # Eager's own error, or what the dtype's rounding explains where eager happened to
            # round a ReLU input near zero the float64 way and the provider did not.
            eager, rounding = self.eager_errors(mode), self.rounding_errors(mode)
            plain = {k: max(eager[k], rounding.get(k, 0.0)) for k in eager}
        return gate.judge(errs, plain, self.args.dtype, self.tf32)
