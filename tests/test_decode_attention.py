"""autoglm::decode_attention (triton/decode_attention.py) against an fp32 SDPA reference.

The reference repeats K/V explicitly and builds the boolean mask from the op's semantics with
plain loops: query i of sequence b sees key j iff j < min(kv_len, C) - Sq + i + 1 and kv_mask[b, j]
!= 0. Low-precision results must stay within 2x the stock SDPA error at the same precision.
On CPU the kernel runs in the Triton interpreter (fp32/fp16, small shapes); bf16 and the real
model shapes are GPU tests.
"""

import pytest
import torch

from autoglm_kernels import ops
from autoglm_kernels.triton import decode_attention as dattn
from references import assert_within_stock_error, random_qkv, sdpa_reference

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
# The unmarked tests run on DEV: in fp32 through the Triton interpreter on CPU, in fp16 on a GPU
# (the op takes only 16-bit tensors there); TOL: what a change of split layout may move.
FLOAT = torch.float32 if DEV == "cpu" else torch.float16
TOL = dict(atol=1e-5, rtol=1e-5) if FLOAT == torch.float32 else dict(atol=2e-3, rtol=2e-3)


def _allowed(B, Sq, C, kv_lens, kv_mask):
    """[B, Sq, C] bool: which keys each query sees (loops, independent of the kernel's arithmetic)."""
    lens = kv_lens.cpu().expand(B).tolist()
    allowed = torch.zeros(B, Sq, C, dtype=torch.bool)
    for b in range(B):
        n = max(0, min(int(lens[b]), C))
        for i in range(Sq):
            allowed[b, i, : max(0, n - Sq + i + 1)] = True
        if kv_mask is not None:
            w = min(C, kv_mask.shape[1])
            allowed[b, :, :w] &= kv_mask[b, :w].cpu() != 0
    return allowed


def _check(q, k, v, kv_lens, kv_mask=None, scale=None, **kw):
    out = ops.decode_attention(q, k, v, kv_lens, kv_mask, scale, **kw)
    B, Sq, Hq, D = q.shape
    assert out.shape == (B, Sq, Hq, D) and out.dtype == q.dtype and out.is_contiguous()
    allowed = _allowed(B, Sq, k.shape[2], kv_lens, kv_mask)
    assert_within_stock_error(out, q, k, v, allowed, D**-0.5 if scale is None else scale)
    return out


def _inputs(B, Sq, Hq, Hk, D, C, dtype, device=DEV):
    return random_qkv(B, Sq, C, Hq, Hk, D, dtype, device)


# (B, Sq, Hq, Hk, D, C, kv_lens, masked)
CPU_CASES = [
    (1, 1, 4, 2, 64, 1, [1], False),
    (1, 1, 4, 2, 64, 97, [97], False),
    (1, 3, 8, 2, 128, 97, [61], True),
    (2, 16, 4, 1, 64, 300, [300, 17], False),
    (5, 1, 4, 4, 64, 131, [131, 1, 64, 65, 100], True),
    (3, 2, 6, 3, 64, 1025, [1025, 513, 2], True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] if DEV == "cpu" else [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}_Sq{}_H{}-{}_D{}_C{}".format(*c[:6]))
def test_matches_reference(case, dtype):
    B, Sq, Hq, Hk, D, C, lens, masked = case
    q, k, v = _inputs(B, Sq, Hq, Hk, D, C, dtype)
    kv_lens = torch.tensor(lens, dtype=torch.int32, device=DEV)
    kv_mask = None
    if masked:  # left padding of a different length per row, and one hole
        kv_mask = torch.ones(B, C, dtype=torch.int64, device=DEV)
        for b in range(B):
            kv_mask[b, : (3 * b) % max(1, lens[b])] = 0
        kv_mask[0, C // 2] = 0
    _check(q, k, v, kv_lens, kv_mask)


def test_split_count_does_not_change_result():
    q, k, v = _inputs(2, 2, 8, 2, 64, 700, FLOAT)
    kv_lens = torch.tensor([700, 301], device=DEV)
    # 100_000: more splits than tiles (and than a grid axis takes) is capped at the tile count
    outs = [_check(q, k, v, kv_lens, num_splits=n) for n in (1, 3, 64, 100_000)]
    for out in outs[1:]:
        torch.testing.assert_close(outs[0], out, **TOL)


def test_reduce_in_chunks_matches_one_chunk(monkeypatch):
    """The reduce kernel over more splits than it loads at once (REDUCE_CHUNK) rescales its running
    sums chunk by chunk: the same output as one chunk within TOL, and within stock's error."""
    q, k, v = _inputs(2, 1, 4, 2, 64, 40 * dattn.block_n(64), FLOAT)
    kv_lens = torch.tensor([40 * dattn.block_n(64) - 5, 9 * dattn.block_n(64) + 3], device=DEV)  # 40 and 10 splits
    whole = _check(q, k, v, kv_lens, num_splits=40)
    monkeypatch.setattr(dattn, "REDUCE_CHUNK", 16)
    torch.testing.assert_close(_check(q, k, v, kv_lens, num_splits=40), whole, **TOL)


def test_short_capacity_runs_one_pass_long_splits():
    """The split count policy: capacities of ONE_PASS_MAX_TILES tiles (one with the in-kernel
    merge, the default) take the one-pass kernel; larger ones split."""
    assert dattn.ONE_PASS_MAX_TILES == (1 if dattn.MERGE_ON else 4)
    q, k, v = _inputs(1, 1, 8, 2, 128, dattn.ONE_PASS_MAX_TILES * dattn.block_n(128), torch.float32)
    assert dattn.default_num_splits(q, k) == 1
    q, k, v = _inputs(1, 1, 8, 2, 128, dattn.ONE_PASS_MAX_TILES * dattn.block_n(128) + 1, torch.float32)
    assert dattn.default_num_splits(q, k) > 1


@pytest.mark.skipif(dattn.PROGRAMS_PER_SM != 0, reason="AUTOGLM_DECODE_PROGRAMS_PER_SM sets one value for all shapes")
@pytest.mark.parametrize("Hq,Hk,Sq,per_sm", [(32, 2, 1, 1), (8, 2, 1, 2), (8, 2, 4, 1), (2, 2, 1, 2)])
def test_split_count_aims_at_one_program_per_sm_for_full_row_tiles(Hq, Hk, Sq, per_sm):
    """A long cache splits into per_sm programs per SM: one where a program's G * Sq query rows
    fill a 16-row tile (GLM-4's 16 heads per KV head), two otherwise (off CUDA: 4 SMs)."""
    q = torch.empty(1, Sq, Hq, 128, device="meta")
    k = torch.empty(1, Hk, 1 << 16, 128, device="meta")
    programs = dattn.programs_per_split(q, k)
    assert dattn.default_num_splits(q, k) == -(-per_sm * 4 // programs)


@pytest.mark.skipif(dattn.PROGRAMS_PER_SM != 0 or not dattn.MERGE_ON or dattn.MERGE_CAPACITY_TILES != 8,
                    reason="a tuning knob changes the policy")
def test_small_capacities_merge_in_the_kernel():
    """Capacities of at most MERGE_CAPACITY_TILES tiles take at most MERGE_MAX_SPLITS splits (the
    in-kernel merge, one launch) where the SM count would ask for more; one tile more splits as
    before (here 8 programs wanted: 4 SMs off CUDA, 2 per SM, one KV head)."""
    q = torch.empty(1, 1, 2, 128, device="meta")
    tiles = dattn.MERGE_CAPACITY_TILES
    small = torch.empty(1, 1, tiles * dattn.block_n(128), 128, device="meta")
    large = torch.empty(1, 1, (tiles + 1) * dattn.block_n(128), 128, device="meta")
    assert dattn.default_num_splits(q, small) == dattn.MERGE_MAX_SPLITS
    assert dattn.merges_in_kernel(dattn.default_num_splits(q, small))
    assert dattn.default_num_splits(q, large) == 8 and not dattn.merges_in_kernel(8)


def test_views_broadcast_lens_bool_mask_scale():
    """q as a slice of a fused qkv output, cache as a [B, C, Hk, D] buffer viewed [B, Hk, C, D],
    kv_lens int64 of shape [1] (broadcast), bool mask narrower than kv_len, custom scale."""
    B, Sq, Hq, Hk, D, C = 2, 2, 4, 2, 64, 77
    qkv = torch.randn(B, Sq, (Hq + 2 * Hk) * D, device=DEV, dtype=FLOAT)
    q = qkv[..., : Hq * D].view(B, Sq, Hq, D)
    k = torch.randn(B, C, Hk, D, device=DEV, dtype=FLOAT).transpose(1, 2)
    v = torch.randn(B, C, Hk, D, device=DEV, dtype=FLOAT).transpose(1, 2)
    kv_mask = torch.ones(B, 40, dtype=torch.bool, device=DEV)
    kv_mask[1, :9] = False
    _check(q, k, v, torch.tensor([70], device=DEV), kv_mask, scale=0.3)


def test_lens_above_capacity_are_clamped():
    q, k, v = _inputs(2, 1, 4, 2, 64, 50, FLOAT)
    a = ops.decode_attention(q, k, v, torch.tensor([50, 50], device=DEV))
    b = ops.decode_attention(q, k, v, torch.tensor([10**6, 51], device=DEV))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("num_splits", [None, 3], ids=["one_pass", "split"])
def test_query_without_visible_key_is_zero(num_splits):
    q, k, v = _inputs(2, 4, 4, 2, 64, 30, FLOAT)
    kv_mask = torch.ones(2, 30, dtype=torch.int32, device=DEV)
    kv_mask[1] = 0  # sequence 1 is all padding
    out = _check(q, k, v, torch.tensor([2, 30], device=DEV), kv_mask, num_splits=num_splits)  # seq 0: queries 0, 1 see nothing
    assert torch.isfinite(out).all()
    assert out[0, :2].abs().max() == 0 and out[1].abs().max() == 0


@pytest.mark.parametrize("num_splits", [None, 1, 2, 4, 8, 64], ids=lambda n: f"splits{n}")
def test_empty_and_short_lengths_in_a_long_cache(num_splits):
    """kv_len 0 gives zeros, and lengths of one split (1 key, 2 tiles walked by one split) give the
    reference in every split layout: the split writes the output itself and the merge or the
    reduce kernel leaves it (kv_len 0 once left the output unwritten under the in-kernel merge)."""
    q, k, v = _inputs(4, 1, 4, 2, 64, 700, FLOAT)
    out = _check(q, k, v, torch.tensor([0, 1, 256, 700], device=DEV), num_splits=num_splits)
    assert out[0].abs().max() == 0


# (B, Sq, Hq, Hk, D, C, kv_lens, num_splits): the in-kernel merge against the reduce kernel
MERGE_CASES = [
    (2, 2, 8, 2, 64, 700, [700, 301], 3),
    (1, 16, 16, 1, 64, 390, [390], 4),  # 256 query rows: four row blocks, four counters
    (3, 1, 4, 2, 128, 200, [200, 1, 65], 4),  # a split with no visible key; one sequence with a single split
]


@pytest.mark.parametrize("case", MERGE_CASES, ids=lambda c: "B{}_Sq{}_H{}-{}_D{}_C{}".format(*c[:6]))
def test_in_kernel_merge_matches_reduce_kernel(case, monkeypatch):
    """The last split's merge gives the reduce kernel's result, with counters passed or not, and
    leaves the counters zeroed for the next call (which then merges correctly again)."""
    B, Sq, Hq, Hk, D, C, lens, splits = case
    q, k, v = _inputs(B, Sq, Hq, Hk, D, C, FLOAT)
    kv_mask = torch.ones(B, C, dtype=torch.int32, device=DEV)
    kv_mask[0, : C // 3] = 0
    kv_lens = torch.tensor(lens, device=DEV)
    assert dattn.merges_in_kernel(splits)
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device=DEV)
    merged = [_check(q, k, v, kv_lens, kv_mask, num_splits=splits, counters=counters) for _ in range(2)]
    assert counters.abs().sum().item() == 0
    fresh = _check(q, k, v, kv_lens, kv_mask, num_splits=splits)
    monkeypatch.setattr(dattn, "MERGE_ON", False)
    reduced = _check(q, k, v, kv_lens, kv_mask, num_splits=splits)
    torch.testing.assert_close(merged[0], merged[1], atol=0, rtol=0)
    torch.testing.assert_close(merged[0], fresh, atol=0, rtol=0)
    torch.testing.assert_close(merged[0], reduced, **TOL)


@pytest.mark.parametrize("case", [(2, 2, 8, 2, 64, 700, [700, 301]), (1, 16, 16, 1, 64, 390, [390])],
                         ids=["B2_Sq2_H8-2", "B1_Sq16_H16-1_four_row_blocks"])
def test_grid_order_does_not_change_result(case, monkeypatch):
    """Both split-kernel grid orders (AUTOGLM_DECODE_HEAD_MAJOR: KV heads fastest, the default, or
    splits fastest) give the same output bit for bit, merged in the kernel (whose counters are
    indexed by head and row block) or by the reduce kernel."""
    B, Sq, Hq, Hk, D, C, lens = case
    q, k, v = _inputs(B, Sq, Hq, Hk, D, C, FLOAT)
    kv_lens = torch.tensor(lens, device=DEV)
    assert dattn.merges_in_kernel(3) and not dattn.merges_in_kernel(8)
    for splits in (3, 8):
        outs = []
        for head_major in (True, False):
            monkeypatch.setattr(dattn, "HEAD_MAJOR", head_major)
            outs.append(_check(q, k, v, kv_lens, num_splits=splits))
        torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_merge_policy_by_split_count():
    """2..MERGE_MAX_SPLITS splits merge in the kernel (the engine's short caches); more go to the
    reduce kernel, one split needs no merge."""
    assert [dattn.merges_in_kernel(n) for n in (1, 2, dattn.MERGE_MAX_SPLITS, dattn.MERGE_MAX_SPLITS + 1)] == [
        False, True, True, False]


def test_cpu_fallback_without_interpreter(monkeypatch):
    if HAS_CUDA:
        pytest.skip("the plain-torch fallback is for CPU tensors")
    q, k, v = _inputs(2, 3, 4, 2, 64, 90, torch.float32)
    kv_lens = torch.tensor([90, 40])
    kernel = ops.decode_attention(q, k, v, kv_lens)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.testing.assert_close(ops.decode_attention(q, k, v, kv_lens), kernel, atol=2e-5, rtol=1e-5)


def test_tuning_knobs_default_or_clear_error(monkeypatch):
    """The AUTOGLM_DECODE_* knobs (read at import through env_int): unset gives the default, a
    value outside the allowed set a ValueError naming the knob, the set and the value."""
    from autoglm_kernels.triton import env_int

    monkeypatch.delenv("AUTOGLM_DECODE_WARPS", raising=False)
    assert env_int("AUTOGLM_DECODE_WARPS", 4, (1, 2, 4, 8, 16)) == 4
    monkeypatch.setenv("AUTOGLM_DECODE_WARPS", "8")
    assert env_int("AUTOGLM_DECODE_WARPS", 4, (1, 2, 4, 8, 16)) == 8
    monkeypatch.setenv("AUTOGLM_DECODE_WARPS", "3")
    with pytest.raises(ValueError, match=r"AUTOGLM_DECODE_WARPS must be an integer in 1, 2, 4, 8, 16, got '3'"):
        env_int("AUTOGLM_DECODE_WARPS", 4, (1, 2, 4, 8, 16))
    monkeypatch.setenv("AUTOGLM_DECODE_STAGES", "many")
    with pytest.raises(ValueError, match=r"AUTOGLM_DECODE_STAGES must be an integer in 1\.\.6, got 'many'"):
        env_int("AUTOGLM_DECODE_STAGES", 3, range(1, 7))
    assert dattn.block_n(128) == 64 and dattn.block_n(64) == 128  # the defaults this process imported


def test_opcheck_cpu():
    q, k, v = _inputs(2, 2, 4, 2, 64, 37, torch.float32)
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device=DEV)
    args = (q, k, v, torch.tensor([37, 5], device=DEV), torch.ones(2, 37, dtype=torch.bool, device=DEV), 0.125, 0,
            counters)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for splits in (0, 3):  # the policy's split count, and three splits merged in the kernel
        torch.library.opcheck(torch.ops.autoglm.decode_attention.default, args[:6] + (splits, counters),
                              test_utils=utils)


def _bad(**over):
    base = dict(q=torch.randn(1, 1, 4, 64), k_cache=torch.randn(1, 2, 8, 64), v_cache=torch.randn(1, 2, 8, 64),
                kv_lens=torch.tensor([8]))
    base.update(over)
    return base


@pytest.mark.parametrize("kwargs, exc, match", [
    (_bad(q=torch.randn(1, 1, 4, 96), k_cache=torch.randn(1, 2, 8, 96), v_cache=torch.randn(1, 2, 8, 96)),
     ValueError, "head_dim"),
    (_bad(k_cache=torch.randn(1, 2, 8, 64, dtype=torch.float16)), TypeError, "dtype"),
    (_bad(k_cache=torch.randn(1, 2, 8, 64, device="meta")), ValueError, "device"),
    (_bad(k_cache=torch.randn(1, 3, 8, 64), v_cache=torch.randn(1, 3, 8, 64)), ValueError, "multiple of KV heads"),
    (_bad(q=torch.randn(1, 17, 4, 64)), ValueError, "prefill_attention"),
    (_bad(v_cache=torch.randn(1, 2, 9, 64)), ValueError, "one shape"),
    (_bad(k_cache=torch.randn(2, 2, 8, 64), v_cache=torch.randn(2, 2, 8, 64)), ValueError, "B=1"),
    (_bad(q=torch.randn(1, 1, 4, 128)[..., ::2]), ValueError, "contiguous last dim"),
    (_bad(q=torch.randn(1, 4, 64)), ValueError, "4 dims"),
    (_bad(kv_lens=torch.tensor([8.0])), TypeError, "kv_lens"),
    (_bad(kv_lens=torch.tensor([8, 8])), ValueError, "kv_lens must be"),
    (_bad(kv_lens=8), TypeError, "kv_lens"),
    (_bad(kv_mask=torch.ones(2, 8)), TypeError, "kv_mask"),
    (_bad(kv_mask=torch.ones(2, 8, dtype=torch.bool)), ValueError, "kv_mask must be"),
    (_bad(num_splits=0), ValueError, "num_splits"),
    (_bad(counters=torch.zeros(2, dtype=torch.int64)), TypeError, "counters"),
    (_bad(counters=torch.zeros(0, dtype=torch.int32)), ValueError, r"counters must be a contiguous int32 \[>= 2\]"),
    (_bad(counters=torch.zeros(4, dtype=torch.int32)[::2]), ValueError, "stride"),
    (_bad(counters=torch.zeros(2, dtype=torch.int32, device="meta")), ValueError, "device"),
])
def test_bad_input_raises(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.decode_attention(**kwargs)


# ------------------------------------------------------------------------------------------------
# GPU: bf16/fp16 at the reference shapes, full opcheck, CUDA-graph capture with changing kv_lens
# ------------------------------------------------------------------------------------------------
GPU_CASES = [  # (B, Sq, Hq, Hk, D, C, kv_lens, masked)
    (1, 1, 32, 2, 128, 1024, [1024], False),  # GLM-4
    (1, 1, 32, 8, 128, 8191, [8191], False),  # Llama-8B, prime capacity
    (1, 1, 32, 2, 128, 32768, [32768], False),
    (1, 1, 32, 2, 128, 16384, [4099], False),  # static cache, L << C
    (1, 3, 32, 2, 128, 1025, [1025], False),
    (1, 16, 32, 2, 128, 4099, [3000], False),  # 16*16 rows: several row blocks
    (1, 16, 32, 8, 128, 97, [97], False),
    (1, 1, 32, 2, 128, 256, [200], False),  # GLM-4, the engine's smallest bucket: one pass
    (4, 1, 32, 8, 64, 2053, [2053, 1, 97, 1500], True),  # Llama-1B heads, left padding
    (5, 2, 32, 2, 128, 1031, [1031, 640, 2, 1000, 64], True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}_Sq{}_H{}-{}_D{}_C{}".format(*c[:6]))
def test_gpu_matches_reference(case, dtype):
    B, Sq, Hq, Hk, D, C, lens, masked = case
    q, k, v = _inputs(B, Sq, Hq, Hk, D, C, dtype, "cuda")
    kv_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    kv_mask = None
    if masked:
        kv_mask = torch.ones(B, C, dtype=torch.int64, device="cuda")
        for b in range(B):
            kv_mask[b, : (7 * b) % max(1, lens[b])] = 0
    _check(q, k, v, kv_lens, kv_mask)


@pytest.mark.gpu
@pytest.mark.parametrize("tiles", [1, 2, 8])
def test_gpu_kv_prefetch_changes_no_result(tiles, monkeypatch):
    """AUTOGLM_DECODE_PREFETCH_TILES > 0 (each split's first tiles pulled into L2 before the PDL
    wait, from a kv_len read before it) only changes what is in L2: every path (one pass, in-kernel
    merge, reduce kernel, static cache with L << C, padding) gives the default's result bit for bit,
    also under a CUDA graph replayed after kv_lens changed."""
    for B, Sq, Hq, Hk, D, C, lens, masked in GPU_CASES:
        q, k, v = _inputs(B, Sq, Hq, Hk, D, C, torch.bfloat16, "cuda")
        kv_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        kv_mask = torch.ones(B, C, dtype=torch.int64, device="cuda") if masked else None
        if masked:
            kv_mask[:, : C // 5] = 0
        monkeypatch.setattr(dattn, "PREFETCH_TILES", 0)
        want = ops.decode_attention(q, k, v, kv_lens, kv_mask)
        monkeypatch.setattr(dattn, "PREFETCH_TILES", tiles)
        torch.testing.assert_close(ops.decode_attention(q, k, v, kv_lens, kv_mask), want, atol=0, rtol=0)
    q, k, v = _inputs(1, 1, 32, 8, 128, 256, torch.bfloat16, "cuda")  # the engine's bucket: merge in the kernel
    kv_lens = torch.tensor([256], dtype=torch.int32, device="cuda")
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device="cuda")
    ops.decode_attention(q, k, v, kv_lens, counters=counters)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = ops.decode_attention(q, k, v, kv_lens, counters=counters)
    for n in (256, 1, 130):
        kv_lens.fill_(n)
        g.replay()
        monkeypatch.setattr(dattn, "PREFETCH_TILES", 0)
        torch.testing.assert_close(out, ops.decode_attention(q, k, v, kv_lens), atol=0, rtol=0)
        monkeypatch.setattr(dattn, "PREFETCH_TILES", tiles)
    assert counters.abs().sum().item() == 0


@pytest.mark.gpu
def test_gpu_fp32_rejected():
    q, k, v = _inputs(1, 1, 4, 2, 64, 8, torch.float32, "cuda")
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        ops.decode_attention(q, k, v, torch.tensor([8], device="cuda"))


@pytest.mark.gpu
def test_gpu_opcheck_full():
    q, k, v = _inputs(2, 2, 8, 2, 128, 300, torch.bfloat16, "cuda")
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device="cuda")
    args = (q, k, v, torch.tensor([300, 77], device="cuda"), torch.ones(2, 300, dtype=torch.bool, device="cuda"),
            128**-0.5)
    for splits in (0, 3):
        torch.library.opcheck(torch.ops.autoglm.decode_attention.default, args + (splits, counters))


@pytest.mark.gpu
@pytest.mark.parametrize("Hk, C, own_counters, merges", [(2, 4096, False, False), (8, 256, True, True),
                                                         (2, 256, False, True), (8, 64, False, False)],
                         ids=["split_reduce_kernel", "split_merge_own_counters", "split_merge_fresh_counters",
                              "one_pass"])
def test_gpu_cuda_graph_follows_kv_lens(Hk, C, own_counters, merges):
    """Captured once over a static cache; replays with new kv_lens (written in place: lengths that
    walk 1-2 tiles in one split and that split and merge) match the reference and an eager call bit
    for bit, and leave the merge's counters zeroed."""
    B, Sq, Hq, D = 2, 1, 32, 128
    q, k, v = _inputs(B, Sq, Hq, Hk, D, C, torch.bfloat16, "cuda")
    kv_lens = torch.tensor([100, C], dtype=torch.int32, device="cuda")
    counters = torch.zeros(ops.decode_attention_counters(q, k), dtype=torch.int32, device="cuda") if own_counters else None
    assert dattn.merges_in_kernel(dattn.default_num_splits(q, k)) == merges
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.decode_attention(q, k, v, kv_lens, counters=counters)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = ops.decode_attention(q, k, v, kv_lens, counters=counters)
    for lens in ([100, C], [C, 1], [C * 5 // 8, C * 3 // 4 + 1], [C, C]):
        kv_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        for _ in range(3):
            g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, ops.decode_attention(q, k, v, kv_lens), atol=0, rtol=0)
        ref = sdpa_reference(q, k, v, _allowed(B, Sq, C, kv_lens, None), D**-0.5, torch.float32)
        assert (out.float() - ref).abs().max().item() < 2e-2
        if counters is not None:
            assert counters.abs().sum().item() == 0


@pytest.mark.gpu
def test_gpu_torch_compile_fullgraph():
    q, k, v = _inputs(1, 1, 32, 2, 128, 1024, torch.bfloat16, "cuda")
    kv_lens = torch.tensor([700], device="cuda")
    fn = torch.compile(lambda *a: ops.decode_attention(*a), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v, kv_lens), ops.decode_attention(q, k, v, kv_lens), atol=1e-2, rtol=1e-2)
