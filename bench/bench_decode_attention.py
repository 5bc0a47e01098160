"""Decode attention (batch 1, one new token, bf16): transformers' SDPA path vs autoglm decode_attention.

Shapes: GLM-4-9B (32 query / 2 KV heads, d 128) and Llama-3.1-8B (32/8, d 128), L valid tokens in
1k, 4k, 8k, 32k, in two cache layouts:
  C = L   (DynamicCache: K/V hold exactly the valid tokens)
          stock_sdpa_valid: SDPA over the L tokens, no mask (flash backend, enable_gqa)
  C = 4L  (StaticCache of capacity C, L valid)
          stock_sdpa_masked_full_cache: SDPA over all C positions with the 4-D bool mask (what
          transformers does with a StaticCache); stock_sdpa_valid shown for reference
fused: ops.decode_attention over the cache with kv_lens = L (a device tensor; no mask).
Stock calls transformers' own sdpa_attention_forward, so it is whatever the installed version does.

bytes = the valid K/V (2 * Hk * L * D * 2 bytes) plus q and out, for every impl, so GB/s and % of
read bandwidth are useful bytes per second (the masked full-cache path reads 4x more).
"""

import pytest
import torch

from autoglm_kernels.models import REFERENCE_MODELS

MODELS = ("glm4-9b", "llama3.1-8b")
CONTEXTS = (1024, 4096, 8192, 32768)
CASES = [(m, L, 1, impl) for m in MODELS for L in CONTEXTS for impl in ("stock_sdpa_valid", "fused")]
CASES += [(m, L, 4, impl) for m in MODELS for L in CONTEXTS
          for impl in ("stock_sdpa_masked_full_cache", "stock_sdpa_valid", "fused")]
BASELINE = {1: "stock_sdpa_valid", 4: "stock_sdpa_masked_full_cache"}  # the group's "stock" in the report


def _heads(name):
    kw = REFERENCE_MODELS[name][1]
    return kw["num_attention_heads"], kw["num_key_value_heads"], kw["head_dim"]


@pytest.mark.parametrize("name,L,c_mult,impl", CASES, ids=[f"{m}-L{L}-C{c}L-{i}" for m, L, c, i in CASES])
def test_decode_attention(benchmark, bandwidth, name, L, c_mult, impl):
    from common import GraphTimer, StockAttnModule, copies_for, record
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from autoglm_kernels import ops

    torch.cuda.empty_cache()  # the previous case's rotated copies are gone; start from a clean pool
    Hq, Hk, D = _heads(name)
    B, C, dt = 1, L * c_mult, torch.bfloat16
    scale = D**-0.5
    benchmark.group = f"decode_attention {name} L={L} C={C}"
    useful = 2 * B * Hk * L * D * 2 + 2 * B * Hq * D * 2
    kv_lens = torch.full((B,), L, dtype=torch.int32, device="cuda")
    mask4d = (torch.arange(C, device="cuda") < L).view(1, 1, 1, C).expand(B, 1, 1, C)
    module = StockAttnModule(Hq // Hk)

    sets = []
    for _ in range(copies_for(useful)):
        q = torch.randn(B, 1, Hq, D, device="cuda", dtype=dt)
        k = torch.randn(B, Hk, C, D, device="cuda", dtype=dt)
        v = torch.randn(B, Hk, C, D, device="cuda", dtype=dt)
        sets.append((q, k, v))

    if impl == "fused":
        counters = torch.zeros(ops.decode_attention_counters(sets[0][0], sets[0][1]), dtype=torch.int32, device="cuda")

        def fn(q, k, v):  # a model keeps one counters workspace (patch/layers.Runtime.counters)
            return ops.decode_attention(q, k, v, kv_lens, scale=scale, counters=counters)
    elif impl == "stock_sdpa_valid":
        def fn(q, k, v):
            return sdpa_attention_forward(module, q.transpose(1, 2), k[:, :, :L], v[:, :, :L], None,
                                          scaling=scale, is_causal=True)[0]
    else:
        def fn(q, k, v):
            return sdpa_attention_forward(module, q.transpose(1, 2), k, v, mask4d, scaling=scale, is_causal=True)[0]

    q, k, v = sets[0]  # both paths answer the same question
    ref = ops.decode_attention(q, k, v, kv_lens, scale=scale).float()
    assert (fn(q, k, v).float() - ref).abs().max().item() < 2e-2

    timer = GraphTimer(fn, sets)
    record(benchmark, timer, impl="stock" if impl == BASELINE[c_mult] else impl, bandwidth=bandwidth,
           bytes_moved=useful, flops=4 * B * Hq * L * D, variant=impl, model=name, L=L, C=C, Hq=Hq, Hk=Hk, D=D)
