"""rms_norm, fused_add_rms_norm, norm_add_norm against the transformers modules themselves
(LlamaRMSNorm, Glm4RMSNorm, Qwen3RMSNorm and GLM-4's decoder-layer norm sequence).

CPU: the Triton kernels in the interpreter (fp32 exact-ish, fp16/bf16 by the 2x-stock-error rule)
on awkward sizes, the plain-torch fallback, opcheck, input errors. GPU: bf16/fp16 at model sizes,
strided rows, full opcheck, CUDA-graph capture.
"""

import pytest
import torch
from transformers.models.glm4.modeling_glm4 import Glm4RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from autoglm_kernels import ops
from references import assert_stock_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
MODULES = {"llama": LlamaRMSNorm, "glm4": Glm4RMSNorm, "qwen3": Qwen3RMSNorm}
CPU_OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor")


def make_norm(cls, hidden, eps, dtype, device=DEV):
    m = cls(hidden, eps=eps).to(device=device, dtype=dtype)
    with torch.no_grad():
        m.weight.copy_(1 + 0.5 * torch.randn(hidden))
    return m


def as_f64(m):
    return make_like(m, torch.float64)


def make_like(m, dtype):
    m2 = type(m)(m.weight.shape[0], eps=m.variance_epsilon).to(device=m.weight.device, dtype=dtype)
    with torch.no_grad():
        m2.weight.copy_(m.weight)
    return m2


# bf16 is GPU-only: the interpreter truncates fp32 -> bf16 instead of rounding to nearest
CPU_DTYPES = [torch.float32, torch.float16]


# ---------------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("arch", list(MODULES))
@pytest.mark.parametrize("shape", [(1, 111), (19, 4097), (2, 3, 64), (99, 40), (1, 1, 1)])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_rms_norm_matches_module(arch, shape, dtype):
    m = make_norm(MODULES[arch], shape[-1], 1e-6, dtype)
    x = torch.randn(shape, device=DEV, dtype=dtype) * 3
    with torch.no_grad():
        stock, ref = m(x), as_f64(m)(x.double())
    assert_stock_close(ops.rms_norm(x, m.weight, m.variance_epsilon), stock, ref)


def test_rms_norm_weight_promotion():
    """fp32 weight on a fp16 input: output fp32, the input-dtype rounding in between kept."""
    m = make_norm(LlamaRMSNorm, 96, 1e-5, torch.float32)
    x = torch.randn(5, 96, device=DEV, dtype=torch.float16)
    with torch.no_grad():
        stock = m(x)
    out = ops.rms_norm(x, m.weight, 1e-5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, stock, atol=1e-3, rtol=1e-3)


def test_rms_norm_strided_head_view():
    """Qwen3 q_norm on q = qkv[..., :Hq*D].view(B, S, Hq, D): strided rows, no copy needed."""
    B, S, Hq, Hk, D = 2, 5, 3, 1, 64
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device=DEV)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    assert not q.is_contiguous()
    m = make_norm(Qwen3RMSNorm, D, 1e-6, torch.float32)
    with torch.no_grad():
        stock = m(q)
    out = ops.rms_norm(q, m.weight, 1e-6)
    assert out.is_contiguous()
    torch.testing.assert_close(out, stock, atol=2e-5, rtol=2e-5)
    # leading dims that cannot fold into one stride ([B, S] of a [S, B, ...] tensor): copied first
    x = torch.randn(S, B, 3, 40, device=DEV).permute(1, 0, 2, 3)
    m = make_norm(Glm4RMSNorm, 40, 1e-6, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ops.rms_norm(x, m.weight, 1e-6), m(x), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("shape", [(1, 111), (19, 4097), (3, 7, 64)])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_fused_add_rms_norm(shape, dtype):
    m = make_norm(LlamaRMSNorm, shape[-1], 1e-5, dtype)
    x, res = (torch.randn(shape, device=DEV, dtype=dtype) for _ in range(2))
    with torch.no_grad():
        h = res + x
        stock = m(h)
        ref = as_f64(m)(h.double())
    out, new_res = ops.fused_add_rms_norm(x, res, m.weight, 1e-5)
    torch.testing.assert_close(new_res, h, atol=0, rtol=0)  # one add, one rounding: exact
    assert_stock_close(out, stock, ref)


@pytest.mark.parametrize("shape", [(1, 111), (19, 4097), (2, 5, 64), (99, 40)])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_norm_add_norm_matches_glm4_sequence(shape, dtype):
    """post_self_attn_layernorm -> +residual -> post_attention_layernorm, as Glm4DecoderLayer runs it."""
    eps = 1.5625e-07  # GLM-4-9B's rms_norm_eps
    n1, n2 = make_norm(Glm4RMSNorm, shape[-1], eps, dtype), make_norm(Glm4RMSNorm, shape[-1], eps, dtype)
    x, res = torch.randn(shape, device=DEV, dtype=dtype), torch.randn(shape, device=DEV, dtype=dtype)
    with torch.no_grad():
        h = res + n1(x)
        stock = n2(h)
        h64 = res.double() + as_f64(n1)(x.double())
        ref = as_f64(n2)(h64)
    out, new_res = ops.norm_add_norm(x, res, n1.weight, n2.weight, eps)
    assert_stock_close(new_res, h, h64)
    assert_stock_close(out, stock, ref)


def test_plain_torch_fallback(monkeypatch):
    """Where Triton cannot run (CPU without TRITON_INTERPRET=1), every op computes with torch."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, res = torch.randn(3, 50), torch.randn(3, 50)
    n1, n2 = make_norm(Glm4RMSNorm, 50, 1e-6, torch.float32, "cpu"), make_norm(Glm4RMSNorm, 50, 1e-6, torch.float32, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(ops.rms_norm(x, n1.weight, 1e-6), n1(x))
        out, h = ops.fused_add_rms_norm(x, res, n1.weight, 1e-6)
        torch.testing.assert_close(h, x + res)
        torch.testing.assert_close(out, n1(x + res))
        out, h = ops.norm_add_norm(x, res, n1.weight, n2.weight, 1e-6)
        torch.testing.assert_close(h, res + n1(x))
        torch.testing.assert_close(out, n2(res + n1(x)))


def test_empty_rows():
    w = torch.ones(16, device=DEV)
    assert ops.rms_norm(torch.empty(0, 16, device=DEV), w, 1e-6).shape == (0, 16)
    out, h = ops.norm_add_norm(torch.empty(2, 0, 16, device=DEV), torch.empty(2, 0, 16, device=DEV), w, w, 1e-6)
    assert out.shape == h.shape == (2, 0, 16)


def test_wrappers_trace_under_compile(monkeypatch):
    """The wrappers trace whole (fullgraph, dynamic shapes) on strided head views; run on the
    plain-torch fallback because the interpreter cannot run under fake tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    B, S, Hq, D = 2, 5, 4, 32
    w, w1, w2 = torch.randn(D), torch.randn(Hq * D), torch.randn(Hq * D)

    def step(qkv, res):
        q = qkv[..., : Hq * D].view(B, S, Hq, D)
        out, h = ops.norm_add_norm(qkv[..., : Hq * D], res, w1, w2, 1e-6)
        return ops.rms_norm(q, w, 1e-6), out, h

    qkv, res = torch.randn(B, S, 3 * Hq * D), torch.randn(B, S, Hq * D)
    eager = step(qkv, res)
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")(qkv, res)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def _opcheck_args():
    x, res = torch.randn(3, 5, 37, device=DEV), torch.randn(3, 5, 37, device=DEV)
    w1, w2 = torch.randn(37, device=DEV), torch.randn(37, device=DEV)
    return [(torch.ops.autoglm.rms_norm, (x, w1, 1e-6)),
            (torch.ops.autoglm.rms_norm, (x.half(), w1, 1e-6)),  # promoted output dtype
            (torch.ops.autoglm.fused_add_rms_norm, (x, res, w1, 1e-6)),
            (torch.ops.autoglm.norm_add_norm, (x, res, w1, w2, 1e-6))]


def test_opcheck_cpu():
    for op, args in _opcheck_args():
        torch.library.opcheck(op, args, test_utils=CPU_OPCHECK)


def test_errors():
    x, w = torch.randn(4, 64), torch.randn(64)
    with pytest.raises(TypeError, match="dtype"):
        ops.rms_norm(x.to(torch.int32), w, 1e-6)
    with pytest.raises(ValueError, match=r"weight must be \[64\]"):
        ops.rms_norm(x, torch.randn(63), 1e-6)
    with pytest.raises(ValueError, match="1 dims"):
        ops.rms_norm(x, torch.randn(1, 64), 1e-6)
    with pytest.raises(ValueError, match="device"):
        ops.rms_norm(x, w.to("meta"), 1e-6)
    with pytest.raises(ValueError, match="contiguous last dim"):
        ops.rms_norm(torch.randn(64, 4).t(), w, 1e-6)
    with pytest.raises(ValueError, match="hidden size"):
        ops.rms_norm(torch.randn(1, ops.NORM_MAX_HIDDEN + 1), torch.randn(ops.NORM_MAX_HIDDEN + 1), 1e-6)
    with pytest.raises(ValueError, match="eps"):
        ops.rms_norm(x, w, -1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.rms_norm(x.tolist(), w, 1e-6)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        ops.fused_add_rms_norm(x, torch.randn(4, 65), w, 1e-6)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.fused_add_rms_norm(x, x.half(), w, 1e-6)
    with pytest.raises(TypeError, match="weight1"):
        ops.norm_add_norm(x.half(), x.half(), w, w, 1e-6)
    with pytest.raises(ValueError, match=r"weight2 must be \[64\]"):
        ops.norm_add_norm(x, x, w, torch.randn(32), 1e-6)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hidden", [2048, 4096, 4097, 111, 16384])
@pytest.mark.parametrize("rows", [1, 16, 99, 4096])
def test_gpu_all_ops_vs_stock(dtype, hidden, rows):
    eps = 1e-5
    n1, n2 = make_norm(Glm4RMSNorm, hidden, eps, dtype), make_norm(Glm4RMSNorm, hidden, eps, dtype)
    x, res = torch.randn(rows, hidden, device="cuda", dtype=dtype), torch.randn(rows, hidden, device="cuda", dtype=dtype)
    f1, f2 = as_f64(n1), as_f64(n2)
    with torch.no_grad():
        assert_stock_close(ops.rms_norm(x, n1.weight, eps), n1(x), f1(x.double()))
        out, h = ops.fused_add_rms_norm(x, res, n1.weight, eps)
        torch.testing.assert_close(h, res + x, atol=0, rtol=0)
        assert_stock_close(out, n1(res + x), f1((res + x).double()))
        out, h = ops.norm_add_norm(x, res, n1.weight, n2.weight, eps)
        h_stock = res + n1(x)
        h64 = res.double() + f1(x.double())
        assert_stock_close(h, h_stock, h64)
        assert_stock_close(out, n2(h_stock), f2(h64))
        # stock's roundings (n1's output, then the add): only a reduction order may move one, rarely;
        # the add fused with n1's weight multiply into one half FMA (as LLVM compiled it before
        # stock_round) rounds once where stock rounds twice
        moved = int((h != h_stock).sum())
        assert moved <= max(2, 0.01 * h.numel()), f"new residual: {moved} of {h.numel()} elements differ from stock's"


@pytest.mark.gpu
def test_gpu_qk_norm_strided_bf16():
    B, S, Hq, Hk, D = 2, 33, 32, 8, 128
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device="cuda", dtype=torch.bfloat16)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    m = make_norm(Qwen3RMSNorm, D, 1e-6, torch.bfloat16)
    with torch.no_grad():
        assert_stock_close(ops.rms_norm(q, m.weight, 1e-6), m(q), as_f64(m)(q.double()))


@pytest.mark.gpu
def test_gpu_opcheck_full():
    for op, args in _opcheck_args():
        torch.library.opcheck(op, args)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    w1, w2 = torch.randn(4096, device="cuda", dtype=torch.bfloat16), torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    want = ops.norm_add_norm(x, res, w1, w2, 1e-5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.norm_add_norm(x, res, w1, w2, 1e-5)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        got = ops.norm_add_norm(x, res, w1, w2, 1e-5)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(got[0], want[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)
