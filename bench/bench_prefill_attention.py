"""Prefill attention (bf16, causal, GLM-4-9B heads: 32 query / 2 KV, d 128): transformers' SDPA path
vs the Triton flash kernel vs the dispatching op, for prompts of 512, 2048, 8192 tokens (batch 1,
no padding: SDPA's flash backend applies), plus one left-padded batch (B=2, S=2048: transformers
must pass a mask, so SDPA leaves the flash backend and repeats K/V).

impls: stock (transformers' sdpa_attention_forward), fused_triton (ops.prefill_attention
impl="triton"), dispatch (impl="auto": see PREFILL_SDPA_MIN_TOKENS in autoglm_kernels/ops.py;
these figures are what that policy is set from). TFLOP/s counts the causal half: 2 * 2 * B * Hq *
D * S * L / 2 flops. The three impls of a case are timed together in alternating replays.
"""

import pytest
import torch

from autoglm_kernels.models import REFERENCE_MODELS

MODEL = "glm4-9b"
IMPLS = ("stock", "fused_triton", "dispatch")
CASES = [(1, S, 0, impl) for S in (512, 2048, 8192) for impl in IMPLS]
CASES += [(2, 2048, 300, impl) for impl in IMPLS]  # row 1 left-padded by 300


def _case(B, S, pad):
    """Every impl's graph timer for one case, each checked against the Triton kernel, and the
    case's figures (timed together by common.paired_case: compute-bound, so clock drift matters)."""
    from common import GraphTimer, StockAttnModule, copies_for
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from autoglm_kernels import ops

    kw = REFERENCE_MODELS[MODEL][1]
    Hq, Hk, D = kw["num_attention_heads"], kw["num_key_value_heads"], kw["head_dim"]
    L, dt, scale = S, torch.bfloat16, D**-0.5
    nbytes = 2 * B * (2 * Hq * S + 2 * Hk * L) * D  # q, out, k, v
    module = StockAttnModule(Hq // Hk)
    kv_mask = mask4d = None
    if pad:
        kv_mask = torch.ones(B, L, dtype=torch.int64, device="cuda")
        kv_mask[1, :pad] = 0
        causal = torch.ones(S, L, dtype=torch.bool, device="cuda").tril(L - S)
        mask4d = (causal[None] & (kv_mask[:, None, :] != 0))[:, None]  # transformers' 4-D bool sdpa mask

    sets = []
    for _ in range(copies_for(nbytes)):
        q = torch.randn(B, S, Hq, D, device="cuda", dtype=dt)
        k = torch.randn(B, Hk, L, D, device="cuda", dtype=dt)
        v = torch.randn(B, Hk, L, D, device="cuda", dtype=dt)
        sets.append((q, k, v))

    def stock(q, k, v):
        return sdpa_attention_forward(module, q.transpose(1, 2), k, v, mask4d, scaling=scale, is_causal=True)[0]

    def ours(mode):
        return lambda q, k, v: ops.prefill_attention(q, k, v, kv_mask, scale, True, impl=mode)

    fns = {"stock": stock, "fused_triton": ours("triton"), "dispatch": ours("auto")}
    q, k, v = sets[0]
    ref = ops.prefill_attention(q, k, v, kv_mask, scale, True, impl="triton").float()
    for impl, fn in fns.items():
        got = fn(q, k, v).float()
        if pad:  # padding queries: stock gives softmax over nothing (garbage or NaN); compare real rows only
            got, ref_rows = got[:, pad:], ref[:, pad:]
        else:
            ref_rows = ref
        assert (got - ref_rows).abs().max().item() < 3e-2, impl

    timers = {impl: GraphTimer(fn, sets) for impl, fn in fns.items()}
    info = dict(bytes_moved=nbytes, flops=2 * 2 * B * Hq * D * S * L // 2, model=MODEL, B=B, S=S, L=L, pad=pad,
                Hq=Hq, Hk=Hk, D=D)
    return timers, info


@pytest.mark.parametrize("B,S,pad,impl", CASES, ids=[f"B{b}-S{s}-pad{p}-{i}" for b, s, p, i in CASES])
def test_prefill_attention(benchmark, bandwidth, B, S, pad, impl):
    from common import paired_case, record

    timers, us, info = paired_case(("prefill_attention", B, S, pad), lambda: _case(B, S, pad))
    benchmark.group = f"prefill_attention {MODEL} B={B} S={S}" + (f" left-padded {pad}" if pad else "")
    record(benchmark, timers[impl], impl=impl, bandwidth=bandwidth, us=us[impl], timing="paired", **info)
