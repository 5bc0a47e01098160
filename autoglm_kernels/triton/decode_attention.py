"""Split-KV (flash-decoding) attention for decode steps: a few new query tokens against a KV cache.

torch op `autoglm::decode_attention(q, k_cache, v_cache, kv_lens, kv_mask, scale, num_splits, counters) -> out`
  q        [B, Sq, Hq, D]   1 <= Sq <= 16, last dim contiguous (a view into the qkv projection is fine)
  k_cache  [B, Hk, C, D]    C = cache capacity; last dim contiguous
  v_cache  [B, Hk, C, D]
  kv_lens  [B] or [1] int   valid positions per sequence, including the Sq new tokens (its last Sq)
  kv_mask  [B, M] or None   0 = padding key (transformers' 2-D attention_mask); positions >= M count as valid
  counters [>= B*Hk*row blocks] int32, zeroed: the in-kernel merge's tickets; left zeroed
  out      [B, Sq, Hq, D]   contiguous, q's dtype
Query i sees keys j < kv_len - Sq + i + 1 (bottom-right causal) that kv_mask does not exclude.

`_split_kernel` runs one program per (batch x KV head x block of query rows, KV split):
all G = Hq/Hk query heads and all Sq rows of a KV head are rows of one [G*Sq, D] x [D, BLOCK_N]
tl.dot, so each K/V tile is read from HBM once for all of them (once per 64 rows when G*Sq > 64,
e.g. GLM-4's G=16 with Sq > 4). It writes the split's partial
(running max, sum, unnormalized output) in fp32, and the splits are merged in one of two ways:
  - in the same kernel (MERGE, up to MERGE_MAX_SPLITS splits: the engine's short cache buckets):
    each split then takes a ticket from an atomic counter of its (batch x KV head, row block),
    and the split that takes the last one merges every split's partial and writes the output,
    then puts the counter back to 0. One launch instead of two.
  - by `_reduce_kernel`, a second launch that spreads the merge over (row, 32-dim) programs:
    more splits (longer caches), where one program's loop over them would cost more.
Where the whole capacity is one tile (C <= ONE_PASS_MAX_TILES * BLOCK_N), or a kv_len uses only
one of the splits, that split writes the normalized output itself (no partials, no ticket).

The grid is sized on the host from the capacity C and the SM count only; kv_lens is read on the
device, where each program derives the same split layout from its kv_len (blocks of BLOCK_N keys
divided evenly over at most `max_splits` splits); splits past the last used one exit at once.
So time follows the valid length, not the capacity, with no host sync: CUDA-graph capturable.
kv_lens above C are clamped to C on the device (there is no way to raise without a host sync).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from . import cdiv, env_int, launch, next_power_of_2, pdl_prologue, triton_can_run, triton_op

_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max: exp2(_NEG - _NEG) = 1, never NaN
_LOG2E = 1.4426950408889634

# Split programs per SM the split count aims at: 1 where a program's query rows fill a 16-row tile
# (G * Sq >= 16, e.g. GLM-4's 16 query heads per KV head), 2 otherwise. A full tile's fp32 partial
# (8 KB at d = 128) costs a quarter of a one-tile split's K/V bytes, so there fewer splits of two
# tiles win: GLM-4 at 8k tokens 9.92 vs 10.64 us, 32k 18.94 vs 19.59, 8k of a 32k cache 9.94 vs
# 10.58; Llama-3.1-8B (G = 4, a 2 KB partial) lost with 1: 8k 19.57 vs 18.73, 32k 57.30 vs 53.27
# (H100, bench/results/..._1225_.../probe_PROGRAMS_PER_SM=*.json). AUTOGLM_DECODE_PROGRAMS_PER_SM
# (1..16; a tuning knob read at import) sets one value for every shape.
PROGRAMS_PER_SM = env_int("AUTOGLM_DECODE_PROGRAMS_PER_SM", 0, range(0, 17))  # 0: the rule above
MIN_BLOCKS_PER_SPLIT = 1  # a split reads at least this many BLOCK_N-key tiles; 1: short contexts get
# the most parallel, shortest programs (2 measured 0.89-0.91x SDPA at 1k tokens on the H100)
MAX_ROWS_PER_PROGRAM = 64  # query rows (G*Sq) per program; more rows -> more programs per KV tile
# The last split merges the partials in the kernel (one launch) up to this many splits; more, or
# AUTOGLM_DECODE_MERGE=0 (a tuning knob, read at import), go to the reduce kernel. Its merge is
# one program's loop over the splits, which costs more than the second launch beyond a few: on
# the H100, Llama-3.1-8B at 1k-8k tokens (16-33 splits) took 10.0-24.9 us against 7.9-18.8 with
# the reduce kernel (bench/results/..._1558_...).
MERGE_ON = env_int("AUTOGLM_DECODE_MERGE", 1, (0, 1)) == 1
MERGE_MAX_SPLITS = 4
# Capacities of at most this many tiles (512 keys at head_dim 128, 1024 at 64: the engine's second
# cache bucket) take at most MERGE_MAX_SPLITS splits, merged in the kernel, instead of a split per
# tile and the reduce kernel: on the H100 (bench/results/..._1837_...) 0.4-0.9 us faster at half
# the capacity valid (Llama-3.1-8B 256 of 512 tokens 5.82 vs 6.75 us, Llama-3.2-1B 512 of 1024
# 5.88 vs 6.78), 1.6 us at a quarter (GLM-4 128 of 512 4.14 vs 5.72), and at the full capacity
# within 0.05 us but GLM-4 (512 tokens 6.78-6.81 vs 6.54-6.56). 16 tiles lost at the full
# capacity (Llama-3.1-8B 1024 tokens 8.85-8.87 vs 7.75-7.76). AUTOGLM_DECODE_MERGE_CAPACITY_TILES
# overrides it (0: off; a tuning knob, read at import).
MERGE_CAPACITY_TILES = env_int("AUTOGLM_DECODE_MERGE_CAPACITY_TILES", 8, range(0, 65))
# A kv_len of at most this many tiles is read by one split walking them, which writes the output
# itself (no partials, no ticket; the reduce kernel, where launched, exits): Llama-3.1-8B's step
# with 2 tiles valid took 150 us longer split and merged than walked, with 3-4 tiles 20-80 us
# shorter (bench/results/..._1553_... and ..._1558_..., in-kernel merge). The reduce-kernel path
# (more than MERGE_MAX_SPLITS splits) walks them the same way, which saves the partials' traffic
# but not the time: Llama-3.2-1B at 256 valid tokens of a 1024-token cache 6.38 us walked (the
# reduce kernel launched and exiting) against 6.47 split and reduced, and 4.78 over a 256-token
# cache (one launch): the cost there is the second launch (bench/results/..._1737_.../d64_default*,
# ..._1813_.../tune_x4.json).
WALK_MAX_TILES = 2
# Capacities of at most this many BLOCK_N tiles run in one pass (no split, no merge);
# AUTOGLM_DECODE_ONE_PASS_TILES overrides it (0: always split; a tuning knob, read at import).
# With the in-kernel merge only a one-tile capacity: one pass walks its tiles one after another
# (Llama-3.1-8B step on the H100 with a 4-tile cache: +140 us from 64 to 192 valid tokens), while
# splits read them in parallel and a split that is alone (WALK_MAX_TILES) writes the output
# itself. Without the merge, 4: a second launch costs more than the walk.
ONE_PASS_MAX_TILES = env_int("AUTOGLM_DECODE_ONE_PASS_TILES", 1 if MERGE_ON else 4, range(0, 65))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# Under programmatic dependent launch each split program pulls its first PREFETCH_TILES tiles of
# K and V into L2 before it waits for the previous kernel (the qkv projection that appends this
# step's K/V), so HBM streams across that kernel's tail, as the GEMV's weight prefetch does. The
# split layout comes from kv_len read before the wait (the previous step's, or this one's): a
# hint only, since a prefetch changes no data; the tiles are read after the wait as before.
# Off by default (AUTOGLM_DECODE_PREFETCH_TILES=2 turns it on; a tuning knob, read at import).
# Measured on the H100 with 2 tiles: captured step GPU time -0.3% (Llama-3.1-8B) and -0.9 to
# -1.3% (GLM-4-9B) (bench/results/..._0624_...), Llama-3.2-1B generate 813.9 vs 811.8 tok/s
# (..._0642_...); isolated calls unchanged to 8k tokens and 2-3% slower at 32k. Too little to
# change the default that every GPU test and token check ran with.
PREFETCH_TILES = env_int("AUTOGLM_DECODE_PREFETCH_TILES", 0, range(0, 9))
# Split-kernel grid order: 1 (the default: KV head and row block fastest, (B * Hk * row blocks,
# splits), so the programs running side by side read every head's K/V) or 0 (split fastest,
# (splits, B * Hk, row blocks): one head's splits side by side). AUTOGLM_DECODE_HEAD_MAJOR (a
# tuning knob, read at import). Three alternating runs on the H100 (bench/results/..._1523_...,
# ab_*.log): GLM-4 1.5-2.5% faster at every length (8k 9.72-9.79 vs 9.97-10.02 us, 32k 18.42-18.67
# vs 18.79-18.92, 8k of a 32k cache 9.69-9.84 vs 9.96-10.21), Llama-3.1-8B within noise (1k
# 7.88-7.94 vs 7.86-7.87, 32k 52.84-53.61 vs 52.85-53.68).
HEAD_MAJOR = env_int("AUTOGLM_DECODE_HEAD_MAJOR", 1, (0, 1)) == 1

# Splits the reduce kernel loads at once: the defaults take at most 66 (GLM-4 at 132 SMs), so
# one chunk, one round trip to L2; a num_splits above it loops over chunks. One pass against the
# two before (the maximum first, then the weighted sums) on the H100, two alternations
# (bench/results/..._2241_.../tune_*.log): Llama-3.1-8B 1k 7.24-7.36 vs 7.79-7.88 us, 8k 18.28 vs
# 18.86-18.90, 32k 52.84-53.30 vs 53.88-54.09; GLM-4 1k 6.56-6.64 vs 7.15-7.16, 8k 9.99-10.10 vs
# 10.13-10.24. Letting the next kernel launch before the reduce kernel's PDL wait (so its blocks,
# and a split kernel's K/V prefetch, start during the split kernel's tail) gained nothing on top
# (Llama-3.1-8B 8k 18.58-18.64 us).
REDUCE_CHUNK = 128

# Split-kernel launch shape: bytes of bf16 K (or V) per tile, warps, pipeline stages
# (AUTOGLM_DECODE_TILE_BYTES / _WARPS / _STAGES override them; tuning knobs read at import).
TILE_BYTES = env_int("AUTOGLM_DECODE_TILE_BYTES", 16384, (4096, 8192, 16384, 32768))
SPLIT_WARPS = env_int("AUTOGLM_DECODE_WARPS", 4, (1, 2, 4, 8, 16))
SPLIT_STAGES = env_int("AUTOGLM_DECODE_STAGES", 3, range(1, 7))


def block_n(head_dim: int) -> int:
    """Keys per tile: TILE_BYTES (16 KB) of bf16 K (or V) per tile for head_dim 64 and 128."""
    return TILE_BYTES // (2 * head_dim)


def rows_block(rows: int) -> int:
    """Query rows per program (tl.dot needs >= 16), a power of two."""
    return min(MAX_ROWS_PER_PROGRAM, max(16, next_power_of_2(rows)))


def programs_per_split(q: torch.Tensor, k_cache: torch.Tensor) -> int:
    """Split-kernel programs per KV split: one per (batch x KV head, block of query rows); also
    the number of ticket counters a call takes."""
    B, Sq, Hq, _ = q.shape
    Hk = k_cache.shape[1]
    G = Hq // Hk
    return B * Hk * cdiv(G * Sq, rows_block(G * Sq))


def default_num_splits(q: torch.Tensor, k_cache: torch.Tensor) -> int:
    """Most KV splits per (batch, KV head, row block): enough programs to fill the GPU at full
    capacity C, each still reading >= MIN_BLOCKS_PER_SPLIT tiles; 1 (one pass) for capacities of
    at most ONE_PASS_MAX_TILES tiles, at most MERGE_MAX_SPLITS (merged in the kernel) for those of
    at most MERGE_CAPACITY_TILES. Depends on shapes only."""
    B, Sq, Hq, D = q.shape
    Hk, C = k_cache.shape[1], k_cache.shape[2]
    if C <= ONE_PASS_MAX_TILES * block_n(D):
        return 1
    sms = _sm_count(q.device.index if q.device.index is not None else torch.cuda.current_device()) \
        if q.device.type == "cuda" else 4  # interpreter: a few splits, to exercise the reduction
    per_sm = PROGRAMS_PER_SM or (1 if (Hq // Hk) * Sq >= 16 else 2)
    want = cdiv(per_sm * sms, programs_per_split(q, k_cache))
    tiles = cdiv(max(C, 1), block_n(D))
    splits = max(1, min(want, cdiv(tiles, MIN_BLOCKS_PER_SPLIT)))
    if MERGE_ON and tiles <= MERGE_CAPACITY_TILES:
        splits = min(splits, MERGE_MAX_SPLITS)  # merged in the kernel: one launch
    return splits


@triton.jit
def _valid_len(KV_LENS, b, s_lens, C):
    """Sequence b's kv_len from the device tensor, clamped to [0, C] (values above C count as C)."""
    return tl.minimum(tl.maximum(tl.load(KV_LENS + b * s_lens).to(tl.int32), 0), C)


@triton.jit
def _split_range(kv_len, split, MAX_SPLITS, BLOCK_N: tl.constexpr, MIN_BLOCKS: tl.constexpr, WALK: tl.constexpr):
    """(lo, hi, n_used): keys [lo, hi) of split `split` and the splits in use for this kv_len
    (blocks of BLOCK_N keys divided evenly over at most MAX_SPLITS; up to WALK tiles walked by one
    split). At least one split is in use, so a kv_len of 0 still writes its (zero) output. The
    reduce kernel derives the same n_used."""
    n_blocks = (kv_len + BLOCK_N - 1) // BLOCK_N
    bps = tl.maximum((n_blocks + MAX_SPLITS - 1) // MAX_SPLITS, MIN_BLOCKS)
    bps = tl.where(n_blocks <= WALK, tl.maximum(n_blocks, 1), bps)
    n_used = tl.maximum((n_blocks + bps - 1) // bps, 1)
    lo = split * bps * BLOCK_N
    hi = tl.minimum(lo + bps * BLOCK_N, kv_len)
    return lo, hi, n_used


@triton.jit
def _prefetch_rows_l2(base, lo, hi, stride_n, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    """prefetch.global.L2 of every 128-byte line of rows [lo, min(hi, lo + ROWS)) (HEAD_DIM
    elements of 2 bytes each, rows `stride_n` elements apart); lanes past the range repeat row lo."""
    LINES: tl.constexpr = (HEAD_DIM * 2 + 127) // 128
    n = lo + tl.arange(0, ROWS)
    n = tl.where(n < hi, n, lo)
    ptrs = base + n[:, None] * stride_n + (tl.arange(0, LINES) * 64)[None, :]
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)


# Lengths/capacities change as a cache grows: no per-value specialization (avoids recompiles).
@triton.jit(do_not_specialize=["sm_b", "mask_len", "C", "MAX_SPLITS"])
def _split_kernel(
    Q, K, V, KV_LENS, MASK, PART_O, PART_M, PART_L, OUT, COUNTERS,
    sq_b, sq_s, sq_h,
    sk_b, sk_h, sk_n,
    sv_b, sv_h, sv_n,
    s_lens, sm_b, mask_len,
    C, Hk, Sq, qk_scale, MAX_SPLITS,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MIN_BLOCKS: tl.constexpr, HAS_MASK: tl.constexpr, ONE_PASS: tl.constexpr, MERGE: tl.constexpr,
    WALK: tl.constexpr, PREFETCH: tl.constexpr = 0, HEAD_MAJOR: tl.constexpr = False, PDL: tl.constexpr = False,
):
    """ONE_PASS (MAX_SPLITS == 1): write the normalized output to OUT; else the split's partial,
    and with MERGE the split that finishes last merges them all into OUT (COUNTERS: one zeroed
    int32 ticket counter per (batch x KV head, row block), left zeroed)."""
    if HEAD_MAJOR:
        n_rb = (G * Sq + BLOCK_M - 1) // BLOCK_M
        pid = tl.program_id(0)  # (b * Hk + hk) * row blocks + rb
        split = tl.program_id(1)
        bh = pid // n_rb  # b * Hk + hk
        rb = pid % n_rb  # block of query rows
    else:
        split = tl.program_id(0)
        bh = tl.program_id(1)  # b * Hk + hk
        rb = tl.program_id(2)  # block of query rows
        n_rb = tl.num_programs(2)
    b = bh // Hk
    hk = bh % Hk
    k_base = K + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h
    v_base = V + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h
    if PDL and PREFETCH > 0:  # before the wait: see PREFETCH_TILES (rb 0 only: one copy per KV head)
        if rb == 0:
            hint = _valid_len(KV_LENS, b, s_lens, C)
            p_lo, p_hi, p_used = _split_range(hint, split, MAX_SPLITS, BLOCK_N, MIN_BLOCKS, WALK)
            if split < p_used:
                _prefetch_rows_l2(k_base, p_lo, p_hi, sk_n, HEAD_DIM, PREFETCH * BLOCK_N)
                _prefetch_rows_l2(v_base, p_lo, p_hi, sv_n, HEAD_DIM, PREFETCH * BLOCK_N)
    pdl_prologue(PDL)

    kv_len = _valid_len(KV_LENS, b, s_lens, C)
    lo, hi, n_used = _split_range(kv_len, split, MAX_SPLITS, BLOCK_N, MIN_BLOCKS, WALK)
    if not ONE_PASS:
        if split >= n_used:
            return

    # Row r of this program is query token i = r // G of head hk*G + r % G.
    r = rb * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < G * Sq
    i = r // G
    h = hk * G + r % G
    d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b.to(tl.int64) * sq_b + (i * sq_s + h * sq_h)[:, None] + d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    limit = kv_len - Sq + i + 1  # keys j < limit are causally visible to row r

    m_i = tl.full([BLOCK_M], _NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        col_ok = n < hi
        k = tl.load(k_base + n[:, None] * sk_n + d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + n[:, None] * sv_n + d[None, :], mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as fp64
        ok = col_ok[None, :] & (n[None, :] < limit[:, None])
        if HAS_MASK:
            keep = tl.load(MASK + b.to(tl.int64) * sm_b + n, mask=col_ok & (n < mask_len), other=1)
            ok = ok & (keep != 0)[None, :]
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # Partials are indexed by the output row (b, i, h) so the reduce kernel reads them contiguously.
    row = (b * Sq + i).to(tl.int64) * (Hk * G) + h
    # One pass, or the only split this kv_len uses: the output straight away, no partials, no
    # ticket (and the reduce kernel, if launched, exits). A row with no visible key gives zeros.
    if ONE_PASS or n_used == 1:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(OUT + row[:, None] * HEAD_DIM + d[None, :], o.to(OUT.dtype.element_ty), mask=row_ok[:, None])
        return
    tl.store(PART_M + row * MAX_SPLITS + split, m_i, mask=row_ok)
    tl.store(PART_L + row * MAX_SPLITS + split, l_i, mask=row_ok)
    o_ptrs = PART_O + (row * MAX_SPLITS + split)[:, None] * HEAD_DIM + d[None, :]
    tl.store(o_ptrs, acc, mask=row_ok[:, None])
    if MERGE:
        # Every thread's partial stores come before the ticket (the barrier, then the ticket's
        # release at GPU scope); the last ticket's acquire makes all splits' partials visible, and
        # its loads bypass L1 (.cg), which is not coherent across SMs.
        tl.debug_barrier()
        counter = COUNTERS + bh * n_rb + rb
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if ticket == n_used - 1:
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # every split has taken its ticket
            # A loop over the splits in use. Unrolled over MERGE_MAX_SPLITS (masked past n_used, all
            # loads in one trip to L2) it was 0.4-0.7 us faster alone at 4 splits but slowed the
            # captured steps: Llama-3.1-8B 6.03-6.04 vs 5.95-5.96 ms, Llama-3.2-1B 1.118-1.122 vs
            # 1.105-1.117 (H100, bench/results/..._2259_...), even at lengths that merge nothing.
            m_run = tl.full([BLOCK_M], _NEG, tl.float32)
            l_run = tl.zeros([BLOCK_M], tl.float32)
            o_run = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
            for s in range(0, n_used):
                m_s = tl.load(PART_M + row * MAX_SPLITS + s, mask=row_ok, other=_NEG, cache_modifier=".cg")
                l_s = tl.load(PART_L + row * MAX_SPLITS + s, mask=row_ok, other=0.0, cache_modifier=".cg")
                o_s = tl.load(PART_O + (row * MAX_SPLITS + s)[:, None] * HEAD_DIM + d[None, :],
                              mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                m_new = tl.maximum(m_run, m_s)
                a = tl.math.exp2(m_run - m_new)
                c = tl.math.exp2(m_s - m_new)
                l_run = l_run * a + l_s * c
                o_run = o_run * a[:, None] + o_s * c[:, None]
                m_run = m_new
            o = o_run / tl.where(l_run > 0, l_run, 1.0)[:, None]  # no visible key: zeros, as below
            tl.store(OUT + row[:, None] * HEAD_DIM + d[None, :], o.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@triton.jit(do_not_specialize=["C", "MAX_SPLITS"])
def _reduce_kernel(
    PART_O, PART_M, PART_L, OUT, KV_LENS, s_lens, C, SqHq, MAX_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MIN_BLOCKS: tl.constexpr, WALK: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """out[row, dims of this program] = sum_s w_s * o_s / sum_s w_s * l_s, w_s = 2^(m_s - max m),
    in one pass over chunks of BLOCK_S splits (each chunk's m, l and o loaded together, the running
    sums rescaled by a new maximum as in the split kernel): with BLOCK_S >= the splits in use, the
    merge waits on one round trip to L2 (see REDUCE_CHUNK)."""
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)  # (b * Sq + i) * Hq + h
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = row // SqHq
    kv_len = _valid_len(KV_LENS, b, s_lens, C)
    _, _, n_used = _split_range(kv_len, 0, MAX_SPLITS, BLOCK_N, MIN_BLOCKS, WALK)
    if n_used == 1:  # that split wrote the output itself
        return

    m_run = tl.full([1], _NEG, tl.float32)
    l_run = tl.zeros([1], tl.float32)
    o = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, n_used, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ok = s < n_used
        m_s = tl.load(PART_M + row * MAX_SPLITS + s, mask=ok, other=_NEG)
        l_s = tl.load(PART_L + row * MAX_SPLITS + s, mask=ok, other=0.0)
        part = tl.load(PART_O + (row * MAX_SPLITS + s)[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m_run, tl.max(m_s, 0))
        a = tl.math.exp2(m_run - m_new)
        w = tl.where(ok, tl.math.exp2(m_s - m_new), 0.0)
        l_run = l_run * a + tl.sum(w * l_s, 0)
        o = o * a + tl.sum(w[:, None] * part, 0)
        m_run = m_new
    o = o / tl.where(l_run > 0, l_run, 1.0)  # a row with no visible key gives zeros (its o is 0)
    tl.store(OUT + row * HEAD_DIM + d, o.to(OUT.dtype.element_ty))


def decode_attention_reference(q, k_cache, v_cache, kv_lens, kv_mask=None, scale=None) -> torch.Tensor:
    """Plain-torch fp32 decode attention with the op's semantics (CPU fallback); no host sync."""
    B, Sq, Hq, D = q.shape
    Hk, C = k_cache.shape[1], k_cache.shape[2]
    scale = D**-0.5 if scale is None else scale
    dev = q.device
    lens = kv_lens.to(device=dev, dtype=torch.int64).expand(B).clamp(0, C)
    j = torch.arange(C, device=dev)
    limit = lens[:, None] - Sq + torch.arange(Sq, device=dev)[None, :] + 1  # [B, Sq]
    allowed = j[None, None, :] < limit[:, :, None]  # [B, Sq, C]
    if kv_mask is not None:
        keep = torch.ones(B, C, dtype=torch.bool, device=dev)
        w = min(C, kv_mask.shape[1])
        keep[:, :w] = kv_mask[:, :w] != 0
        allowed = allowed & keep[:, None, :]
    k = k_cache.float().repeat_interleave(Hq // Hk, dim=1)  # [B, Hq, C, D]
    v = v_cache.float().repeat_interleave(Hq // Hk, dim=1)
    s = torch.einsum("bshd,bhcd->bhsc", q.float(), k) * scale
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no visible key -> zeros
    out = torch.einsum("bhsc,bhcd->bshd", p, v)
    return out.to(q.dtype).contiguous()


def merges_in_kernel(max_splits: int) -> bool:
    """Whether the last split merges (MERGE) rather than the reduce kernel: for 2..MERGE_MAX_SPLITS
    splits (the engine's short cache buckets)."""
    return MERGE_ON and 1 < max_splits <= MERGE_MAX_SPLITS


@triton_op("autoglm::decode_attention", mutates_args=("counters",))
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_lens: torch.Tensor,
    kv_mask: Optional[torch.Tensor],
    scale: float,
    num_splits: int,
    counters: torch.Tensor,
) -> torch.Tensor:
    """See the module docstring. Inputs are validated by autoglm_kernels.ops.decode_attention;
    num_splits <= 0 picks default_num_splits. counters: a zeroed int32 workspace of at least
    programs_per_split() elements for the in-kernel merge, left zeroed (one call at a time may use
    it). (Not Optional: torch's boxed dispatch drops a trailing None default of a mutated
    argument and then fails to bump its version.)"""
    if not triton_can_run(q.device):
        return decode_attention_reference(q, k_cache, v_cache, kv_lens, kv_mask, scale)
    B, Sq, Hq, D = q.shape
    Hk, C = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hk
    BLOCK_M = rows_block(G * Sq)
    BLOCK_N = block_n(D)
    n_rb = cdiv(G * Sq, BLOCK_M)
    # More splits than tiles would only exit; the cap also keeps the grid's split axis in range.
    max_splits = min(num_splits, cdiv(max(C, 1), BLOCK_N), 65535) if num_splits > 0 else default_num_splits(q, k_cache)

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    rows = B * Sq * Hq
    one_pass = max_splits == 1
    merge = merges_in_kernel(max_splits)
    if one_pass:  # unused pointers
        part_o = part_m = part_l = out
    else:
        part_o = torch.empty((rows, max_splits, D), dtype=torch.float32, device=q.device)
        part_m = torch.empty((rows, max_splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty((rows, max_splits), dtype=torch.float32, device=q.device)
    s_lens = kv_lens.stride(0) if kv_lens.shape[0] > 1 else 0
    if kv_mask is not None:
        mask = kv_mask.view(torch.uint8) if kv_mask.dtype == torch.bool else kv_mask
        sm_b, mask_len = mask.stride(0), mask.shape[1]
    else:
        mask, sm_b, mask_len = kv_lens, 0, 0  # unused pointer (HAS_MASK=False)

    launch(_split_kernel, (B * Hk * n_rb, max_splits) if HEAD_MAJOR else (max_splits, B * Hk, n_rb),
        q, k_cache, v_cache, kv_lens, mask, part_o, part_m, part_l, out, counters,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        s_lens, sm_b, mask_len,
        C, Hk, Sq, scale * _LOG2E, max_splits,
        G=G, HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        MIN_BLOCKS=MIN_BLOCKS_PER_SPLIT, HAS_MASK=kv_mask is not None, ONE_PASS=one_pass, MERGE=merge,
        WALK=WALK_MAX_TILES, PREFETCH=PREFETCH_TILES, HEAD_MAJOR=HEAD_MAJOR,
        num_warps=SPLIT_WARPS, num_stages=SPLIT_STAGES,
    )
    if one_pass or merge:
        return out
    # (row, 32-dim slice) programs: 4x the parallelism of one program per row, each loading all
    # its splits' [splits x 128 B] at once (up to REDUCE_CHUNK), so the merge costs about one
    # memory latency.
    launch(_reduce_kernel, (rows, D // 32),
        part_o, part_m, part_l, out, kv_lens, s_lens, C, Sq * Hq, max_splits,
        HEAD_DIM=D, BLOCK_N=BLOCK_N, MIN_BLOCKS=MIN_BLOCKS_PER_SPLIT, WALK=WALK_MAX_TILES,
        BLOCK_S=min(REDUCE_CHUNK, max(16, next_power_of_2(max_splits))), BLOCK_D=32, num_warps=2,
    )
    return out
