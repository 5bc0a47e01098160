"""qkv_rope_append_: the decode qkv projection with RoPE and the static-cache append in one kernel.

Against transformers itself: the projection (F.linear, after the model's RMSNorm where the op
folds it), the models' apply_rotary_pos_emb on cos/sin from their rotary modules, and the slot
writes StaticLayer.update makes; bf16/fp16 by the 2x-stock-error rule against a float64
reference. Also: the counter advances by one inside the launch (ticket reset), a full cache takes
no write, batch rows 1..16 (both MMA column tiles), CUDA-graph replays, opcheck, the unfused
fallback (head_dim not a multiple of 16, more than one token), and input errors.
CPU: the op's CPU kernel (the composition of fused_linear, apply_rope_ and append_kv_ in the
Triton interpreter) in fp32 / fp16. GPU: the fused kernel in bf16 / fp16.
"""

import pytest
import torch
from transformers.models.glm4.modeling_glm4 import apply_rotary_pos_emb as glm4_rope
from transformers.models.glm4v.modeling_glm4v import apply_rotary_pos_emb as glm4v_rope
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope

from transformers.models.llama.modeling_llama import LlamaRMSNorm

from autoglm_kernels import ops
from autoglm_kernels.triton import rope as R

from test_rope import CPU_DTYPES, CPU_OPCHECK, DEV, assert_stock_close, glm4_cos_sin, glm4v_cos_sin, llama_cos_sin

DTYPES = CPU_DTYPES if DEV == "cpu" else [torch.bfloat16, torch.float16]
# The tests run on whichever device there is (CPU: the composition; GPU: the fused kernel); on a GPU
# machine they are its GPU tests, so `pytest -m gpu` selects them there.
pytestmark = [pytest.mark.gpu] if DEV == "cuda" else []


def tables(model, B, Hq, D, dtype):
    """(cos, sin, stock rope fn, interleaved, mrope_section) of one architecture, for one decode token."""
    if model == "llama":
        return (*llama_cos_sin(B, 1, Hq, D, dtype), llama_rope, False, None)
    if model == "glm4":
        return (*glm4_cos_sin(B, 1, Hq, D, dtype), glm4_rope, True, None)
    if model == "glm4v":
        mrope = [D // 16, D // 16 + D // 32, D // 4 - 2 * (D // 16) - D // 32]  # sums to R/2 = D/4
        return (*glm4v_cos_sin(B, 1, Hq, D, dtype, mrope), glm4v_rope, True, mrope)
    return None, None, None, False, None  # opt: no RoPE


def stock_step(x, weight, bias, norm_w, eps, cos, sin, stock_fn, Hq, Hk, D, dtype):
    """transformers' decode step up to the cache: (q [B, Hq, D], k, v [B, Hk, D]) in `dtype`."""
    h = x
    if norm_w is not None:  # the model's own RMSNorm module
        norm = LlamaRMSNorm(x.shape[-1], eps=eps).to(device=x.device, dtype=norm_w.dtype)
        norm.weight.data.copy_(norm_w)
        h = norm(x)
    qkv = torch.nn.functional.linear(h.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    B = x.shape[0]
    q = qkv[..., : Hq * D].view(B, 1, Hq, D).transpose(1, 2)
    k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, 1, Hk, D).transpose(1, 2)
    v = qkv[..., (Hq + Hk) * D:].view(B, 1, Hk, D).transpose(1, 2)
    if stock_fn is not None:
        q, k = stock_fn(q, k, cos.to(dtype), sin.to(dtype))
    return q[:, :, 0], k[:, :, 0], v[:, :, 0]


CASES = [  # (model, B, Hq, Hk, D, K, bias, norm)
    ("llama", 1, 4, 2, 64, 256, False, True), ("llama", 3, 8, 8, 128, 136, False, False),
    ("glm4", 1, 4, 1, 128, 128, True, True), ("glm4", 16, 2, 2, 64, 64, True, False),
    ("glm4v", 2, 4, 2, 128, 96, True, True), ("opt", 9, 4, 4, 64, 128, True, False),
    # full-size qkv: Llama-3.1-8B (384 blocks of 8 rotation pairs) and Llama-3.2-1B (192)
    ("llama", 1, 32, 8, 128, 4096, False, True), ("llama", 2, 32, 8, 64, 2048, False, True),
]


@pytest.mark.parametrize("model,B,Hq,Hk,D,K,bias,norm", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_transformers_decode_step(model, B, Hq, Hk, D, K, bias, norm, dtype):
    torch.manual_seed(B * 131 + D)
    C, start = 12, 7
    cos, sin, stock_fn, interleaved, mrope = tables(model, B, Hq, D, dtype)
    N = (Hq + 2 * Hk) * D
    x = torch.randn(B, 1, K, device=DEV, dtype=dtype)
    w = torch.randn(N, K, device=DEV, dtype=dtype) / K ** 0.5
    b = torch.randn(N, device=DEV, dtype=dtype) if bias else None
    nw = (1 + 0.1 * torch.randn(K, device=DEV)).to(dtype) if norm else None
    kc, vc = torch.randn(B, Hk, C, D, device=DEV, dtype=dtype), torch.randn(B, Hk, C, D, device=DEV, dtype=dtype)
    kc0, vc0 = kc.clone(), vc.clone()
    n = torch.tensor(start, device=DEV)

    qkv = ops.qkv_rope_append_(x, w, b, cos, sin, kc, vc, n, num_q_heads=Hq, interleaved=interleaved,
                               mrope_section=mrope, norm_weight=nw, norm_eps=1e-5)
    assert ops.qkv_rope_fused(x, w, cos, D) == (DEV == "cuda")
    assert qkv.shape == (B, 1, N) and int(n) == start + 1 and int(R.ticket_of(n)) == 0

    q_st, k_st, v_st = stock_step(x, w, b, nw, 1e-5, cos, sin, stock_fn, Hq, Hk, D, dtype)
    q_ref, k_ref, v_ref = stock_step(x.double(), w.double(), None if b is None else b.double(),
                                     None if nw is None else nw.double(), 1e-5, None if cos is None else cos.double(),
                                     None if sin is None else sin.double(), stock_fn, Hq, Hk, D, torch.float64)
    heads = qkv.view(B, Hq + 2 * Hk, D)
    # the RMSNorm adds two roundings ahead of the projection, which the kernel and stock may make
    # differently in the last place: 3x stock's error then, 2x without it
    slack = 3.0 if norm else 2.0
    assert_stock_close(heads[:, :Hq], q_st, q_ref, slack=slack)
    assert_stock_close(heads[:, Hq:Hq + Hk], k_st, k_ref, slack=slack)
    assert_stock_close(heads[:, Hq + Hk:], v_st, v_ref, slack=slack)
    # the caches: the returned k and v, bit for bit, at slot `start`; nothing else touched
    assert torch.equal(kc[:, :, start], heads[:, Hq:Hq + Hk]) and torch.equal(vc[:, :, start], heads[:, Hq + Hk:])
    others = [p for p in range(C) if p != start]
    assert torch.equal(kc[:, :, others], kc0[:, :, others]) and torch.equal(vc[:, :, others], vc0[:, :, others])


@pytest.mark.parametrize("B", [1, 12])
def test_full_cache_takes_no_write_and_counter_advances(B):
    Hq, Hk, D, K, C = 4, 2, 64, 64, 4
    dtype = DTYPES[-1]
    cos, sin, _, _, _ = tables("llama", B, Hq, D, dtype)
    x = torch.randn(B, 1, K, device=DEV, dtype=dtype)
    w = torch.randn((Hq + 2 * Hk) * D, K, device=DEV, dtype=dtype)
    kc, vc = torch.randn(B, Hk, C, D, device=DEV, dtype=dtype), torch.randn(B, Hk, C, D, device=DEV, dtype=dtype)
    kc0, vc0 = kc.clone(), vc.clone()
    n = torch.tensor(C, device=DEV, dtype=torch.int32)
    ops.qkv_rope_append_(x, w, None, cos, sin, kc, vc, n, num_q_heads=Hq)
    assert int(n) == C + 1 and n.dtype == torch.int32 and int(R.ticket_of(n)) == 0
    assert torch.equal(kc, kc0) and torch.equal(vc, vc0)


def test_unfused_shapes_give_the_same_result():
    """head_dim 40 (not a multiple of 16) and a 3-token chunk run the separate ops: same contract."""
    dtype = DTYPES[-1]
    for B, S, D in ((2, 1, 40), (1, 3, 64)):
        Hq, Hk, K, C = 4, 2, 64, 8
        cos, sin = llama_cos_sin(B, S, Hq, D, dtype)
        x = torch.randn(B, S, K, device=DEV, dtype=dtype)
        w = torch.randn((Hq + 2 * Hk) * D, K, device=DEV, dtype=dtype)
        kc, vc = torch.zeros(B, Hk, C, D, device=DEV, dtype=dtype), torch.zeros(B, Hk, C, D, device=DEV, dtype=dtype)
        n = torch.tensor(2, device=DEV)
        assert not ops.qkv_rope_fused(x, w, cos, D)
        qkv = ops.qkv_rope_append_(x, w, None, cos, sin, kc, vc, n, num_q_heads=Hq)
        heads = qkv.view(B, S, Hq + 2 * Hk, D)
        assert int(n) == 2 + S
        assert torch.equal(kc[:, :, 2:2 + S], heads[:, :, Hq:Hq + Hk].transpose(1, 2))
        assert torch.equal(vc[:, :, 2:2 + S], heads[:, :, Hq + Hk:].transpose(1, 2))
        plain = torch.nn.functional.linear(x, w).view(B, S, Hq + 2 * Hk, D)
        torch.testing.assert_close(heads[:, :, Hq + Hk:], plain[:, :, Hq + Hk:], atol=2e-2, rtol=2e-2)


def test_errors():
    B, Hq, Hk, D, K, C = 1, 4, 2, 64, 64, 8
    x = torch.randn(B, 1, K, device=DEV)
    w = torch.randn((Hq + 2 * Hk) * D, K, device=DEV)
    kc, vc = torch.zeros(B, Hk, C, D, device=DEV), torch.zeros(B, Hk, C, D, device=DEV)
    cos, sin, _, _, _ = tables("llama", B, Hq, D, torch.float32)
    n = torch.tensor(0, device=DEV)

    def call(**kw):
        args = dict(x=x, weight=w, bias=None, cos=cos, sin=sin, k_cache=kc, v_cache=vc, cache_len=n)
        opts = {k: kw.pop(k) for k in ("num_q_heads", "interleaved") if k in kw}
        args.update(kw)
        ops.qkv_rope_append_(**args, **{"num_q_heads": Hq, **opts})

    with pytest.raises(ValueError, match=r"weight must be \[\(Hq \+ 2 Hk\) \* D, K\] = \[512, K\]"):
        call(weight=w[:-64])
    with pytest.raises(ValueError, match="both cos and sin"):
        call(sin=None)
    with pytest.raises(ValueError, match="num_q_heads must be a positive int"):
        call(num_q_heads=0)
    with pytest.raises(ValueError, match=r"k_cache and v_cache must both be \[B=1"):
        call(v_cache=torch.zeros(B, Hk, C + 1, D, device=DEV))
    with pytest.raises(TypeError, match="cache_len has dtype"):
        call(cache_len=torch.tensor(0.0, device=DEV))
    with pytest.raises(ValueError, match="one count"):
        call(cache_len=torch.zeros(2, dtype=torch.int64, device=DEV))
    with pytest.raises(TypeError, match="share one dtype"):
        call(k_cache=kc.half(), v_cache=vc.half())
    with pytest.raises(ValueError, match="x has K=64"):
        call(weight=torch.randn((Hq + 2 * Hk) * D, K + 8, device=DEV))
    with pytest.raises(ValueError, match="x must have 3 dims"):
        call(x=x[0])
    with pytest.raises(ValueError, match="cos/sin must be"):
        call(cos=cos.new_zeros(2, 1, D), sin=sin.new_zeros(2, 1, D))
    assert int(n) == 0, "a rejected call must not advance the counter"


@pytest.mark.skipif(DEV != "cpu", reason="the CPU subset of opcheck; the GPU test runs the full one")
def test_opcheck_cpu():
    B, Hq, Hk, D, K, C = 2, 4, 2, 32, 64, 8
    cos, sin, _, _, _ = tables("llama", B, Hq, D, torch.float32)
    args = (torch.randn(B, 1, K), torch.randn((Hq + 2 * Hk) * D, K), None, torch.rand(K) + 0.5, 1e-6, cos, sin, 0,
            torch.zeros(B, Hk, C, D), torch.zeros(B, Hk, C, D), torch.tensor(3), torch.zeros(1, dtype=torch.int32), Hq)
    torch.library.opcheck(torch.ops.autoglm.qkv_rope_append, args, test_utils=CPU_OPCHECK)


@pytest.mark.gpu
def test_gpu_opcheck_full():
    B, Hq, Hk, D, K, C = 2, 4, 2, 64, 128, 8
    dt = torch.bfloat16
    cos, sin, _, _, _ = tables("glm4", B, Hq, D, dt)
    args = (torch.randn(B, 1, K, device="cuda", dtype=dt), torch.randn((Hq + 2 * Hk) * D, K, device="cuda", dtype=dt),
            torch.randn((Hq + 2 * Hk) * D, device="cuda", dtype=dt), None, 1e-6, cos, sin, 1,
            torch.zeros(B, Hk, C, D, device="cuda", dtype=dt), torch.zeros(B, Hk, C, D, device="cuda", dtype=dt),
            torch.tensor(3, device="cuda"), torch.zeros(1, dtype=torch.int32, device="cuda"), Hq)
    torch.library.opcheck(torch.ops.autoglm.qkv_rope_append, args)


@pytest.mark.gpu
def test_gpu_graph_replays_append_at_the_current_slot():
    """Captured once at slot 5, replayed three times: slots 5, 6, 7 get the step's k/v (the
    counter is read and advanced on the device), the counter ends at 8."""
    B, Hq, Hk, D, K, C = 1, 32, 2, 128, 4096, 16
    dt = torch.bfloat16
    cos, sin, _, _, _ = tables("glm4", B, Hq, D, dt)
    x = torch.randn(B, 1, K, device="cuda", dtype=dt)
    w = torch.randn((Hq + 2 * Hk) * D, K, device="cuda", dtype=dt) / 64
    nw = torch.ones(K, device="cuda", dtype=dt)
    kc, vc = torch.zeros(B, Hk, C, D, device="cuda", dtype=dt), torch.zeros(B, Hk, C, D, device="cuda", dtype=dt)
    n = torch.tensor(5, device="cuda")
    run = lambda: ops.qkv_rope_append_(x, w, None, cos, sin, kc, vc, n, num_q_heads=Hq, interleaved=True,  # noqa: E731
                                       norm_weight=nw)
    want = run()  # warm-up (and the expected output), at slot 5
    n.fill_(5)
    kc.zero_()
    vc.zero_()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = run()
    n.fill_(5)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    assert int(n) == 8 and int(R.ticket_of(n)) == 0
    assert torch.equal(out, want)
    heads = want.view(B, Hq + 2 * Hk, D)
    for slot in (5, 6, 7):
        assert torch.equal(kc[:, :, slot], heads[:, Hq:Hq + Hk]) and torch.equal(vc[:, :, slot], heads[:, Hq + Hk:])
    assert kc[:, :, 8:].abs().sum() == 0 and kc[:, :, :5].abs().sum() == 0
