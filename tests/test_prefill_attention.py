"""autoglm::prefill_attention (triton/prefill_attention.py) and the dispatching ops.prefill_attention
against an fp32 SDPA reference.

The reference repeats K/V explicitly and builds the boolean mask from the op's semantics with plain
loops: query i sees key j iff (not causal or j <= L - S + i) and kv_mask[b, j] != 0. Low-precision
results must stay within 2x the stock SDPA error at the same precision. On CPU the kernel runs in
the Triton interpreter with small tiles (fp32/fp16, small shapes); bf16 and long prompts are GPU tests.
"""

import pytest
import torch

from autoglm_kernels import ops
from references import assert_within_stock_error, random_qkv, sdpa_reference

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
# The unmarked tests run on DEV: in fp32 through the Triton interpreter on CPU, in fp16 on a GPU
# (the op takes only 16-bit tensors there).
FLOAT = torch.float32 if DEV == "cpu" else torch.float16


def _allowed(B, S, L, causal, kv_mask):
    allowed = torch.ones(B, S, L, dtype=torch.bool)
    if causal:
        for i in range(S):
            allowed[:, i, L - S + i + 1:] = False
    if kv_mask is not None:
        allowed &= kv_mask[:, None, :L].cpu() != 0
    return allowed


def _check(q, k, v, kv_mask=None, scale=None, causal=True, impl="triton"):
    out = ops.prefill_attention(q, k, v, kv_mask, scale, causal, impl=impl)
    B, S, Hq, D = q.shape
    assert out.shape == (B, S, Hq, D) and out.dtype == q.dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    allowed = _allowed(B, S, k.shape[2], causal, kv_mask)
    assert_within_stock_error(out, q, k, v, allowed, D**-0.5 if scale is None else scale)
    return out


def _inputs(B, S, L, Hq, Hk, D, dtype, device=DEV):
    return random_qkv(B, S, L, Hq, Hk, D, dtype, device)


def _left_pad_mask(B, L, pads, device=DEV):
    m = torch.ones(B, L, dtype=torch.int64, device=device)
    for b, p in enumerate(pads):
        m[b, :p] = 0
    return m


# (B, S, L, Hq, Hk, D, causal, left pads or None)
CPU_CASES = [
    (1, 1, 1, 2, 1, 64, True, None),
    (1, 3, 3, 4, 2, 128, True, None),
    (2, 37, 37, 4, 2, 64, True, [0, 5]),
    (1, 97, 97, 2, 1, 64, True, None),  # several 32-row query tiles, diagonal tiles
    (3, 20, 97, 4, 4, 64, True, [0, 90, 96]),  # KV prefix; row 2 has 1 real key; padding queries see none
    (2, 33, 70, 6, 2, 64, False, None),
    (2, 16, 16, 2, 2, 128, False, [3, 16]),  # a fully padded sequence
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] if DEV == "cpu" else [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}_S{}_L{}_H{}-{}_D{}_causal{}".format(*c[:7]))
def test_matches_reference(case, dtype):
    B, S, L, Hq, Hk, D, causal, pads = case
    q, k, v = _inputs(B, S, L, Hq, Hk, D, dtype)
    kv_mask = _left_pad_mask(B, L, pads) if pads else None
    out = _check(q, k, v, kv_mask, causal=causal)
    for b, p in enumerate(pads or []):  # queries that see only padding give exact zeros
        blind = S if p >= L else (min(S, max(0, p - (L - S))) if causal else 0)
        if blind:
            assert out[b, :blind].abs().max().item() == 0


def test_views_bool_mask_scale():
    """q as a slice of a fused qkv output, K/V as [B, L, Hk, D] buffers viewed [B, Hk, L, D],
    a bool mask wider than L, custom scale."""
    B, S, L, Hq, Hk, D = 2, 19, 40, 4, 2, 64
    qkv = torch.randn(B, S, (Hq + 2 * Hk) * D, device=DEV, dtype=FLOAT)
    q = qkv[..., : Hq * D].view(B, S, Hq, D)
    k = torch.randn(B, L, Hk, D, device=DEV, dtype=FLOAT).transpose(1, 2)
    v = torch.randn(B, L, Hk, D, device=DEV, dtype=FLOAT).transpose(1, 2)
    kv_mask = torch.ones(B, L + 9, dtype=torch.bool, device=DEV)
    kv_mask[1, :7] = False
    _check(q, k, v, kv_mask, scale=0.2)


@pytest.mark.parametrize("impl", ["sdpa", "auto"])
def test_dispatch_paths_agree(impl):
    q, k, v = _inputs(2, 24, 24, 4, 2, 64, FLOAT)
    for causal in (True, False):
        _check(q, k, v, causal=causal, impl=impl)
    _check(*_inputs(1, 5, 9, 4, 2, 64, FLOAT), impl="auto")  # KV prefix: auto takes the kernel


def test_cpu_fallback_without_interpreter(monkeypatch):
    if HAS_CUDA:
        pytest.skip("the plain-torch fallback is for CPU tensors")
    q, k, v = _inputs(2, 10, 30, 4, 2, 64, torch.float32)
    kv_mask = _left_pad_mask(2, 30, [0, 25])
    kernel = ops.prefill_attention(q, k, v, kv_mask, impl="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.testing.assert_close(ops.prefill_attention(q, k, v, kv_mask, impl="triton"), kernel, atol=2e-5, rtol=1e-5)


def test_opcheck_cpu():
    q, k, v = _inputs(2, 9, 20, 4, 2, 64, torch.float32)
    args = (q, k, v, _left_pad_mask(2, 20, [0, 3]), 0.125, True)
    torch.library.opcheck(torch.ops.autoglm.prefill_attention.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def _bad(**over):
    base = dict(q=torch.randn(1, 4, 4, 64), k=torch.randn(1, 2, 8, 64), v=torch.randn(1, 2, 8, 64))
    base.update(over)
    return base


@pytest.mark.parametrize("kwargs, exc, match", [
    (_bad(q=torch.randn(1, 4, 4, 80), k=torch.randn(1, 2, 8, 80), v=torch.randn(1, 2, 8, 80)), ValueError, "head_dim"),
    (_bad(v=torch.randn(1, 2, 8, 64, dtype=torch.bfloat16)), TypeError, "dtype"),
    (_bad(k=torch.randn(1, 2, 8, 64, device="meta")), ValueError, "device"),
    (_bad(k=torch.randn(1, 3, 8, 64), v=torch.randn(1, 3, 8, 64)), ValueError, "multiple of KV heads"),
    (_bad(q=torch.randn(1, 9, 4, 64)), ValueError, "L >= S"),
    (_bad(k=torch.randn(1, 2, 8, 128)[..., ::2]), ValueError, "contiguous last dim"),
    (_bad(kv_mask=torch.ones(1, 7, dtype=torch.bool)), ValueError, "cover all"),
    (_bad(kv_mask=torch.ones(8, dtype=torch.bool)), ValueError, "2 dims"),
    (_bad(kv_mask=torch.ones(1, 8, dtype=torch.bool), impl="sdpa"), ValueError, "impl='sdpa'"),
    (_bad(impl="flash"), ValueError, "impl must be"),
    (_bad(q=torch.randn(1, 0, 4, 64)), ValueError, "empty"),
])
def test_bad_input_raises(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.prefill_attention(**kwargs)


# ------------------------------------------------------------------------------------------------
# GPU: bf16/fp16 kernel at real head counts and long prompts, the dispatching op, full opcheck
# ------------------------------------------------------------------------------------------------
GPU_CASES = [  # (B, S, L, Hq, Hk, D, causal, left pads or None)
    (1, 1, 1, 32, 2, 128, True, None),
    (1, 97, 97, 32, 2, 128, True, None),
    (1, 1025, 1025, 32, 8, 128, True, None),
    (1, 2048, 2048, 32, 2, 128, True, None),
    (1, 300, 1337, 32, 2, 128, True, None),  # chunked prefill over a cache prefix
    (1, 1100, 2000, 32, 8, 128, True, None),  # the same with 128 x 128 tiles (launch_config)
    (2, 1100, 1100, 32, 2, 128, True, [0, 300]),  # left-padded batch, 128 x 128 tiles
    (3, 513, 513, 32, 8, 64, True, [0, 100, 512]),  # left-padded batch, d 64
    (2, 129, 200, 16, 2, 128, False, [0, 199]),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}_S{}_L{}_H{}-{}_D{}_causal{}".format(*c[:7]))
def test_gpu_kernel_matches_reference(case, dtype):
    B, S, L, Hq, Hk, D, causal, pads = case
    q, k, v = _inputs(B, S, L, Hq, Hk, D, dtype, "cuda")
    kv_mask = _left_pad_mask(B, L, pads, "cuda") if pads else None
    _check(q, k, v, kv_mask, causal=causal, impl="triton")
    if kv_mask is None and (S == L or not causal):
        _check(q, k, v, kv_mask, causal=causal, impl="sdpa")
    _check(q, k, v, kv_mask, causal=causal, impl="auto")


@pytest.mark.gpu
def test_gpu_fp32_rejected():
    q, k, v = _inputs(1, 4, 4, 4, 2, 64, torch.float32, "cuda")
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        ops.prefill_attention(q, k, v)


@pytest.mark.gpu
def test_gpu_opcheck_full():
    q, k, v = _inputs(2, 77, 150, 8, 2, 128, torch.bfloat16, "cuda")
    args = (q, k, v, _left_pad_mask(2, 150, [0, 30], "cuda"), 128**-0.5, True)
    torch.library.opcheck(torch.ops.autoglm.prefill_attention.default, args)


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    q, k, v = _inputs(2, 100, 100, 32, 2, 128, torch.bfloat16, "cuda")
    kv_mask = _left_pad_mask(2, 100, [0, 10], "cuda")
    fn = torch.compile(lambda *a: ops.prefill_attention(*a, impl="triton"), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v, kv_mask), ops.prefill_attention(q, k, v, kv_mask, impl="triton"),
                               atol=1e-2, rtol=1e-2)
