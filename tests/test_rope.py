"""apply_rope_ against the transformers functions themselves: llama (full rotate_half), phi3
(partial rotate_half), glm4 (partial interleaved), glm4v (GLM-4.1V mrope, merged cos from the
text rotary module), and transformers 4.x's 4-D multimodal cos form. cos/sin come from the
models' rotary embedding modules where they exist. q/k are views into one fused qkv tensor, as
the patched attention passes them; the stock function runs on [B, H, S, D] views as the model
calls it.

In fp16/bf16 the kernel rounds where stock does, so it must equal stock bit for bit (and meet the
2x-stock-error rule). CPU: the kernel in the interpreter (fp32 tight, fp16 exact), the plain-torch
fallback, opcheck, input errors. GPU: bf16/fp16 at model shapes, CUDA-graph capture, full opcheck,
torch.compile over qkv views.
"""

import sys

import pytest
import torch
from transformers import Glm4Config, Glm4vTextConfig, LlamaConfig
from transformers.models.glm4.modeling_glm4 import Glm4RotaryEmbedding
from transformers.models.glm4.modeling_glm4 import apply_rotary_pos_emb as glm4_rope
from transformers.models.glm4v.modeling_glm4v import Glm4vTextRotaryEmbedding
from transformers.models.glm4v.modeling_glm4v import apply_rotary_pos_emb as glm4v_rope
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_rope

from autoglm_kernels import ops

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CPU_OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor")
# bf16 is GPU-only: the interpreter truncates fp32 -> bf16 instead of rounding to nearest
CPU_DTYPES = [torch.float32, torch.float16]


def rope_params(partial=1.0, mrope=None):
    p = {"rope_type": "default", "rope_theta": 10000.0}
    if partial != 1.0:
        p["partial_rotary_factor"] = partial
    if mrope is not None:
        p["mrope_section"] = list(mrope)
    return p


def positions(B, S, streams=None, device=None):
    """Random increasing positions [B, S] (or [3, B, S] with distinct t/h/w streams), on `device`
    or DEV as it is at call time (test_plain_torch_fallback sets it to the CPU)."""
    start = torch.randint(0, 3000, (B, 1))
    pos = start + torch.arange(S)
    if streams:
        pos = torch.stack([pos, pos + torch.randint(0, 50, (B, S)), pos + torch.randint(0, 50, (B, S))])
    return pos.to(device or DEV)


def llama_cos_sin(B, S, Hq, D, dtype):
    cfg = LlamaConfig(hidden_size=Hq * D, num_attention_heads=Hq, head_dim=D, rope_parameters=rope_params())
    x = torch.empty(1, device=DEV, dtype=dtype)
    return LlamaRotaryEmbedding(cfg).to(DEV)(x, positions(B, S))


def glm4_cos_sin(B, S, Hq, D, dtype):
    cfg = Glm4Config(hidden_size=Hq * D, num_attention_heads=Hq, head_dim=D, rope_parameters=rope_params(0.5))
    x = torch.empty(1, device=DEV, dtype=dtype)
    return Glm4RotaryEmbedding(cfg).to(DEV)(x, positions(B, S))


def glm4v_cos_sin(B, S, Hq, D, dtype, mrope):
    cfg = Glm4vTextConfig(hidden_size=Hq * D, num_attention_heads=Hq, rope_parameters=rope_params(0.5, mrope))
    x = torch.empty(1, device=DEV, dtype=dtype)
    return Glm4vTextRotaryEmbedding(cfg).to(DEV)(x, positions(B, S, streams=True))


def random_cos_sin(B, S, R, dtype, streams=0):
    """cat(angles, angles) as every rotary module builds them; [3, B, S, R] when streams."""
    shape = (3, B, S, R // 2) if streams else (B, S, R // 2)
    ang = torch.rand(shape, device=DEV) * 100
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def legacy_merge(cos, sin, mrope_section):
    """transformers 4.x apply_multimodal_rotary_pos_emb's first step: [3, B, S, R] -> [B, S, R]."""
    sec = list(mrope_section) * 2
    merge = lambda t: torch.cat([m[i % 3] for i, m in enumerate(t.split(sec, dim=-1))], dim=-1)  # noqa: E731
    return merge(cos), merge(sin)


def assert_stock_close(out, stock, ref, *, slack=2.0):
    """fp32: tight; fp16/bf16: max error vs the float64 reference <= slack x stock's error (+ eps)."""
    assert out.dtype == stock.dtype and out.shape == stock.shape
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
        return
    err = (out.double() - ref).abs().max().item()
    stock_err = (stock.double() - ref).abs().max().item()
    tiny = torch.finfo(out.dtype).eps * ref.abs().max().item()
    assert err <= slack * stock_err + tiny, f"kernel error {err:.3g} > {slack} x stock error {stock_err:.3g}"


def check_against(stock_fn, cos, sin, B, S, Hq, Hk, D, dtype, *, interleaved, mrope_section=None,
                  stock_cos=None, stock_sin=None):
    """Rotate q/k views of one qkv tensor in place; compare with stock_fn on [B, H, S, D] views."""
    stock_cos = cos if stock_cos is None else stock_cos
    stock_sin = sin if stock_sin is None else stock_sin
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device=DEV, dtype=dtype)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)
    before = qkv.clone()
    q_stock, k_stock = stock_fn(q.transpose(1, 2), k.transpose(1, 2), stock_cos, stock_sin)
    q_ref, k_ref = stock_fn(q.transpose(1, 2).double(), k.transpose(1, 2).double(), stock_cos.double(),
                            stock_sin.double())
    ops.apply_rope_(q, k, cos, sin, interleaved=interleaved, mrope_section=mrope_section)
    assert_stock_close(q, q_stock.transpose(1, 2), q_ref.transpose(1, 2))
    assert_stock_close(k, k_stock.transpose(1, 2), k_ref.transpose(1, 2))
    if dtype != torch.float32:  # the kernel makes stock's roundings: its values, bit for bit
        assert torch.equal(q, q_stock.transpose(1, 2)) and torch.equal(k, k_stock.transpose(1, 2))
    R = stock_cos.shape[-1]
    qkv_heads, before_heads = qkv.view(B, S, -1, D), before.view(B, S, -1, D)
    assert torch.equal(qkv_heads[..., R:], before_heads[..., R:]), "pass-through dims changed"
    assert torch.equal(qkv[..., (Hq + Hk) * D:], before[..., (Hq + Hk) * D:]), "v changed"


SHAPES = [(1, 1, 4, 2), (2, 7, 3, 1), (1, 19, 8, 8)]  # (B, S, Hq, Hk)


# ---------------------------------------------------------------------------------------------- CPU
@pytest.mark.parametrize("B,S,Hq,Hk", SHAPES)
@pytest.mark.parametrize("D", [64, 128, 38])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_llama_full_rotary(B, S, Hq, Hk, D, dtype):
    cos, sin = llama_cos_sin(B, S, Hq, D, dtype)
    check_against(llama_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=False)


@pytest.mark.parametrize("B,S,Hq,Hk", SHAPES)
@pytest.mark.parametrize("D,R", [(64, 32), (128, 64), (36, 18), (66, 2)])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_partial_half_split(B, S, Hq, Hk, D, R, dtype):
    cos, sin = random_cos_sin(B, S, R, dtype)
    check_against(phi3_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=False)


@pytest.mark.parametrize("B,S,Hq,Hk", SHAPES)
@pytest.mark.parametrize("D", [64, 128, 36])  # R = D/2: 32, 64, 18 (9 frequencies)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_glm4_partial_interleaved(B, S, Hq, Hk, D, dtype):
    cos, sin = glm4_cos_sin(B, S, Hq, D, dtype)
    assert cos.shape[-1] == D // 2
    check_against(glm4_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=True)


def test_glm4_full_rotary_interleaved():
    cos, sin = random_cos_sin(2, 5, 64, torch.float32)
    check_against(glm4_rope, cos, sin, 2, 5, 4, 2, 64, torch.float32, interleaved=True)


@pytest.mark.parametrize("B,S,Hq,Hk", SHAPES)
@pytest.mark.parametrize("D,mrope", [(32, [2, 3, 3]), (128, [8, 12, 12]), (64, [0, 10, 6])])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_glm4v_mrope_merged(B, S, Hq, Hk, D, mrope, dtype):
    """GLM-4.1V text decoder (transformers 5.x): the rotary module merges t/h/w and interleaves."""
    cos, sin = glm4v_cos_sin(B, S, Hq, D, dtype, mrope)
    assert cos.shape == (B, S, D // 2)
    check_against(glm4v_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=True, mrope_section=mrope)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_legacy_4d_mrope(interleaved, dtype):
    """transformers 4.x form: cos [3, B, S, R]; the kernel picks the stream per frequency."""
    B, S, Hq, Hk, D, mrope = 2, 6, 4, 2, 64, [4, 6, 6]
    cos, sin = random_cos_sin(B, S, 32 if interleaved else 64, dtype, streams=3)
    mc, ms = legacy_merge(cos, sin, mrope if interleaved else [8, 12, 12])
    stock = glm4_rope if interleaved else llama_rope
    check_against(stock, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=interleaved,
                  mrope_section=mrope if interleaved else [8, 12, 12], stock_cos=mc, stock_sin=ms)


@pytest.mark.parametrize("interleaved", [True, False])
def test_cos_batch_broadcast(interleaved):
    """cos/sin [1, S, R] (positions shared by the batch) apply to every sequence."""
    B, S, Hq, Hk, D = 3, 4, 4, 2, 32
    cos, sin = random_cos_sin(1, S, 16 if interleaved else 32, torch.float32)
    stock = glm4_rope if interleaved else llama_rope
    check_against(stock, cos, sin, B, S, Hq, Hk, D, torch.float32, interleaved=interleaved)


def test_contiguous_q_k_and_cos_views():
    """Separate contiguous q/k and non-contiguous cos/sin (a slice of a wider table)."""
    B, S, Hq, Hk, D = 2, 5, 4, 2, 32
    q, k = torch.randn(B, S, Hq, D, device=DEV), torch.randn(B, S, Hk, D, device=DEV)
    table_c, table_s = random_cos_sin(B, S, 2 * D, torch.float32)
    cos, sin = table_c[..., :D], table_s[..., :D]
    assert not cos.is_contiguous()
    qs, ks = llama_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    ops.apply_rope_(q, k, cos, sin, interleaved=False)
    torch.testing.assert_close(q, qs.transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, ks.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "glm4", "glm4v", "legacy"])
def test_plain_torch_fallback(monkeypatch, kind):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(sys.modules[__name__], "DEV", "cpu")  # helpers read DEV at call time
    B, S, Hq, Hk, D = 2, 3, 4, 2, 32
    if kind == "llama":
        cos, sin = llama_cos_sin(B, S, Hq, D, torch.float32)
        check_against(llama_rope, cos, sin, B, S, Hq, Hk, D, torch.float32, interleaved=False)
    elif kind == "glm4":
        cos, sin = glm4_cos_sin(B, S, Hq, D, torch.float32)
        check_against(glm4_rope, cos, sin, B, S, Hq, Hk, D, torch.float32, interleaved=True)
    elif kind == "glm4v":
        cos, sin = glm4v_cos_sin(B, S, Hq, D, torch.float32, [2, 3, 3])
        check_against(glm4v_rope, cos, sin, B, S, Hq, Hk, D, torch.float32, interleaved=True, mrope_section=[2, 3, 3])
    else:
        cos, sin = random_cos_sin(B, S, 16, torch.float32, streams=3)
        mc, ms = legacy_merge(cos, sin, [2, 3, 3])
        check_against(glm4_rope, cos, sin, B, S, Hq, Hk, D, torch.float32, interleaved=True,
                      mrope_section=[2, 3, 3], stock_cos=mc, stock_sin=ms)


def test_wrapper_traces_under_compile(monkeypatch):
    """apply_rope_ on qkv views traces whole (fullgraph, dynamic shapes) and functionalizes; run on
    the plain-torch fallback because the interpreter cannot run under fake tensors."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    B, S, Hq, Hk, D = 2, 5, 4, 2, 32
    cos, sin = (t.cpu() for t in random_cos_sin(B, S, 16, torch.float32))

    def step(qkv, cos, sin):
        q = qkv[..., : Hq * D].view(B, S, Hq, D)
        k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)
        ops.apply_rope_(q, k, cos, sin, interleaved=True)
        return qkv * 1

    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D)
    eager = step(qkv.clone(), cos, sin)
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")(qkv.clone(), cos, sin)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)


def _opcheck_args():
    B, S, Hq, Hk, D = 2, 3, 4, 2, 32
    q, k = torch.randn(B, S, Hq, D, device=DEV), torch.randn(B, S, Hk, D, device=DEV)
    c3, s3 = random_cos_sin(B, S, 16, torch.float32)
    c4, s4 = random_cos_sin(B, S, 32, torch.float32, streams=3)
    return [(q, k, *random_cos_sin(B, S, D, torch.float32), False, None),
            (q, k, c3, s3, True, None),
            (q, k, c3, s3, True, [2, 3, 3]),
            (q, k, c4, s4, False, [4, 6, 6])]


def test_opcheck_cpu():
    for args in _opcheck_args():
        torch.library.opcheck(torch.ops.autoglm.rope, args, test_utils=CPU_OPCHECK)


def test_errors():
    B, S, Hq, Hk, D = 1, 3, 4, 2, 32
    q, k = torch.randn(B, S, Hq, D), torch.randn(B, S, Hk, D)
    cos, sin = random_cos_sin(B, S, D, torch.float32)
    cos, sin = cos.cpu(), sin.cpu()

    def call(q=q, k=k, cos=cos, sin=sin, interleaved=False, mrope_section=None):
        ops.apply_rope_(q, k, cos, sin, interleaved=interleaved, mrope_section=mrope_section)

    with pytest.raises(ValueError, match="batch and sequence"):
        call(k=torch.randn(2, S, Hk, D))
    with pytest.raises(ValueError, match="batch and sequence"):
        call(k=torch.randn(B, S + 1, Hk, D))
    with pytest.raises(ValueError, match="head_dim"):
        call(k=torch.randn(B, S, Hk, D + 2))
    with pytest.raises(ValueError, match="4 dims"):
        call(q=torch.randn(S, Hq, D))
    with pytest.raises(TypeError, match="share one dtype"):
        call(k=k.half())
    with pytest.raises(TypeError, match="dtype"):
        call(q=q.long())
    with pytest.raises(ValueError, match="device"):
        call(cos=cos.to("meta"))
    with pytest.raises(ValueError, match="contiguous last dim"):
        call(q=torch.randn(B, S, D, Hq).transpose(-1, -2))
    with pytest.raises(ValueError, match="rotary dim"):
        call(cos=cos[..., :15], sin=sin[..., :15])  # odd
    with pytest.raises(ValueError, match="rotary dim"):
        call(cos=torch.randn(B, S, D + 2), sin=torch.randn(B, S, D + 2))  # R > D
    with pytest.raises(ValueError, match="one shape"):
        call(sin=sin[..., :16])
    with pytest.raises(ValueError, match=r"\[B=1 or 1, S=3, R\]"):
        call(cos=cos[:, :2], sin=sin[:, :2])
    with pytest.raises(ValueError, match="need"):
        call(cos=cos.expand(3, B, S, D), sin=sin.expand(3, B, S, D))  # 4-D without mrope_section
    with pytest.raises(ValueError, match="summing to R/2 = 8"):
        call(cos=cos[..., :16], sin=sin[..., :16], interleaved=True, mrope_section=[2, 3, 4])
    with pytest.raises(ValueError, match="interleaved=True"):
        call(cos=cos[..., :16], sin=sin[..., :16], mrope_section=[2, 3, 3])
    with pytest.raises(TypeError, match="bool"):
        call(interleaved=1)
    with pytest.raises(ValueError, match="same tensor"):
        call(k=q)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,S", [(1, 1), (3, 1), (1, 257), (2, 1024)])
@pytest.mark.parametrize("model", ["llama3.1-8b", "glm4-9b", "autoglm-phone-9b"])
def test_gpu_model_shapes(dtype, B, S, model):
    Hq, Hk, D = (32, 8, 128) if model == "llama3.1-8b" else (32, 2, 128)
    if model == "llama3.1-8b":
        cos, sin = llama_cos_sin(B, S, Hq, D, dtype)
        check_against(llama_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=False)
    elif model == "glm4-9b":
        cos, sin = glm4_cos_sin(B, S, Hq, D, dtype)
        check_against(glm4_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=True)
    else:
        cos, sin = glm4v_cos_sin(B, S, Hq, D, dtype, [8, 12, 12])
        check_against(glm4v_rope, cos, sin, B, S, Hq, Hk, D, dtype, interleaved=True, mrope_section=[8, 12, 12])


@pytest.mark.gpu
def test_gpu_opcheck_full():
    for args in _opcheck_args():
        torch.library.opcheck(torch.ops.autoglm.rope, args)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    B, S, Hq, Hk, D = 1, 1, 32, 2, 128
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device="cuda", dtype=torch.bfloat16)
    cos, sin = glm4_cos_sin(B, S, Hq, D, torch.bfloat16)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)
    start = qkv.clone()
    want = qkv.clone()
    ops.apply_rope_(want[..., : Hq * D].view(B, S, Hq, D), want[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D),
                    cos, sin, interleaved=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.apply_rope_(q, k, cos, sin, interleaved=True)  # warm-up (compiles)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        ops.apply_rope_(q, k, cos, sin, interleaved=True)
    qkv.copy_(start)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(qkv, want, atol=0, rtol=0)


@pytest.mark.gpu
def test_gpu_torch_compile_qkv_views():
    """Functionalization of the in-place op on two views of one base, under torch.compile."""
    B, S, Hq, Hk, D = 2, 5, 8, 2, 64
    cos, sin = glm4_cos_sin(B, S, Hq, D, torch.bfloat16)

    def step(qkv, cos, sin):
        q = qkv[..., : Hq * D].view(B, S, Hq, D)
        k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)
        ops.apply_rope_(q, k, cos, sin, interleaved=True)
        return q.transpose(1, 2) * 1, k.transpose(1, 2) * 1

    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device="cuda", dtype=torch.bfloat16)
    eager = step(qkv.clone(), cos, sin)
    compiled = torch.compile(step, fullgraph=True)(qkv.clone(), cos, sin)
    torch.testing.assert_close(compiled[0], eager[0], atol=0, rtol=0)
    torch.testing.assert_close(compiled[1], eager[1], atol=0, rtol=0)


# ------------------------------------------------------------------ rope_append_kv_ (RoPE + append)
def transformers_static_append(q, k, v, cos, sin, k_cache, v_cache, cache_len, stock_fn, stock_cos, stock_sin):
    """What the stock attention does: the model's RoPE function, then StaticLayer.update's
    arange + index_copy_ at cumulative_length (transformers' own StaticLayer)."""
    from transformers.cache_utils import StaticLayer

    B, S, Hk, D = k.shape
    layer = StaticLayer(max_cache_len=k_cache.shape[2])
    layer.lazy_initialization(k.transpose(1, 2), v.transpose(1, 2))
    layer.keys.copy_(k_cache)
    layer.values.copy_(v_cache)
    layer.cumulative_length.fill_(int(cache_len))
    q_rot, k_rot = stock_fn(q.transpose(1, 2), k.transpose(1, 2), stock_cos, stock_sin)
    layer.update(k_rot, v.transpose(1, 2))
    return q_rot.transpose(1, 2), layer.keys, layer.values, layer.cumulative_length


APPEND_CASES = [  # (B, S, Hq, Hk, D, C, start, model)
    (1, 1, 4, 2, 64, 16, 5, "glm4"), (2, 3, 6, 3, 32, 9, 0, "llama"), (1, 16, 8, 1, 128, 40, 24, "glm4"),
    (3, 2, 2, 2, 38, 7, 6, "llama"),  # odd head_dim; the last slot, and one slot past the end (skipped)
]


@pytest.mark.parametrize("B,S,Hq,Hk,D,C,start,model", APPEND_CASES)
@pytest.mark.parametrize("dtype", CPU_DTYPES if DEV == "cpu" else [torch.bfloat16, torch.float16])
def test_rope_append_kv_matches_rope_plus_static_update(B, S, Hq, Hk, D, C, start, model, dtype):
    if model == "glm4":
        cos, sin = glm4_cos_sin(B, S, Hq, D, dtype)
        stock, interleaved = glm4_rope, True
    else:
        cos, sin = llama_cos_sin(B, S, Hq, D, dtype)
        stock, interleaved = llama_rope, False
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device=DEV, dtype=dtype)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)
    v = qkv[..., (Hq + Hk) * D:].view(B, S, Hk, D)
    k_cache = torch.randn(B, Hk, C, D, device=DEV, dtype=dtype)
    v_cache = torch.randn(B, Hk, C, D, device=DEV, dtype=dtype)
    cache_len = torch.tensor(start, device=DEV)
    in_range = start + S <= C
    if in_range:
        q_want, kc_want, vc_want, len_want = transformers_static_append(
            q.clone(), k.clone(), v.clone(), cos, sin, k_cache, v_cache, cache_len, stock, cos, sin)
    kc0, vc0, k0, v0 = k_cache.clone(), v_cache.clone(), k.clone(), v.clone()
    ops.rope_append_kv_(q, k, v, cos, sin, k_cache, v_cache, cache_len, interleaved=interleaved)
    assert int(cache_len) == start + S
    assert torch.equal(k, k0) and torch.equal(v, v0), "k/v inputs must not change"
    slots = [p for p in range(start, start + S) if p < C]
    untouched = [p for p in range(C) if p not in slots]
    assert torch.equal(k_cache[:, :, untouched], kc0[:, :, untouched]), "slots outside the append changed"
    assert torch.equal(v_cache[:, :, untouched], vc0[:, :, untouched])
    assert torch.equal(v_cache[:, :, slots], v.transpose(1, 2)[:, :, : len(slots)]), "v is copied exactly"
    if in_range:  # against transformers (stock rounds in the model dtype, the kernel once from fp32)
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
        torch.testing.assert_close(k_cache, kc_want, atol=tol, rtol=tol)
        torch.testing.assert_close(v_cache, vc_want, atol=0, rtol=0)
        torch.testing.assert_close(q, q_want, atol=tol, rtol=tol)
        assert int(len_want) == int(cache_len)
    # the cached k is bit for bit what apply_rope_ makes of k (pass-through dims included)
    k_rot = k0.clone()
    ops.apply_rope_(torch.zeros_like(q), k_rot, cos, sin, interleaved=interleaved)
    assert torch.equal(k_cache[:, :, slots], k_rot.transpose(1, 2)[:, :, : len(slots)])


def test_rope_append_kv_opcheck_and_errors():
    B, S, Hq, Hk, D, C = 1, 2, 4, 2, 32, 8
    q, k, v = torch.randn(B, S, Hq, D), torch.randn(B, S, Hk, D), torch.randn(B, S, Hk, D)
    cos, sin = (t.cpu() for t in random_cos_sin(B, S, D, torch.float32))
    kc, vc = torch.zeros(B, Hk, C, D), torch.zeros(B, Hk, C, D)
    n = torch.tensor(3)
    torch.library.opcheck(torch.ops.autoglm.rope_append_kv, (q, k, v, cos, sin, kc, vc, n, False, None),
                          test_utils=CPU_OPCHECK)

    def call(k_cache=kc, v_cache=vc, cache_len=n, v=v):
        ops.rope_append_kv_(q.clone(), k, v, cos, sin, k_cache, v_cache, cache_len.clone(), interleaved=False)

    with pytest.raises(ValueError, match=r"k_cache must be \[B=1, Hk=2, capacity, D=32\]"):
        call(k_cache=torch.zeros(B, Hk + 1, C, D))
    with pytest.raises(ValueError, match="one shape"):
        call(v_cache=torch.zeros(B, Hk, C + 1, D))
    with pytest.raises(TypeError, match="cache_len has dtype"):
        call(cache_len=torch.tensor(3.0))
    with pytest.raises(ValueError, match="one count"):
        call(cache_len=torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="v must have k's shape"):
        call(v=torch.randn(B, S, Hk, D + 2))
    with pytest.raises(TypeError, match="share one dtype"):
        call(k_cache=kc.half(), v_cache=vc.half())


@pytest.mark.parametrize("counter_dtype", [torch.int64, torch.int32])
def test_append_advances_the_counter_in_its_own_launch(counter_dtype):
    """The counter advances inside the append's launch (the last program to take a ticket adds S);
    the ticket is back at zero after each launch, so a prompt and then decode steps land in
    consecutive slots, with no add kernel of their own."""
    from autoglm_kernels.triton import rope as R

    B, Hq, Hk, D, C = 2, 4, 2, 32, 16
    kc, vc = torch.zeros(B, Hk, C, D, device=DEV), torch.zeros(B, Hk, C, D, device=DEV)
    n = torch.tensor(0, dtype=counter_dtype, device=DEV)
    written = []
    for S in (5, 1, 1, 3):  # a prompt, two decode steps, a 3-token chunk
        q, k, v = (torch.randn(B, S, h, D, device=DEV) for h in (Hq, Hk, Hk))
        cos, sin = (t.to(DEV) for t in random_cos_sin(B, S, D, torch.float32))
        before = int(n)
        ops.rope_append_kv_(q, k, v, cos, sin, kc, vc, n, interleaved=False)
        assert int(n) == before + S and n.dtype == counter_dtype
        assert int(R.ticket_of(n)) == 0, "the ticket must be reset for the next launch"
        written.append((before, v))
    for start, v in written:
        assert torch.equal(vc[:, :, start:start + v.shape[1]], v.transpose(1, 2))
    ops.append_kv_(k, v, kc, vc, n)  # the no-RoPE append shares the kernel and the ticket
    assert int(n) == 13 and int(R.ticket_of(n)) == 0


def _replay_three_appends(n: torch.Tensor, append) -> None:
    """Capture append() (one cache append at counter n) in a CUDA graph with n at 5, and replay it
    three times from n = 5: each replay must append at the counter's current slot (n ends at 8)."""
    n.fill_(5)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        append()
    n.fill_(5)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    assert int(n) == 8


@pytest.mark.gpu
def test_gpu_rope_append_kv_opcheck_and_graph():
    B, S, Hq, Hk, D, C = 1, 1, 32, 2, 128, 64
    dt = torch.bfloat16
    q, k, v = (torch.randn(B, S, h, D, device="cuda", dtype=dt) for h in (Hq, Hk, Hk))
    cos, sin = glm4_cos_sin(B, S, Hq, D, dt)
    kc, vc = torch.zeros(B, Hk, C, D, device="cuda", dtype=dt), torch.zeros(B, Hk, C, D, device="cuda", dtype=dt)
    n = torch.tensor(5, device="cuda")
    torch.library.opcheck(torch.ops.autoglm.rope_append_kv, (q, k, v, cos, sin, kc, vc, n, True, None))
    kc.zero_()
    _replay_three_appends(n, lambda: ops.rope_append_kv_(q, k, v, cos, sin, kc, vc, n, interleaved=True))
    assert torch.equal(vc[:, :, 5:8], v.transpose(1, 2).expand(B, Hk, 3, D))
    assert kc[:, :, 8:].abs().sum() == 0 and kc[:, :, :5].abs().sum() == 0


# ------------------------------------------------------------------ append_kv_ (no RoPE: OPT)
@pytest.mark.parametrize("B,S,Hq,Hk,D,C,start,model", APPEND_CASES)
@pytest.mark.parametrize("dtype", CPU_DTYPES if DEV == "cpu" else [torch.bfloat16, torch.float16])
def test_append_kv_matches_static_update(B, S, Hq, Hk, D, C, start, model, dtype):
    """append_kv_ writes exactly what transformers' StaticLayer.update writes (a copy: bit for
    bit), into the slots from the counter on, skips slots past the capacity and advances the
    counter; k and v (views into a fused qkv output) are not modified."""
    from transformers.cache_utils import StaticLayer

    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device=DEV, dtype=dtype)
    k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)
    v = qkv[..., (Hq + Hk) * D:].view(B, S, Hk, D)
    k_cache = torch.randn(B, Hk, C, D, device=DEV, dtype=dtype)
    v_cache = torch.randn(B, Hk, C, D, device=DEV, dtype=dtype)
    cache_len = torch.tensor(start, device=DEV)
    kc0, vc0, qkv0 = k_cache.clone(), v_cache.clone(), qkv.clone()
    ops.append_kv_(k, v, k_cache, v_cache, cache_len)
    assert int(cache_len) == start + S and torch.equal(qkv, qkv0)
    if start + S <= C:
        layer = StaticLayer(max_cache_len=C)
        layer.lazy_initialization(k.transpose(1, 2), v.transpose(1, 2))
        layer.keys.copy_(kc0)
        layer.values.copy_(vc0)
        layer.cumulative_length.fill_(start)
        layer.update(k.transpose(1, 2), v.transpose(1, 2))
        assert torch.equal(k_cache, layer.keys) and torch.equal(v_cache, layer.values)
    slots = [p for p in range(start, start + S) if p < C]
    untouched = [p for p in range(C) if p not in slots]
    assert torch.equal(k_cache[:, :, untouched], kc0[:, :, untouched])
    assert torch.equal(k_cache[:, :, slots], k.transpose(1, 2)[:, :, : len(slots)])
    assert torch.equal(v_cache[:, :, slots], v.transpose(1, 2)[:, :, : len(slots)])


def test_append_kv_opcheck_and_errors():
    B, S, Hk, D, C = 2, 3, 2, 32, 8
    k, v = torch.randn(B, S, Hk, D), torch.randn(B, S, Hk, D)
    kc, vc = torch.zeros(B, Hk, C, D), torch.zeros(B, Hk, C, D)
    torch.library.opcheck(torch.ops.autoglm.append_kv, (k, v, kc, vc, torch.tensor(2)), test_utils=CPU_OPCHECK)
    with pytest.raises(ValueError, match=r"k_cache must be \[B=2, Hk=2, capacity, D=32\]"):
        ops.append_kv_(k, v, torch.zeros(B, Hk, C, D + 1), vc, torch.tensor(0))
    with pytest.raises(ValueError, match="v must have k's shape"):
        ops.append_kv_(k, v[:, :2], kc, vc, torch.tensor(0))
    with pytest.raises(ValueError, match="k must have 4 dims"):
        ops.append_kv_(k[0], v, kc, vc, torch.tensor(0))
    with pytest.raises(ValueError, match="contiguous last dim"):
        ops.append_kv_(k.transpose(2, 3), v.transpose(2, 3), kc, vc, torch.tensor(0))
    with pytest.raises(TypeError, match="share one dtype"):
        ops.append_kv_(k, v, kc.half(), vc.half(), torch.tensor(0))


@pytest.mark.gpu
def test_gpu_append_kv_opcheck_and_graph():
    B, S, Hk, D, C = 1, 1, 32, 64, 64  # OPT-1.3B's decode step
    dt = torch.bfloat16
    k, v = (torch.randn(B, S, Hk, D, device="cuda", dtype=dt) for _ in range(2))
    kc, vc = torch.zeros(B, Hk, C, D, device="cuda", dtype=dt), torch.zeros(B, Hk, C, D, device="cuda", dtype=dt)
    n = torch.tensor(5, device="cuda")
    torch.library.opcheck(torch.ops.autoglm.append_kv, (k, v, kc, vc, n))
    kc.zero_()
    vc.zero_()
    _replay_three_appends(n, lambda: ops.append_kv_(k, v, kc, vc, n))
    assert torch.equal(kc[:, :, 5:8], k.transpose(1, 2).expand(B, Hk, 3, D))
    assert torch.equal(vc[:, :, 5:8], v.transpose(1, 2).expand(B, Hk, 3, D))
    assert kc[:, :, 8:].abs().sum() == 0 and kc[:, :, :5].abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# rope_tables: the rotary embedding module's (cos, sin) in one launch
# ---------------------------------------------------------------------------------------------
def _rotary_modules(device):
    """Standard rotary modules: Llama (default and llama3 scaling), GLM-4 (partial, head_dim 128)."""
    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return [
        LlamaRotaryEmbedding(LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                                         rope_parameters=rope_params())).to(device),
        LlamaRotaryEmbedding(LlamaConfig(hidden_size=1024, num_attention_heads=8, head_dim=128,
                                         max_position_embeddings=131072, rope_parameters=llama3)).to(device),
        Glm4RotaryEmbedding(Glm4Config(hidden_size=512, num_attention_heads=4, head_dim=128,
                                       rope_parameters=rope_params(0.5))).to(device),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rope_tables_equal_the_module(dtype):
    """Bit for bit what the module's forward returns, at positions up to 131071 (on CPU: the
    reference path, which the kernel replaces on CUDA only)."""
    torch.manual_seed(0)
    x = torch.empty(1, device=DEV, dtype=dtype)
    pos = torch.cat([positions(2, 5), torch.randint(0, 131072, (2, 3), device=DEV),
                     torch.tensor([[0, 1, 131071], [8191, 8192, 65537]], device=DEV)], dim=1)
    for mod in _rotary_modules(DEV):
        cos_ref, sin_ref = mod(x, pos)
        cos, sin = ops.rope_tables(mod.inv_freq, pos, mod.attention_scaling, dtype)
        assert cos.shape == cos_ref.shape and cos.dtype == dtype
        torch.testing.assert_close(cos, cos_ref, rtol=0, atol=0)
        torch.testing.assert_close(sin, sin_ref, rtol=0, atol=0)
        cos32, _ = ops.rope_tables(mod.inv_freq, pos.int(), mod.attention_scaling, dtype)
        torch.testing.assert_close(cos32, cos_ref, rtol=0, atol=0)


def test_rope_tables_errors_and_opcheck():
    inv, pos = torch.rand(8), torch.arange(6).view(2, 3)
    with pytest.raises(TypeError, match="position_ids"):
        ops.rope_tables(inv, pos.float(), 1.0, torch.float32)
    with pytest.raises(ValueError, match="inv_freq"):
        ops.rope_tables(inv.view(2, 4), pos, 1.0, torch.float32)
    with pytest.raises(ValueError, match="position_ids"):
        ops.rope_tables(inv, pos.view(6), 1.0, torch.float32)
    with pytest.raises(TypeError, match="dtype"):
        ops.rope_tables(inv, pos, 1.0, torch.int32)
    torch.library.opcheck(torch.ops.autoglm.rope_tables, (inv, pos, 1.0, torch.float32), test_utils=CPU_OPCHECK)


@pytest.mark.gpu
def test_gpu_rope_tables_opcheck_and_capture():
    """Full opcheck; captured in a CUDA graph, a replay follows new positions written in place."""
    inv = LlamaRotaryEmbedding(LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                                           rope_parameters=rope_params())).to("cuda").inv_freq
    pos = torch.tensor([[3]], device="cuda")
    torch.library.opcheck(torch.ops.autoglm.rope_tables, (inv, pos, 1.0, torch.bfloat16))
    ops.rope_tables(inv, pos, 1.0, torch.bfloat16)  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        cos, sin = ops.rope_tables(inv, pos, 1.0, torch.bfloat16)
    for p in (17, 4095):
        pos.fill_(p)
        g.replay()
        ref = ops.rope_tables(inv, torch.tensor([[p]], device="cuda"), 1.0, torch.bfloat16)
        assert torch.equal(cos, ref[0]) and torch.equal(sin, ref[1])
