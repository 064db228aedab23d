"""torch.library.opcheck on every fused custom op that is registered, and on the CPU twins of
the CUDA conv kernels (schema, fake kernel, autograd registration, AOT dispatch), on CPU
tensors."""

from __future__ import annotations

import pytest
import torch

from fused_resnet import ops


def _v(c, dtype=torch.float32, offset=0.0):
    return torch.randn(c, dtype=dtype) * 0.5 + offset


def samples(name: str, dtype: torch.dtype):
    """(args) lists covering each op's optional inputs, in schema order."""
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(2, 6, 7, 7, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(5, 6, 3, 3, dtype=dtype)
    w1 = torch.randn(5, 6, 1, 1, dtype=dtype)
    y = torch.randn(2, 5, 4, 4, dtype=dtype)
    s5, h5, s6, h6 = _v(5, sd, 1.0), _v(5, sd), _v(6, sd, 1.0), _v(6, sd)
    if name == "conv_fwd":
        return [
            (x, w1, 1, 0, 1, 1, None, None, False, None, None, None, None, None, False, True),
            (x_cl, w3, 2, 1, 1, 1, s6, h6, True, s5, h5, y, s5, h5, True, False),
            (x, w3, 1, 2, 2, 1, s6, h6, True, None, None, None, None, None, False, True),
        ]
    if name == "bn_finalize":
        def state():
            return _v(5, sd), torch.rand(5, dtype=sd) + 0.5, torch.tensor(3)
        return [
            (_v(5, sd), torch.rand(5, dtype=sd) * 30, 32, s5, h5, *state(), 0.1, 1e-5, True),
            (_v(5, sd), torch.rand(5, dtype=sd) * 30, 32, None, None, *state(), None, 1e-3,
             True),
            (_v(5, sd), torch.rand(5, dtype=sd) * 30, 32, s5, h5, None, None, None, 0.1, 1e-5,
             False),
        ]
    if name == "block_end":
        return [(y, s5, h5, torch.randn_like(y), None, None),
                (y.contiguous(memory_format=torch.channels_last), s5, h5, torch.randn_like(y),
                 s5, h5)]
    if name == "block_end_bwd":
        return [(torch.randn_like(y), torch.relu(torch.randn_like(y)), y, h5, s5, None, None,
                 None),
                (torch.randn_like(y), torch.relu(torch.randn_like(y)), y, h5, s5,
                 torch.randn_like(y), h5, s5)]
    if name == "conv_bwd_data":
        dz = torch.randn_like(y)
        prev = torch.randn(2, 6, 7, 7, dtype=dtype)
        return [(dz, y, s5, h5, s5, w3, [2, 6, 7, 7], 2, 1, 1, 1, None, prev, s6, h6, h6, s6),
                (dz, y, s5, h5, s5, w3, [2, 6, 7, 7], 2, 1, 1, 1, x, None, None, None, None,
                 None)]
    if name == "conv_bwd_weight":
        dz = torch.randn_like(y)
        return [(x, s6, h6, True, dz, y, s5, h5, s5, w3, 2, 1, 1, 1),
                (x_cl, None, None, False, dz, y, s5, h5, s5, w3, 2, 1, 1, 1)]
    if name == "conv_bwd":
        dz = torch.randn_like(y)
        return [(x, s6, h6, True, dz, y, s5, h5, s5, w3, 2, 1, 1, 1, x, h6, s6),
                (x_cl, None, None, False, dz, y, s5, h5, s5, w3, 2, 1, 1, 1, None, None, None),
                (x, None, None, False, dz.new_empty(2, 5, 4, 4).normal_(), y, s5, h5, s5,
                 torch.randn(5, 6, 1, 1, dtype=dtype), 2, 0, 1, 1, x, None, None)]
    if name == "bn_backward":
        sums = (_v(5, sd) * 30, _v(5, sd) * 30)
        return [(*sums, 32, s5, h5, s5, True, s5, h5),
                (*sums, 32, s5, h5, s5, False, None, s5.to(torch.bfloat16))]
    raise KeyError(name)


REGISTERED = [n for n in ops.OP_NAMES if ops._op_exists(n)]
# The cpp backend's ops beyond the six.
EXTRA = [n for n in ops.CPP_EXTRA_OPS if ops._op_exists(n)]


@pytest.mark.skipif(not REGISTERED, reason="no fused custom op is registered (_C not built)")
@pytest.mark.parametrize("name", REGISTERED + EXTRA or ["none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_opcheck(name, dtype):
    op = getattr(torch.ops.fused_resnet, name)
    for args in samples(name, dtype):
        torch.library.opcheck(op, args)


# The CPU twins of the CUDA conv kernels: the ops' signatures and fakes (samples of the op
# without the suffix).
TWINS = [f"_{n}_igemm" for n in ("conv_fwd", "conv_bwd_data", "conv_bwd_weight")
         if ops._op_exists(f"_{n}_igemm")]


@pytest.mark.skipif(not TWINS, reason="no CPU twin op is registered (_C not built)")
@pytest.mark.parametrize("name", TWINS or ["none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_opcheck_igemm_twin(name, dtype):
    op = getattr(torch.ops.fused_resnet, name)
    for args in samples(name.removeprefix("_").removesuffix("_igemm"), dtype):
        torch.library.opcheck(op, args)


def test_every_op_is_registered_when_the_extension_is_built():
    if ops._EXTENSION_UNAVAILABLE is not None:
        pytest.skip(ops._EXTENSION_UNAVAILABLE)
    assert REGISTERED == list(ops.OP_NAMES)
