"""autoglm::fused_linear (csrc/linear/): y = act(x @ W^T + b) against a float64 reference.

CPU: the fp32 reference implementation, input checks, opcheck (schema, autograd registration,
fake tensor). GPU (@pytest.mark.gpu): the handwritten GEMV (M <= 16) and the cuBLAS(Lt) +
fused-epilogue path (M > 16) in bf16/fp16, judged by the 2x-stock-error rule; full opcheck;
CUDA-graph capture; the fallbacks (K % 8 != 0, misaligned or fp32 tensors). GPU shapes stay
modest so the file also runs under `compute-sanitizer --tool memcheck` (-k "not opcheck").
"""

import pytest
import torch
import torch.nn.functional as F

from autoglm_kernels import ops

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
    names = [k for k in ops.KERNELS if k.startswith("fused_linear")]
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
    "case,exc",
    [("dtype", TypeError), ("k", ValueError), ("odd_gated", ValueError), ("act", ValueError), ("w3d", ValueError),
     ("bias", ValueError), ("noncontig_w", ValueError)],
)
def test_native_op_checks_its_arguments(case, exc):
    """Calling torch.ops.autoglm.fused_linear directly (no wrapper) still fails cleanly."""
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
    with pytest.raises(exc):
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
    """A few real model shapes at M = 1 and 16 (the GEMV path as the decode step uses it)."""
    for M in (1, 16):
        x, w, b = make(M, K, N, dtype, "cuda")
        assert_within_2x_stock(ops.fused_linear(x, w, b, act), x, w, b, act)
