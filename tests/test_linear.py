"""autoglm::fused_linear (csrc/linear/): y = act(x @ W^T + b) against a float64 reference.

CPU: the fp32 reference implementation, input checks, opcheck (schema, autograd registration,
fake tensor). GPU (@pytest.mark.gpu): the handwritten GEMV (M <= 16) and the cuBLAS(Lt) +
fused-epilogue path (M > 16) in bf16/fp16, judged by the 2x-stock-error rule; full opcheck;
CUDA-graph capture; the fallbacks (K % 8 != 0, misaligned or fp32 tensors). GPU shapes stay
modest so the file also runs under `compute-sanitizer --tool memcheck` (-k "not opcheck").
"""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from autoglm_kernels import ops
from autoglm_kernels.triton.rmsnorm import rms_norm_reference

HAS_NATIVE = ops.NATIVE_OK
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason=f"_C not built: {ops.NATIVE_WHY}")
ACTS = ops.ACTIVATIONS


activate = ops.stock_activation  # the stock activation ops on the linear output


def reference(x, w, b, act):
    """float64 reference."""
    y = x.double() @ w.double().T
    return activate(y + b.double() if b is not None else y, act)


def stock(x, w, b, act):
    """What transformers does today, in x's dtype: F.linear then the stock activation ops."""
    return activate(F.linear(x, w, b), act)


def make(M, K, N, dtype, device, bias=True, lead=None):
    """x [M, K] (or [*lead, K]), W [N, K] scaled so outputs are O(1), b [N] or None."""
    shape = (*lead, K) if lead else (M, K)
    x = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    w = (torch.randn(N, K, device=device) / K**0.5).to(dtype)
    b = (torch.randn(N, device=device) * 0.5).to(dtype) if bias else None
    return x, w, b


def assert_within_2x_stock(out, x, w, b, act):
    """Kernel error vs float64 <= 2x the stock low-precision path's error (+ 1 ulp at the max)."""
    ref = reference(x, w, b, act)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    stock_err = (stock(x, w, b, act).double() - ref).abs().max().item()
    eps = torch.finfo(x.dtype).eps * max(ref.abs().max().item(), 1e-3)
    assert err <= 2 * stock_err + eps, f"error {err:.3g} vs stock {stock_err:.3g} (eps {eps:.2g})"


# ---------------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------------
CPU_SHAPES = [(1, 7, 6), (3, 33, 18), (16, 64, 46), (17, 40, 30), (5, 1, 4), (2, 128, 258)]


@needs_native
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("M,K,N", CPU_SHAPES)
def test_cpu_fp32_matches_reference(M, K, N, act, bias):
    x, w, b = make(M, K, N, torch.float32, "cpu", bias)
    out = ops.fused_linear(x, w, b, act)
    torch.testing.assert_close(out.double(), reference(x, w, b, act), atol=1e-5, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ACTS)
def test_cpu_half_upcasts(dtype, act):
    x, w, b = make(5, 72, 22, dtype, "cpu")
    out = ops.fused_linear(x, w, b, act)
    assert out.dtype == dtype
    # fp32 compute then one rounding: within one rounding of the float64 result.
    ref = reference(x, w, b, act)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=torch.finfo(dtype).eps)


@needs_native
@pytest.mark.parametrize("act", ["none", "gated_silu"])
def test_cpu_leading_dims_and_noncontiguous_x(act):
    x, w, b = make(0, 24, 10, torch.float32, "cpu", lead=(2, 3))
    out = ops.fused_linear(x, w, b, act)
    assert out.shape == (2, 3, 5 if act == "gated_silu" else 10)
    torch.testing.assert_close(out.double(), reference(x, w, b, act), atol=1e-5, rtol=1e-5)
    xt = torch.randn(24, 7).t()  # [7, 24], non-contiguous
    torch.testing.assert_close(ops.fused_linear(xt, w, b, act).double(), reference(xt, w, b, act), atol=1e-5, rtol=1e-5)
    x1 = torch.randn(24)  # 1-D x: [K] -> [N]
    assert ops.fused_linear(x1, w, b, act).shape == (5 if act == "gated_silu" else 10,)


@needs_native
@pytest.mark.parametrize("act", ["relu", "gated_silu"])
def test_cpu_empty_rows_and_k0(act):
    n_out = 4 if act == "gated_silu" else 8
    x, w, b = make(0, 16, 8, torch.float32, "cpu")
    assert ops.fused_linear(x, w, b, act).shape == (0, n_out)
    x, w, b = torch.randn(3, 0), torch.randn(8, 0), torch.randn(8)  # K = 0: y = act(bias)
    torch.testing.assert_close(ops.fused_linear(x, w, b, act).double(), reference(x, w, b, act), atol=1e-6, rtol=1e-5)


@needs_native
@pytest.mark.parametrize("act", ["none", "gelu", "gated_silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_opcheck(act, bias):
    x, w, b = make(3, 16, 10, torch.float32, "cpu", bias)
    torch.library.opcheck(torch.ops.autoglm.fused_linear.default, (x, w, b, act),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_kernels_listed_for_doctor():
    names = [k for k in ops.KERNELS if k.startswith("fused_linear")]  # gated_mlp shares their binary
    assert len(names) == 2
    for name in names:
        ok, why = ops.KERNELS[name]
        assert isinstance(ok, bool) and (ok or why)


@pytest.mark.parametrize(
    "case,exc,match",
    [
        ("dtype_mismatch", TypeError, "share one dtype"),
        ("int_dtype", TypeError, "dtype int64"),
        ("device_mismatch", ValueError, "share one device"),
        ("k_mismatch", ValueError, "K=12"),
        ("gated_odd_n", ValueError, "even N"),
        ("unknown_act", ValueError, "unknown activation"),
        ("weight_1d", ValueError, "2 dims"),
        ("weight_noncontig", ValueError, "contiguous"),
        ("bias_size", ValueError, r"bias must be \[N\]"),
        ("not_tensor", TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_errors(case, exc, match):
    x, w, b = make(2, 16, 9, torch.float32, "cpu")
    act = "none"
    if case == "dtype_mismatch":
        w = w.half()
    elif case == "int_dtype":
        x = x.long()
    elif case == "device_mismatch":
        w = w.to("meta")
    elif case == "k_mismatch":
        x = torch.randn(2, 12)
    elif case == "gated_odd_n":
        act = "gated_silu"
    elif case == "unknown_act":
        act = "swish"
    elif case == "weight_1d":
        w = w[0]
    elif case == "weight_noncontig":
        w = torch.randn(16, 9).t()
    elif case == "bias_size":
        b = torch.randn(8)
    elif case == "not_tensor":
        x = x.tolist()
    with pytest.raises(exc, match=match):
        ops.fused_linear(x, w, b, act)


@needs_native
@pytest.mark.parametrize(
    "case,exc,message",
    [("dtype", TypeError, "fused_linear: weight dtype Double differs from x dtype Float"),
     ("k", ValueError, "fused_linear: the input has K=15 but weight is [9, 16]"),
     ("odd_gated", ValueError, "fused_linear: gated_silu needs an even N (gate and up halves), got N=9"),
     ("act", ValueError, "fused_linear: unknown activation 'tanh'; expected one of: none, relu, gelu, silu, gated_silu"),
     ("w3d", ValueError, "fused_linear: weight must be 2-D [N, K], got 3 dims"),
     ("bias", ValueError, "fused_linear: weight's bias must be [9], got [10]"),
     ("noncontig_w", ValueError, "fused_linear: weight must be contiguous")],
)
def test_native_op_checks_its_arguments(case, exc, message):
    """Calling torch.ops.autoglm.fused_linear directly (no wrapper) still fails cleanly, with the
    whole message (built by csrc/check.h: numbers, dtypes and sizes as c10 prints them)."""
    x, w, b = make(2, 16, 9, torch.float32, "cpu")
    act = "none"
    if case == "dtype":
        w = w.double()
    elif case == "k":
        x = torch.randn(2, 15)
    elif case == "odd_gated":
        act = "gated_silu"
    elif case == "act":
        act = "tanh"
    elif case == "w3d":
        w = w[None]
    elif case == "bias":
        b = torch.randn(10)
    elif case == "noncontig_w":
        w = torch.randn(16, 9).t()
    with pytest.raises(exc, match=re.escape(message)):
        torch.ops.autoglm.fused_linear.default(x, w, b, act)


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
GPU_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 17, 1000])
@pytest.mark.parametrize("K,N", [(8, 2), (48, 30), (280, 130), (4104, 46)])
def test_gpu_matches_reference(K, N, M, act, dtype):
    """GEMV (M <= 16) and GEMM (M > 16) paths; K tails of 8/16/24 past a 32-wide step, N and N/2 odd, tiny N."""
    for bias in (True, False):
        x, w, b = make(M, K, N, dtype, "cuda", bias)
        assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", ["none", "gated_silu"])
@pytest.mark.parametrize("M,K,N", [(1, 4096, 40), (5, 2048, 600), (16, 64, 40000), (2, 13696, 98)])
def test_gpu_split_k_extremes(M, K, N, act, dtype):
    """Few tiles x long K (16 split-K warps per block) and many tiles x short K (one warp)."""
    x, w, b = make(M, K, N, dtype, "cuda")
    assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("M", [1, 4, 16])
def test_gpu_leading_dims(act, M):
    x, w, b = make(0, 96, 48, torch.bfloat16, "cuda", lead=(1, M))
    out = ops.fused_linear(x, w, b, act)
    assert out.shape == (1, M, 24 if act == "gated_silu" else 48)
    assert_within_2x_stock(out, x, w, b, act)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["relu", "gated_silu"])
@pytest.mark.parametrize("M", [1, 12, 40])
def test_gpu_fallbacks(act, M):
    """K % 8 != 0, misaligned x / weight, non-contiguous x, fp32: still right."""
    dt = torch.bfloat16
    x, w, b = make(M, 61, 26, dt, "cuda")  # K % 8 != 0 -> stock path
    assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)

    K, N = 64, 26
    buf = torch.randn(M * K + 1, device="cuda").to(dt)
    x = buf[1:].view(M, K)  # 2-byte offset: not 16-byte aligned
    wbuf = (torch.randn(N * K + 1, device="cuda") / 8).to(dt)
    w = wbuf[1:].view(N, K)  # contiguous but misaligned
    b = torch.randn(N, device="cuda").to(dt)
    assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)
    _, w2, _ = make(M, K, N, dt, "cuda")
    assert_within_2x_stock(ops.fused_linear(x, w2, b, act), x, w2, b, act)

    xt = torch.randn(K, M, device="cuda").to(dt).t()  # non-contiguous x
    assert_within_2x_stock(ops.fused_linear(xt, w2, b, act), xt, w2, b, act)

    x0, w0, b0 = torch.randn(M, 0, device="cuda").to(dt), torch.randn(N, 0, device="cuda").to(dt), b  # K = 0
    torch.testing.assert_close(ops.fused_linear(x0, w0, b0, act).double(), reference(x0, w0, b0, act),
                               atol=1e-2, rtol=1e-2)
    assert ops.fused_linear(x[:0], w2, b, act).shape[0] == 0  # M = 0

    x32, w32, b32 = make(M, K, N, torch.float32, "cuda")
    torch.testing.assert_close(ops.fused_linear(x32, w32, b32, act).double(), reference(x32, w32, b32, act),
                               atol=1e-2, rtol=1e-2)  # TF32 may be on


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["silu", "gated_silu"])
@pytest.mark.parametrize("M", [4, 40])
def test_gpu_cuda_graph_capture(act, M):
    """The op allocates through torch and never syncs, so it can be captured and replayed."""
    x, w, b = make(M, 512, 96, torch.bfloat16, "cuda")
    static_x = x.clone()
    ops.fused_linear(static_x, w, b, act)  # warm up outside the graph
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.fused_linear(static_x, w, b, act)
    new_x = torch.randn_like(x)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    assert_within_2x_stock(static_out, new_x, w, b, act)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("M", [3, 20])
def test_gpu_opcheck(act, M):
    x, w, b = make(M, 64, 46, torch.bfloat16, "cuda")
    torch.library.opcheck(torch.ops.autoglm.fused_linear.default, (x, w, b, act))
    torch.library.opcheck(torch.ops.autoglm.fused_linear.default, (x, w, None, act))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("K,N,act", [(4096, 4608, "none"), (4096, 27392, "gated_silu"), (2048, 8192, "relu")])
def test_gpu_reference_shapes_decode(K, N, act, dtype):
    """A few real model shapes at M = 1, 9 and 16 (the GEMV path as the decode step uses it; GLM-4's
    qkv at M > 8 runs 6-warp blocks, a split-K count between two powers of two)."""
    for M in (1, 9, 16):
        x, w, b = make(M, K, N, dtype, "cuda")
        assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("K", [2048, 2052])
def test_gpu_three_batch_grids(K, act, dtype):
    """M <= 8 over grids of more tiles than SMs but at most 1.5x as many, where the staged kernel
    takes a 3-batch ring by default (Llama-3.2-1B's qkv: 192 tiles on 132 SMs); sized from this
    GPU's SM count, with and without a bias, K a multiple of the vector width and not."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = sms + sms // 4
    N = 16 * tiles  # 16 weight rows a tile; gated_silu's 8 output columns are 16 rows too
    for M in (1, 3, 8):
        for bias in (True, False):
            x, w, b = make(M, K, N, dtype, "cuda", bias)
            assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("M,K,N", [(9, 4104, 4600), (16, 4096, 5120), (13, 4096, 4608), (12, 8192, 544),
                                   (16, 8192, 520)])
def test_gpu_cluster_split_k(M, K, N, act, dtype):
    """M = 9..16 where the tiles leave SMs idle or a short last wave of blocks: on a 132-SM GPU
    the blocks of a thread-block cluster share each tile's K (2, 2, 2, 3 and 4 blocks per tile
    here; N and K tails in the first and last) and merge through distributed shared memory.
    Right, bit-identical from call to call (the merge adds in a fixed order), and the same when
    replayed from a CUDA graph."""
    for bias in (True, False):
        x, w, b = make(M, K, N, dtype, "cuda", bias)
        out = ops.fused_linear(x, w, b, act)
        assert_within_2x_stock(out, x, w, b, act)
        assert torch.equal(ops.fused_linear(x, w, b, act), out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.fused_linear(x, w, b, act)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, out)


def stock_mismatch(out, x, w, b, act):
    """Share of output elements that differ from stock's (F.linear + the stock activation ops)."""
    return (out != stock(x, w, b, act)).float().mean().item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", ["none", "relu", "silu", "gelu", "gated_silu"])
def test_gpu_epilogue_rounds_where_stock_rounds(act, dtype):
    """The epilogues round where the stock ops do (the linear's output, then each activation op's),
    so the outputs differ from stock's only where a sum's order moved a rounding. M = 40: the same
    cuBLAS call as stock, then torch's own activation (gelu, silu; the fused silu(g) * u), or
    cuBLASLt's relu epilogue (relu commutes with the rounding): equal.
    M = 1, 16: the GEMV's sums run in another order, so a few elements round the other way (the
    limit, 2%, is far below what one rounding of the fp32 silu(g) * u instead of stock's three gives)."""
    K, N = 1024, 2048
    for M, limit in ((40, 1e-4), (1, 0.02), (16, 0.02)):
        x, w, b = make(M, K, N, dtype, "cuda")
        share = stock_mismatch(ops.fused_linear(x, w, b, act), x, w, b, act)
        print(f"{act} {dtype} M={M}: {share:.2%} of the elements differ from stock")
        assert share <= limit, f"{act} M={M}: {share:.2%} of the elements differ from stock (limit {limit:.2%})"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_silu_mul_is_stock_bit_for_bit(dtype):
    """The prefill path's silu-multiply on one linear output: torch's silu, then the product."""
    x, w, b = make(64, 256, 4096, dtype, "cuda")
    y = F.linear(x, w, b)
    assert torch.equal(ops.fused_linear(x, w, b, "gated_silu"), activate(y, "gated_silu"))


# ---------------------------------------------------------------------------------------------
# gated_mlp: down(silu(gate) * up) as one op
# ---------------------------------------------------------------------------------------------
def make_mlp(M, K, inner, N, dtype, device, bias=True, lead=None):
    """x [M, K], gate_up [2 inner, K] (gate rows first), down [N, inner], biases or None."""
    x, gu, bg = make(M, K, 2 * inner, dtype, device, bias, lead)
    _, wd, bd = make(1, inner, N, dtype, device, bias)
    return x, gu, bg, wd, bd


def mlp_reference(x, gu, bg, wd, bd):
    """float64 reference of the whole MLP."""
    return reference(reference(x, gu, bg, "gated_silu"), wd, bd, "none")


def mlp_stock(x, gu, bg, wd, bd):
    """The stock MLP in x's dtype: linear, chunk + silu + mul, linear."""
    return stock(stock(x, gu, bg, "gated_silu"), wd, bd, "none")


def assert_mlp_within_2x_stock(out, x, gu, bg, wd, bd):
    ref = mlp_reference(x, gu, bg, wd, bd)
    assert out.shape == ref.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    stock_err = (mlp_stock(x, gu, bg, wd, bd).double() - ref).abs().max().item()
    eps = torch.finfo(x.dtype).eps * max(ref.abs().max().item(), 1e-3)
    assert err <= 2 * stock_err + eps, f"error {err:.3g} vs stock {stock_err:.3g} (eps {eps:.2g})"


@needs_native
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("M,K,inner,N", [(1, 7, 3, 6), (3, 33, 18, 5), (17, 64, 40, 46), (0, 16, 8, 4)])
def test_cpu_gated_mlp_matches_reference(M, K, inner, N, bias):
    x, gu, bg, wd, bd = make_mlp(M, K, inner, N, torch.float32, "cpu", bias)
    torch.testing.assert_close(ops.gated_mlp(x, gu, bg, wd, bd).double(), mlp_reference(x, gu, bg, wd, bd),
                               atol=1e-4, rtol=1e-4)


@needs_native
def test_cpu_gated_mlp_equals_two_fused_linears():
    """The op is the composition it replaces (the hidden activation rounded to x's dtype between)."""
    x, gu, bg, wd, bd = make_mlp(0, 40, 24, 10, torch.bfloat16, "cpu", lead=(2, 3))
    h = ops.fused_linear(x, gu, bg, "gated_silu")
    out = ops.gated_mlp(x, gu, bg, wd, bd)
    assert out.shape == (2, 3, 10)
    assert torch.equal(out, ops.fused_linear(h, wd, bd))


@needs_native
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_gated_mlp_opcheck(bias):
    x, gu, bg, wd, bd = make_mlp(3, 16, 8, 6, torch.float32, "cpu", bias)
    torch.library.opcheck(torch.ops.autoglm.gated_mlp.default, (x, gu, bg, wd, bd),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize(
    "case,exc,match",
    [
        ("inner_mismatch", ValueError, r"expected \[N, 8\]"),
        ("odd_gate_up", ValueError, "even N"),
        ("down_dtype", TypeError, "share one dtype"),
        ("down_device", ValueError, "share one device"),
        ("down_noncontig", ValueError, "contiguous"),
        ("down_bias_size", ValueError, r"down_bias must be \[N\]"),
        ("down_1d", ValueError, "2 dims"),
        ("k_mismatch", ValueError, "K=12"),
    ],
)
def test_gated_mlp_bad_input_errors(case, exc, match):
    x, gu, bg, wd, bd = make_mlp(2, 16, 8, 5, torch.float32, "cpu")
    if case == "inner_mismatch":
        wd = torch.randn(5, 9)
    elif case == "odd_gate_up":
        gu, bg = torch.randn(15, 16), None
    elif case == "down_dtype":
        wd = wd.half()
    elif case == "down_device":
        wd = wd.to("meta")
    elif case == "down_noncontig":
        wd = torch.randn(8, 5).t()
    elif case == "down_bias_size":
        bd = torch.randn(4)
    elif case == "down_1d":
        wd = wd[0]
    elif case == "k_mismatch":
        x = torch.randn(2, 12)
    with pytest.raises(exc, match=match):
        ops.gated_mlp(x, gu, bg, wd, bd)


@needs_native
@pytest.mark.parametrize("case", ["inner", "down_dtype", "down_bias", "odd_gate_up"])
def test_native_gated_mlp_checks_its_arguments(case):
    """Calling torch.ops.autoglm.gated_mlp directly (no wrapper) still fails cleanly."""
    x, gu, bg, wd, bd = make_mlp(2, 16, 8, 5, torch.float32, "cpu")
    if case == "inner":
        wd = torch.randn(5, 7)
    elif case == "down_dtype":
        wd = wd.double()
    elif case == "down_bias":
        bd = torch.randn(6)
    elif case == "odd_gate_up":
        gu, bg = torch.randn(15, 16), None
    with pytest.raises((ValueError, TypeError), match="gated_mlp|fused_linear"):
        torch.ops.autoglm.gated_mlp.default(x, gu, bg, wd, bd)


# GPU. Shapes that take each path: both projections through the GEMV (small, and the
# Llama-3.2-1B shape: a 64 MiB gate_up is still the GEMV's); gate_up above 64 MiB (cuBLAS +
# silu_mul, then the down GEMV) with an inner width that is no multiple of the 32-wide k step
# and an odd N; prefill (M > 16: cuBLAS + silu_mul + cuBLAS); inner % 8 != 0 (down on cuBLAS).
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 17, 200])
@pytest.mark.parametrize("K,inner,N", [(64, 40, 46), (96, 52, 30), (2048, 8192, 2048), (2048, 8200, 46)])
def test_gpu_gated_mlp_matches_reference(K, inner, N, M, dtype):
    for bias in (True, False):
        x, gu, bg, wd, bd = make_mlp(M, K, inner, N, dtype, "cuda", bias)
        assert_mlp_within_2x_stock(ops.gated_mlp(x, gu, bg, wd, bd), x, gu, bg, wd, bd)


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 5, 16])
@pytest.mark.parametrize("K,inner,N", [(2048, 8192, 2048), (2048, 8200, 46)])
def test_gpu_gated_mlp_equals_its_two_fused_linears(K, inner, N, M):
    """The op runs the same kernels as fused_linear(gated_silu) followed by fused_linear."""
    x, gu, bg, wd, bd = make_mlp(M, K, inner, N, torch.bfloat16, "cuda")
    h = ops.fused_linear(x, gu, bg, "gated_silu")
    assert torch.equal(ops.gated_mlp(x, gu, bg, wd, bd), ops.fused_linear(h, wd, bd))


@pytest.mark.gpu
def test_gpu_gated_mlp_capture_and_opcheck():
    x, gu, bg, wd, bd = make_mlp(2, 2048, 8192, 256, torch.bfloat16, "cuda")
    static_x = x.clone()
    ops.gated_mlp(static_x, gu, bg, wd, bd)  # warm up outside the graph
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.gated_mlp(static_x, gu, bg, wd, bd)
    new_x = torch.randn_like(x)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    assert_mlp_within_2x_stock(static_out, new_x, gu, bg, wd, bd)
    for M in (3, 20):
        args = make_mlp(M, 64, 40, 46, torch.bfloat16, "cuda")
        torch.library.opcheck(torch.ops.autoglm.gated_mlp.default, args)


# ---------------------------------------------------------------------------------------------
# the RMSNorm prologue and the residual epilogue (fused_linear and gated_mlp)
# ---------------------------------------------------------------------------------------------
def make_prologue(x, n_out, norm=True, residual=True):
    """An RMSNorm weight [K] around 1 and a residual of the output's shape, of x's dtype/device."""
    K = x.shape[-1]
    nw = (1 + 0.2 * torch.randn(K, device=x.device)).to(x.dtype) if norm else None
    res = torch.randn(*x.shape[:-1], n_out, device=x.device).to(x.dtype) if residual else None
    return nw, res


def prologue_composed(fn, x, nw, res, eps=1e-5):
    """fn(RMSNorm(x)) + residual, through the stock ops (what the fused kernel replaces)."""
    y = fn(x if nw is None else rms_norm_reference(x, nw, eps))
    return y if res is None else y + res


def prologue_reference(fn64, x, nw, res, eps=1e-5):
    """float64 reference: fn64 (a float64 function) of the float64 RMSNorm, plus the residual."""
    xd = x.double()
    if nw is not None:
        xd = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * nw.double()
    y = fn64(xd)
    return y if res is None else y + res.double()


def assert_prologue_within_2x_stock(out, stock_out, ref):
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    stock_err = (stock_out.double() - ref).abs().max().item()
    eps = torch.finfo(out.dtype).eps * max(ref.abs().max().item(), 1e-3)
    assert err <= 2 * stock_err + eps, f"error {err:.3g} vs stock {stock_err:.3g} (eps {eps:.2g})"


@needs_native
@pytest.mark.parametrize("act", ["none", "gated_silu"])
@pytest.mark.parametrize("norm,residual", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_prologue_equals_composition(act, norm, residual, dtype):
    x, w, b = make(0, 40, 30, dtype, "cpu", lead=(2, 3))
    nw, res = make_prologue(x, 15 if act == "gated_silu" else 30, norm, residual)
    out = ops.fused_linear(x, w, b, act, norm_weight=nw, norm_eps=1e-5, residual=res)
    expect = prologue_composed(lambda v: ops.fused_linear(v, w, b, act), x, nw, res)
    assert out.shape == expect.shape and torch.equal(out, expect)
    x, gu, bg, wd, bd = make_mlp(0, 40, 24, 10, dtype, "cpu", lead=(2, 3))
    nw, res = make_prologue(x, 10, norm, residual)
    out = ops.gated_mlp(x, gu, bg, wd, bd, norm_weight=nw, norm_eps=1e-5, residual=res)
    assert torch.equal(out, prologue_composed(lambda v: ops.gated_mlp(v, gu, bg, wd, bd), x, nw, res))


@needs_native
def test_cpu_prologue_opcheck():
    x, w, b = make(3, 16, 8, torch.float32, "cpu")
    nw, res = make_prologue(x, 8)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.autoglm.fused_linear.default, (x, w, b, "none", nw, 1e-5, res), test_utils=utils)
    x, gu, bg, wd, bd = make_mlp(3, 16, 8, 6, torch.float32, "cpu")
    nw, res = make_prologue(x, 6)
    torch.library.opcheck(torch.ops.autoglm.gated_mlp.default, (x, gu, bg, wd, bd, nw, 1e-5, res), test_utils=utils)


@needs_native
def test_fuses_prologue_answers():
    _, w, _ = make(1, 16, 8, torch.float32, "cpu")
    assert ops.fuses_prologue(w, 1) is True  # CPU: one reference op either way


@pytest.mark.parametrize(
    "case,exc,match",
    [
        ("norm_size", ValueError, r"norm_weight must be \[K\] = \[16\]"),
        ("norm_dtype", TypeError, "share one dtype"),
        ("norm_2d", ValueError, "2 dims|1 dims"),
        ("eps", ValueError, "norm_eps must be"),
        ("res_shape", ValueError, "residual must have the output's shape"),
        ("res_device", ValueError, "share one device"),
    ],
)
def test_prologue_bad_input_errors(case, exc, match):
    x, w, b = make(2, 16, 9, torch.float32, "cpu")
    nw, res, eps = torch.ones(16), torch.zeros(2, 9), 1e-6
    if case == "norm_size":
        nw = torch.ones(15)
    elif case == "norm_dtype":
        nw = nw.half()
    elif case == "norm_2d":
        nw = nw[None]
    elif case == "eps":
        eps = 0.0
    elif case == "res_shape":
        res = torch.zeros(2, 8)
    elif case == "res_device":
        res = res.to("meta")
    with pytest.raises(exc, match=match):
        ops.fused_linear(x, w, b, norm_weight=nw, norm_eps=eps, residual=res)


@needs_native
@pytest.mark.parametrize("case,message", [
    ("norm_size", "fused_linear: norm_weight must be [K] = [16], got [15]"),
    ("eps", "fused_linear: norm_eps must be > 0, got -1.5e-06"),
    ("res_shape", "fused_linear: residual must have the output's shape [2, 9], got [9]"),
])
def test_native_prologue_checks_its_arguments(case, message):
    x, w, b = make(2, 16, 9, torch.float32, "cpu")
    nw, res, eps = torch.ones(16), torch.zeros(2, 9), 1e-6
    if case == "norm_size":
        nw = torch.ones(15)
    elif case == "eps":
        eps = -1.5e-6
    elif case == "res_shape":
        res = torch.zeros(9)
    with pytest.raises(ValueError, match=re.escape(message)):
        torch.ops.autoglm.fused_linear.default(x, w, b, "none", nw, eps, res)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("act", ["none", "gated_silu"])
@pytest.mark.parametrize("M", [1, 3, 8, 9, 16, 17, 100])
@pytest.mark.parametrize("K,N", [(64, 46), (2056, 130), (4096, 40)])
def test_gpu_prologue_matches_reference(K, N, M, act, dtype):
    """RMSNorm prologue and residual epilogue in the GEMV (M <= 16, K % 32 != 0 included; the
    normed rows staged in shared memory up to 64 KiB, else the norm as ATen ops before the GEMV)
    and as ops around cuBLAS (M > 16)."""
    x, w, b = make(M, K, N, dtype, "cuda")
    x = x * 3  # rms far from 1: the norm matters
    n_out = N // 2 if act == "gated_silu" else N
    for norm, residual in ((True, False), (False, True), (True, True)):
        nw, res = make_prologue(x, n_out, norm, residual)
        out = ops.fused_linear(x, w, b, act, norm_weight=nw, norm_eps=1e-5, residual=res)
        stock_out = prologue_composed(lambda v: stock(v, w, b, act), x, nw, res)
        ref = prologue_reference(lambda v: reference(v, w, b, act), x, nw, res)
        assert_prologue_within_2x_stock(out, stock_out, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("M", [1, 5, 16, 40])
@pytest.mark.parametrize("K,inner,N", [(64, 40, 46), (2048, 8192, 2048)])
def test_gpu_gated_mlp_prologue(K, inner, N, M, dtype):
    """gated_mlp with the norm before gate_up and the residual after down, on every path."""
    x, gu, bg, wd, bd = make_mlp(M, K, inner, N, dtype, "cuda")
    nw, res = make_prologue(x, N)
    out = ops.gated_mlp(x, gu, bg, wd, bd, norm_weight=nw, norm_eps=1e-5, residual=res)
    stock_out = prologue_composed(lambda v: mlp_stock(v, gu, bg, wd, bd), x, nw, res)
    ref = prologue_reference(lambda v: reference(reference(v, gu, bg, "gated_silu"), wd, bd, "none"), x, nw, res)
    assert_prologue_within_2x_stock(out, stock_out, ref)


_STAGES3_SCRIPT = """
import torch
from autoglm_kernels import ops
torch.manual_seed(0)
for M, K, N in ((2, 16384, 2048), (1, 8192, 4096)):
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K ** -0.5
    nw = (1 + 0.2 * torch.randn(K, device="cuda")).to(torch.bfloat16)
    out = ops.fused_linear(x, w, None, norm_weight=nw, norm_eps=1e-5).double()
    xn = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * nw.double()
    ref = xn @ w.double().t()
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item(), (M, K, N)
print("ok")
"""


@pytest.mark.gpu
def test_gpu_three_batch_ring_with_the_norm_prologue():
    """AUTOGLM_GEMV_STAGES=3 (read once per process, so in a subprocess) with the norm prologue's
    rows at the 64 KiB limit: the 16-warp block would need more shared memory than the device
    allows, so the launch takes fewer warps (it used to fail with 'invalid argument')."""
    env = dict(os.environ, AUTOGLM_GEMV_STAGES="3")
    run = subprocess.run([sys.executable, "-c", _STAGES3_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


_ERROR_SCRIPT = """
import sys, torch
from autoglm_kernels import ops
x = torch.randn(int(sys.argv[4]) if len(sys.argv) > 4 else 1, 64, device="cuda", dtype=torch.bfloat16)
w = torch.randn(int(sys.argv[1]), 64, device="cuda", dtype=getattr(torch, sys.argv[3]))
for _ in range(2):  # a knob is read once per process; every call that uses it raises
    try:
        torch.ops.autoglm.fused_linear.default(x, w, None, sys.argv[2])  # the native op, no Python checks first
    except (ValueError, TypeError) as e:
        print(f"{type(e).__name__}: {e}")
"""


def _expect_error(env: dict, args: tuple, message: str) -> None:
    """Runs _ERROR_SCRIPT (N, activation, weight dtype[, rows of x: 1]) in a fresh process with
    faulthandler on: both calls must raise `message` ("ValueError: ..." / "TypeError: ...")."""
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _ERROR_SCRIPT, *args], env=dict(os.environ, **env),
                         capture_output=True, text=True, timeout=300)
    if run.returncode != 0 or run.stdout.count(message) != 2:
        pytest.fail(f"exit code {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}")


@pytest.mark.gpu
@pytest.mark.parametrize("name,value,message", [
    ("AUTOGLM_GEMV_STAGES", "1", "AUTOGLM_GEMV_STAGES must be 0, 2 or 3, got 1"),
    ("AUTOGLM_GEMV_MAX_WEIGHT_MIB", "-1", "AUTOGLM_GEMV_MAX_WEIGHT_MIB must be an integer in 0..1073741824, got '-1'"),
    ("AUTOGLM_GEMV_WARPS_PER_SM", "many", "AUTOGLM_GEMV_WARPS_PER_SM must be an integer in 1..64, got 'many'"),
    ("AUTOGLM_GEMV_ANY_WARPS", "3", "AUTOGLM_GEMV_ANY_WARPS must be an integer in 0..2, got '3'"),
    ("AUTOGLM_GEMV_PREFETCH_BYTES", "4k", "AUTOGLM_GEMV_PREFETCH_BYTES must be an integer in 0..1073741824, got '4k'"),
    ("AUTOGLM_GEMV_CLUSTER_SPLIT", "5", "AUTOGLM_GEMV_CLUSTER_SPLIT must be an integer in 0..4, got '5'"),
])
def test_gpu_tuning_knob_out_of_range_is_a_clear_error(name, value, message):
    """A GEMV tuning knob outside its range raises a ValueError naming the variable and what it
    accepts, in every call that reads it (the first one used to die with SIGSEGV instead). 12 rows:
    the launch that reads the cluster-split knob (M = 9..16, sm_90+)."""
    if name == "AUTOGLM_GEMV_CLUSTER_SPLIT" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the cluster split (and its knob) is for sm_90+ only")
    _expect_error({name: value}, ("32", "none", "bfloat16", "12"), f"ValueError: {message}")


@pytest.mark.gpu
@pytest.mark.parametrize("args,message", [
    (("33", "gated_silu", "bfloat16"), "ValueError: fused_linear: gated_silu needs an even N (gate and up halves), got N=33"),
    (("32", "none", "float16"), "TypeError: fused_linear: weight dtype Half differs from x dtype BFloat16"),
])
def test_gpu_native_op_error_with_a_formatted_message(args, message):
    """An argument error raised by the CUDA op itself, its message formatted from numbers and
    dtypes, reaches Python (c10's own formatting crashed the process there: csrc/check.h)."""
    _expect_error({}, args, message)


@pytest.mark.gpu
def test_gpu_prologue_residual_rounding_and_capture():
    """The residual add rounds as `residual + out` does (bit-equal to the plain GEMV + add), and
    the prologue op captures into a CUDA graph; full opcheck with the new arguments."""
    x, w, b = make(4, 512, 96, torch.bfloat16, "cuda")
    _, res = make_prologue(x, 96, norm=False)
    assert torch.equal(ops.fused_linear(x, w, b, residual=res), ops.fused_linear(x, w, b) + res)
    nw, _ = make_prologue(x, 96, residual=False)
    static_x = x.clone()
    ops.fused_linear(static_x, w, b, norm_weight=nw, residual=res)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = ops.fused_linear(static_x, w, b, norm_weight=nw, residual=res)
    new_x = torch.randn_like(x)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, ops.fused_linear(new_x, w, b, norm_weight=nw, residual=res), rtol=0, atol=0)
    for M in (3, 20):
        xo, wo, bo = make(M, 64, 46, torch.bfloat16, "cuda")
        nwo, reso = make_prologue(xo, 46)
        torch.library.opcheck(torch.ops.autoglm.fused_linear.default, (xo, wo, bo, "none", nwo, 1e-5, reso))
        args = make_mlp(M, 64, 40, 46, torch.bfloat16, "cuda")
        nwo, reso = make_prologue(args[0], 46)
        torch.library.opcheck(torch.ops.autoglm.gated_mlp.default, (*args, nwo, 1e-5, reso))
