"""layer_norm and fused_add_layer_norm against nn.LayerNorm as OPT's decoder layers use it
(self_attn_layer_norm / final_layer_norm, with bias; `residual + hidden_states` before them).

CPU: the Triton kernels in the interpreter (fp32 tight, fp16 by the 2x-stock-error rule), the
plain-torch fallback, opcheck, input errors. GPU: bf16/fp16 at OPT sizes, full opcheck.
"""

import functools

import pytest
import torch
from torch import nn

from autoglm_kernels import ops
from references import assert_stock_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CPU_OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor")


def make_ln(hidden, dtype, *, bias=True, eps=1e-5, device=DEV):
    m = nn.LayerNorm(hidden, eps=eps, bias=bias).to(device=device, dtype=dtype)
    with torch.no_grad():
        m.weight.copy_(1 + 0.5 * torch.randn(hidden))
        if bias:
            m.bias.copy_(0.5 * torch.randn(hidden))
    return m


def ref64(m, x):
    b = m.bias.double() if m.bias is not None else None
    return torch.nn.functional.layer_norm(x.double(), m.normalized_shape, m.weight.double(), b, m.eps)


assert_stock_close_ln = functools.partial(assert_stock_close, fp32_tol=3e-5)  # LayerNorm's fp32 sums differ a bit more


# bf16 is GPU-only: the interpreter truncates fp32 -> bf16 instead of rounding to nearest
CPU_DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("shape", [(1, 111), (19, 4097), (2, 3, 64), (99, 40), (1, 1)])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_matches_module(shape, dtype, bias):
    m = make_ln(shape[-1], dtype, bias=bias)
    x = torch.randn(shape, device=DEV, dtype=dtype) * 2 + 0.5
    with torch.no_grad():
        stock = m(x)
    assert_stock_close_ln(ops.layer_norm(x, m.weight, m.bias, m.eps), stock, ref64(m, x))


@pytest.mark.parametrize("shape", [(1, 111), (19, 4097), (3, 7, 64)])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_fused_add_layer_norm(shape, dtype):
    """OPT: hidden_states = residual + hidden_states; then the next layer norm."""
    m = make_ln(shape[-1], dtype)
    x, res = (torch.randn(shape, device=DEV, dtype=dtype) for _ in range(2))
    with torch.no_grad():
        h = res + x
        stock = m(h)
    out, new_res = ops.fused_add_layer_norm(x, res, m.weight, m.bias, m.eps)
    torch.testing.assert_close(new_res, h, atol=0, rtol=0)
    assert_stock_close_ln(out, stock, ref64(m, h))


@pytest.mark.parametrize("case", ["large_mean", "outlier_first", "outlier_last"])
@pytest.mark.parametrize("hidden", [4096, 100])  # 100: several rows per program
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_layer_norm_cancellation(case, hidden, device):
    """Rows whose spread is small against their mean or against one outlier value (OPT's residual
    stream has outlier channels). The kernel's one reduction of the sum and the sum of squares
    of x - x[row, 0] alone is off by 0.34 on outlier_first (1000, then N(0, 1)): its fallback
    to centred values must catch that case."""
    x = torch.randn(5, hidden, device=device)
    if case == "large_mean":
        x += 300
    else:  # in the first two rows only: rows that need the fallback beside rows that do not
        x[:2, 0 if case == "outlier_first" else -1] = 1000.0
    m = make_ln(hidden, torch.float32, device=device)
    with torch.no_grad():
        stock_err = (m(x).double() - ref64(m, x)).abs().max().item()
    # the interpreter combines a tuple reduction element by element (the GPU: a tree), which
    # costs fp32 sums of 4096 squares up to about 1e-4 here
    slack = 1e-5 if x.is_cuda else 1e-3
    with_add, _ = ops.fused_add_layer_norm(x, torch.zeros_like(x), m.weight, m.bias, m.eps)  # x + 0 == x
    for out in (ops.layer_norm(x, m.weight, m.bias, m.eps), with_add):
        err = (out.double() - ref64(m, x)).abs().max().item()
        assert err <= 2 * stock_err + slack, f"error {err:.3g} vs stock's {stock_err:.3g}"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_weights_load_before_the_pdl_wait_only_for_parameters(device):
    """The norm kernels read module weights (nn.Parameter, which no op here writes) before their
    PDL wait, any other weight (it could be the output of the kernel just before) after it; both
    give the same values. On the GPU this runs both kernel variants."""
    from autoglm_kernels.triton import weights_ready

    ln = nn.LayerNorm(100).to(device)
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.2)
        ln.bias.normal_(0.0, 0.2)
    plain_w, plain_b = ln.weight.detach().clone(), ln.bias.detach().clone()
    assert weights_ready(ln.weight, ln.bias) and weights_ready(ln.weight, None)
    assert not weights_ready(plain_w, ln.bias) and not weights_ready(ln.weight, plain_b)
    x, r = torch.randn(3, 100, device=device), torch.randn(3, 100, device=device)
    with torch.no_grad():
        assert torch.equal(ops.layer_norm(x, ln.weight, ln.bias, ln.eps), ops.layer_norm(x, plain_w, plain_b, ln.eps))
        for a, b in zip(ops.fused_add_layer_norm(x, r, ln.weight, ln.bias, ln.eps),
                        ops.fused_add_layer_norm(x, r, plain_w, plain_b, ln.eps)):
            assert torch.equal(a, b)
        assert torch.equal(ops.rms_norm(x, ln.weight, 1e-6), ops.rms_norm(x, plain_w, 1e-6))
        for a, b in zip(ops.norm_add_norm(x, r, ln.weight, ln.bias, 1e-6), ops.norm_add_norm(x, r, plain_w, plain_b, 1e-6)):
            assert torch.equal(a, b)


def test_strided_rows():
    x = torch.randn(4, 6, 3 * 48, device=DEV)[..., 48:96]  # rows 144 apart, last dim contiguous
    m = make_ln(48, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ops.layer_norm(x, m.weight, m.bias, m.eps), m(x), atol=3e-5, rtol=3e-5)


def test_plain_torch_fallback(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    m = make_ln(50, torch.float32, device="cpu")
    x, res = torch.randn(3, 50), torch.randn(3, 50)
    with torch.no_grad():
        torch.testing.assert_close(ops.layer_norm(x, m.weight, m.bias, m.eps), m(x))
        out, h = ops.fused_add_layer_norm(x, res, m.weight, None, m.eps)
        torch.testing.assert_close(h, x + res)
        torch.testing.assert_close(out, torch.nn.functional.layer_norm(x + res, (50,), m.weight, None, m.eps))


def _opcheck_args():
    x, res = torch.randn(3, 5, 37, device=DEV), torch.randn(3, 5, 37, device=DEV)
    w, b = torch.randn(37, device=DEV), torch.randn(37, device=DEV)
    return [(torch.ops.autoglm.layer_norm, (x, w, b, 1e-5)),
            (torch.ops.autoglm.layer_norm, (x, w, None, 1e-5)),
            (torch.ops.autoglm.fused_add_layer_norm, (x, res, w, b, 1e-5))]


def test_opcheck_cpu():
    for op, args in _opcheck_args():
        torch.library.opcheck(op, args, test_utils=CPU_OPCHECK)


def test_errors():
    x, w, b = torch.randn(4, 64), torch.randn(64), torch.randn(64)
    with pytest.raises(ValueError, match=r"bias must be \[64\]"):
        ops.layer_norm(x, w, torch.randn(65), 1e-5)
    with pytest.raises(ValueError, match="weight must have 1 dims"):
        ops.layer_norm(x, torch.randn(8, 8), b, 1e-5)
    with pytest.raises(ValueError, match=r"weight must be \[64\]"):
        ops.layer_norm(x, torch.randn(32), b, 1e-5)
    with pytest.raises(TypeError, match="dtype"):
        ops.layer_norm(x.long(), w, b, 1e-5)
    with pytest.raises(ValueError, match="device"):
        ops.layer_norm(x, w, b.to("meta"), 1e-5)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        ops.fused_add_layer_norm(x, x[:2], w, b, 1e-5)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.fused_add_layer_norm(x, x.half(), w, b, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [2048, 4097, 111])
@pytest.mark.parametrize("rows", [1, 16, 4096])
def test_gpu_vs_stock(dtype, hidden, rows):
    m = make_ln(hidden, dtype)
    x, res = (torch.randn(rows, hidden, device="cuda", dtype=dtype) for _ in range(2))
    with torch.no_grad():
        assert_stock_close_ln(ops.layer_norm(x, m.weight, m.bias, m.eps), m(x), ref64(m, x))
        out, h = ops.fused_add_layer_norm(x, res, m.weight, m.bias, m.eps)
        torch.testing.assert_close(h, res + x, atol=0, rtol=0)
        assert_stock_close_ln(out, m(res + x), ref64(m, res + x))


@pytest.mark.gpu
def test_gpu_opcheck_full():
    for op, args in _opcheck_args():
        torch.library.opcheck(op, args)
