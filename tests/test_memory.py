"""The pool allocator (csrc/pool/) and MemoryPool (autoglm_kernels/memory.py).

CPU: the allocator core over a simulated device (HostPool: fake addresses, so 1 GiB requests
cost no RAM): rounding, small/large pools, best fit, split/coalesce, growth, cap and backing
exhaustion, release, refused frees, stream ordering, threads, and randomized traces with every
invariant checked in C++ after every operation. GPU: MemoryPool under torch.
"""

import bisect
import ctypes
import math
import os
import random
import threading
import time

import pytest
import torch

from autoglm_kernels import memory, ops
from autoglm_kernels.memory import HostPool, MemoryPool, OutOfMemoryError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture
def pool():
    p = HostPool()
    yield p
    p.check()
    p.close()


def r512(n):
    return max(512, -(-n // 512) * 512)


# ---------------------------------------------------------------------------------------------
# sizes, pools, best fit, split/coalesce, growth
# ---------------------------------------------------------------------------------------------
def test_rounding_to_512(pool):
    for size, expect in [(0, 512), (1, 512), (511, 512), (512, 512), (513, 1024), (4097, 4608)]:
        before = pool.stats()["allocated_bytes"]
        addr = pool.alloc(size)
        assert addr % 512 == 0
        assert pool.stats()["allocated_bytes"] - before == expect, size
    pool.check()


def test_small_and_large_pools_are_separate(pool):
    a = pool.alloc(1 * MiB)  # the largest small request
    s = pool.stats()
    assert (s["segments"], s["small_segments"], s["reserved_bytes"]) == (1, 1, 2 * MiB)
    b = pool.alloc(1 * MiB + 1)  # the smallest large request: a 20 MiB segment
    s = pool.stats()
    assert (s["segments"], s["small_segments"], s["reserved_bytes"]) == (2, 1, 22 * MiB)
    c = pool.alloc(4 * KiB)  # goes into the small segment, not the large one's free 19 MiB
    assert a <= c < a + 2 * MiB
    assert pool.stats()["segments"] == 2
    d = pool.alloc(2 * MiB)  # and large requests into the large segment
    assert b < d < b + 20 * MiB
    pool.check()


def test_best_fit_picks_the_smallest_adequate_block(pool):
    holes = {}
    keep = []
    for size in (3072, 1024, 2048):  # holes of these sizes, each fenced by a live 512 B block
        holes[size] = pool.alloc(size)
        keep.append(pool.alloc(512))
    for addr in holes.values():
        pool.free(addr)
    assert pool.stats()["free_blocks"] == 4  # three holes + the segment's tail
    assert pool.alloc(1500) == holes[2048]  # 1536 B: the 2048 hole, not 3072 or the tail
    assert pool.alloc(1024) == holes[1024]  # exact fit
    assert pool.alloc(2600) == holes[3072]  # 3072 B: takes the whole hole
    assert pool.alloc(1) == holes[2048] + 1536  # the 512 B left of the 2048 hole
    pool.check()


def test_split_and_coalesce(pool):
    a, b, c = (pool.alloc(512) for _ in range(3))
    assert (b, c) == (a + 512, a + 1024)  # split off the front of the segment, in order
    assert pool.stats()["free_blocks"] == 1
    pool.free(b)
    assert pool.stats()["free_blocks"] == 2
    pool.free(a)  # merges with b (next)
    s = pool.stats()
    assert s["free_blocks"] == 2 and s["largest_free_bytes"] == 2 * MiB - 1536
    pool.free(c)  # merges with a+b (prev) and the tail (next): one block again
    s = pool.stats()
    assert (s["free_blocks"], s["largest_free_bytes"], s["fragmentation_pct"]) == (1, 2 * MiB, 0.0)
    # middle freed last: merges both sides at once
    a, b, c = (pool.alloc(512) for _ in range(3))
    pool.free(a)
    pool.free(c)
    assert pool.stats()["free_blocks"] == 2
    pool.free(b)
    assert pool.stats()["free_blocks"] == 1
    pool.check()


def test_split_thresholds(pool):
    # small pool: a 512 B remainder is kept as a block of its own
    pool.alloc(1 * MiB)
    pool.alloc(1 * MiB - 512)
    s = pool.stats()
    assert (s["free_blocks"], s["largest_free_bytes"], s["allocated_bytes"]) == (1, 512, 2 * MiB - 512)
    # large pool: a remainder <= 1 MiB is not worth a block; the request gets the whole block
    pool.alloc(2 * MiB)
    pool.alloc(18 * MiB - 512 * KiB)
    s = pool.stats()
    assert s["segments"] == 2 and s["allocated_bytes"] == 2 * MiB - 512 + 20 * MiB
    assert s["free_blocks"] == 1  # only the small segment's 512 B
    pool.check()


def test_no_merge_across_segments(pool):
    a, b = pool.alloc(1 * MiB), pool.alloc(1 * MiB)  # fills the first small segment
    c = pool.alloc(1 * MiB)  # a second small segment
    assert c == a + 2 * MiB  # the simulated device puts segments back to back
    for addr in (a, b, c):
        pool.free(addr)
    s = pool.stats()
    assert (s["free_blocks"], s["largest_free_bytes"], s["segments"]) == (2, 2 * MiB, 2)
    assert s["fragmentation_pct"] == 50.0
    pool.check()


def test_large_segments_are_as_big_as_the_request(pool):
    reserved = []
    for size in (2 * MiB, 19 * MiB, 30 * MiB, 30 * MiB, 200 * MiB):
        pool.alloc(size)
        reserved.append(pool.stats()["reserved_bytes"] // MiB)
    # by default (max_growth 20 MiB) a segment holds the request rounded up to 2 MiB, at least 20 MiB
    assert reserved == [20, 40, 70, 100, 300]
    assert pool.stats()["backing_allocs"] == 5


def test_large_segments_grow_by_doubling_when_asked():
    pool = HostPool(max_growth_bytes=64 * MiB)
    reserved = []
    for size in (2 * MiB, 19 * MiB, 30 * MiB, 30 * MiB, 200 * MiB):
        pool.alloc(size)
        reserved.append(pool.stats()["reserved_bytes"] // MiB)
    # 20 MiB minimum; then each segment as big as the large pool so far, capped at 64 MiB;
    # a request above that gets a segment of its own size
    assert reserved == [20, 40, 80, 144, 344]
    assert pool.stats()["backing_allocs"] == 5
    pool.check()


def test_growth_merges_wholly_free_segments_that_are_too_small(pool):
    kept = pool.alloc(19 * MiB)  # segment A (20 MiB), stays in use
    a, b = pool.alloc(19 * MiB), pool.alloc(19 * MiB)  # segments B and C
    pool.free(a)
    pool.free(b)
    assert pool.stats()["reserved_bytes"] == 60 * MiB
    big = pool.alloc(30 * MiB)  # fits no free block: B and C (40 MiB) become one 40 MiB segment
    s = pool.stats()
    assert (s["reserved_bytes"], s["peak_reserved_bytes"], s["segments"]) == (60 * MiB, 60 * MiB, 2)
    assert (s["backing_allocs"], s["backing_frees"]) == (4, 2)
    assert pool.owns(kept) and pool.owns(big)
    c = pool.alloc(9 * MiB)  # the merged segment's remaining 10 MiB
    assert big < c < big + 40 * MiB and pool.stats()["backing_allocs"] == 4
    small = pool.alloc(4 * KiB)  # small segments are never merged into large ones
    pool.free(small)
    pool.alloc(50 * MiB)  # the only wholly free segment is the small one: the large pool grows
    s = pool.stats()
    assert (s["reserved_bytes"], s["small_segments"]) == (112 * MiB, 1)
    for addr in (kept, big, c):
        pool.free(addr)
    pool.check()


def test_stats_after_mixed_ops(pool):
    a = pool.alloc(100)
    b = pool.alloc(5 * MiB)
    pool.free(a)
    s = pool.stats()
    assert s["allocs"] == 2 and s["frees"] == 1 and s["live_allocations"] == 1
    assert s["allocated_bytes"] == 5 * MiB and s["peak_allocated_bytes"] == 5 * MiB + 512
    assert s["reserved_bytes"] == s["peak_reserved_bytes"] == 22 * MiB
    assert s["free_bytes"] == 17 * MiB and s["largest_free_bytes"] == 15 * MiB
    assert s["fragmentation_pct"] == pytest.approx(100 * (1 - 15 / 17), abs=0.01)
    pool.free(b)
    pool.configure()  # peaks and counters restart from here
    s = pool.stats()
    assert (s["allocs"], s["frees"], s["backing_allocs"], s["peak_allocated_bytes"]) == (0, 0, 0, 0)


def test_a_segment_that_grows_in_place_takes_only_what_its_free_tail_lacks():
    pool = HostPool(grows_in_place=True)
    a = pool.alloc(18 * MiB)  # a 20 MiB segment with a 2 MiB free tail
    b = pool.alloc(30 * MiB)  # the segment grows by the 28 MiB the tail lacks, and b starts in the tail
    s = pool.stats()
    assert (s["reserved_bytes"], s["segments"], s["backing_allocs"]) == (48 * MiB, 1, 2)
    assert b == a + 18 * MiB
    c = pool.alloc(40 * MiB)  # no free tail: grows by 40 MiB
    assert pool.stats()["reserved_bytes"] == 88 * MiB and pool.stats()["segments"] == 1 and c == b + 30 * MiB
    pool.free(b)
    d = pool.alloc(25 * MiB)  # fits the 30 MiB hole: no growth
    assert d == b and pool.stats()["backing_allocs"] == 3
    small = pool.alloc(4 * KiB)  # small requests keep their own 2 MiB segments
    for addr in (a, c, d, small):
        pool.free(addr)
    s = pool.stats()
    assert (s["segments"], s["free_blocks"], s["largest_free_bytes"]) == (2, 2, 88 * MiB)
    assert pool.release() == 90 * MiB
    pool.check()


def test_growing_in_place_respects_the_cap():
    pool = HostPool(max_bytes=48 * MiB, grows_in_place=True)
    a = pool.alloc(19 * MiB)  # the whole 20 MiB segment (a 1 MiB remainder is not split off)
    with pytest.raises(OutOfMemoryError, match="cap of 48.00 MiB"):
        pool.alloc(40 * MiB)  # growing by 40 MiB would pass the cap
    b = pool.alloc(27 * MiB)  # grows by 28 MiB: 48 MiB in all, still one segment
    assert pool.stats()["reserved_bytes"] == 48 * MiB and pool.stats()["segments"] == 1
    pool.free(a)
    pool.free(b)
    pool.check()


# ---------------------------------------------------------------------------------------------
# reserve, release, exhaustion, refused frees
# ---------------------------------------------------------------------------------------------
def test_reserve_then_steady_state_makes_no_backing_allocations(pool):
    pool.reserve(512 * MiB)
    assert pool.stats()["backing_allocs"] == 1
    pool.reserve(100 * MiB)  # already held: no-op
    rng = random.Random(1)
    live = []
    for _ in range(3000):  # <= 3 x 32 MiB live in 512 MiB: some hole always fits
        if len(live) == 3 or (live and rng.random() < 0.5):
            pool.free(live.pop(rng.randrange(len(live))))
        else:
            live.append(pool.alloc(rng.randint(1 * MiB + 1, 32 * MiB)))
    assert pool.stats()["backing_allocs"] == 1
    pool.check()


def test_release_returns_only_wholly_free_segments(pool):
    kept = pool.alloc(2 * MiB)
    big = pool.alloc(200 * MiB)
    small = pool.alloc(4 * KiB)
    pool.free(big)
    pool.free(small)
    assert pool.release() == 202 * MiB
    s = pool.stats()
    assert (s["segments"], s["reserved_bytes"], s["backing_frees"]) == (1, 20 * MiB, 2)
    assert pool.owns(kept) and not pool.owns(big)
    assert pool.release() == 0
    pool.free(kept)
    assert pool.release() == 20 * MiB
    assert pool.stats()["reserved_bytes"] == 0 and pool.live_events() == 0
    pool.check()


def test_cap_exhaustion_raises_with_stats_and_pool_stays_usable():
    pool = HostPool(max_bytes=64 * MiB)
    a = pool.alloc(40 * MiB)
    with pytest.raises(OutOfMemoryError, match=r"cap of 64.00 MiB.*reserved 40.00 MiB") as e:
        pool.alloc(30 * MiB)
    assert isinstance(e.value, torch.OutOfMemoryError)
    assert "fragmentation" in str(e.value)
    pool.check()
    b = pool.alloc(20 * MiB)  # fits in the 24 MiB left under the cap (no doubling past it)
    s = pool.stats()
    assert (s["reserved_bytes"], s["ooms"], s["live_allocations"]) == (60 * MiB, 1, 2)
    with pytest.raises(OutOfMemoryError, match="exceeds the pool cap"):
        pool.reserve(100 * MiB)
    assert pool.stats()["reserved_bytes"] == 60 * MiB
    pool.free(a)
    pool.free(b)
    pool.check()


def test_backing_exhaustion_releases_cache_and_retries():
    pool = HostPool(capacity_bytes=40 * MiB)
    pool.free(pool.alloc(30 * MiB))  # a cached, wholly free 30 MiB segment
    pool.alloc(35 * MiB)  # needs a new 36 MiB segment: only fits once the cached one is returned
    s = pool.stats()
    assert (s["reserved_bytes"], s["backing_frees"], s["segments"]) == (36 * MiB, 1, 1)
    with pytest.raises(OutOfMemoryError, match="backing allocator could not provide"):
        pool.alloc(8 * MiB)
    pool.check()
    assert pool.stats()["ooms"] == 1
    with pytest.raises(OutOfMemoryError, match="larger than any pool"):
        pool.alloc(1 << 62)


def test_double_free_and_foreign_pointer_raise_and_change_nothing(pool):
    a = pool.alloc(1000)
    b = pool.alloc(3 * MiB)
    pool.free(a)
    before = pool.stats()
    bad = [(a, "double free"), (b + 512, "pointer into a block"), (0x1234, "not allocated by this pool"),
           (b + 100 * GiB, "not allocated by this pool")]
    for n, (ptr, what) in enumerate(bad, 1):
        with pytest.raises(ValueError, match=what):
            pool.free(ptr)
        after = pool.stats()
        assert after["errors"] == before["errors"] + n
        assert {k: v for k, v in after.items() if k != "errors"} == {k: v for k, v in before.items() if k != "errors"}
        pool.check()
    pool.free(b)  # still a live allocation, still freeable
    pool.check()


def test_bad_arguments_raise_clear_errors(pool):
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        pool.alloc(-1)
    with pytest.raises(TypeError, match="nbytes must be an int"):
        pool.alloc(1.5)
    with pytest.raises(TypeError, match="got bool"):
        pool.alloc(True)
    with pytest.raises(TypeError, match="ptr must be an int"):
        pool.free("0x10")
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        HostPool(max_bytes=0)
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryPool(max_bytes=-1)
    with pytest.raises(ValueError, match="initial_bytes"):
        MemoryPool(initial_bytes=2 * GiB, max_bytes=1 * GiB)
    closed = HostPool()
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.alloc(1)


# ---------------------------------------------------------------------------------------------
# stream ordering (event per freed block)
# ---------------------------------------------------------------------------------------------
def test_same_stream_reuse_needs_no_wait(pool):
    a = pool.alloc(4096, stream=1)
    pool.free(a, stream=1)
    assert pool.alloc(4096, stream=1) == a
    assert pool.stats()["stream_waits"] == 0


def test_cross_stream_reuse_waits_for_the_free_event(pool):
    a = pool.alloc(4096, stream=1)
    pool.free(a, stream=1)
    assert pool.alloc(4096, stream=2) == a  # same memory, but stream 2 had to wait
    assert pool.stats()["stream_waits"] == pool.waits() == 1
    pool.free(a, stream=2)  # the free block now carries events of streams 1 (tail) and 2
    assert pool.alloc(4096, stream=3) == a
    assert pool.stats()["stream_waits"] == 3
    pool.free(a, stream=3)
    pool.complete_events()  # the device caught up: nothing to wait for
    assert pool.alloc(4096, stream=4) == a
    assert pool.stats()["stream_waits"] == pool.waits() == 3


def test_split_remainder_keeps_events_and_merges_keep_one_per_stream(pool):
    blocks = [pool.alloc(512, stream=1) for _ in range(10)]
    for addr in blocks:
        pool.free(addr, stream=1)
    assert pool.live_events() == 1  # the merged block keeps the newest event of stream 1 only
    pool.alloc(1024, stream=2)  # waits; the remainder keeps stream 1's event
    pool.alloc(1024, stream=3)  # so this one waits too
    assert pool.stats()["stream_waits"] == pool.waits() == 2
    assert pool.live_events() == 1
    pool.check()


def test_merged_block_keeps_the_newest_event_of_a_stream(pool):
    a, b, _fence = pool.alloc(512, stream=1), pool.alloc(512, stream=1), pool.alloc(512, stream=1)
    pool.free(a, stream=1)
    pool.complete_events()  # a's event is done ...
    pool.free(b, stream=1)  # ... b's is not; the merged a+b hole must keep b's
    assert pool.alloc(1024, stream=2) == a
    assert pool.stats()["stream_waits"] == pool.waits() == 1


# ---------------------------------------------------------------------------------------------
# threads and randomized traces
# ---------------------------------------------------------------------------------------------
def test_threads_alloc_and_free_concurrently(pool):
    live_all, lock, errors = set(), threading.Lock(), []

    def worker(seed):
        rng = random.Random(seed)
        mine = []
        try:
            for _ in range(3000):
                if mine and rng.random() < 0.5:
                    addr = mine.pop(rng.randrange(len(mine)))
                    with lock:
                        live_all.remove(addr)
                    pool.free(addr, stream=seed)
                else:
                    addr = pool.alloc(int(math.exp(rng.random() * math.log(64 * MiB))), stream=seed)
                    with lock:
                        assert addr not in live_all, "two threads got the same block"
                        live_all.add(addr)
                    mine.append(addr)
            for addr in mine:
                with lock:
                    live_all.remove(addr)
                pool.free(addr, stream=seed)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    pool.check()
    s = pool.stats()
    assert s["live_allocations"] == 0 and s["allocated_bytes"] == 0 and s["allocs"] == s["frees"]


def _run_trace(pool, n_ops, seed, *, max_live=48, streams=3, cap=None):
    """Random alloc/free (sizes log-uniform 1 B .. 1 GiB), with pool.check() after every op."""
    rng = random.Random(seed)
    starts, ends = [], []  # live allocations sorted by address, with their requested ends
    sizes = {}
    log_max = math.log(GiB)
    ooms = 0
    for i in range(n_ops):
        r = rng.random()
        if starts and (r < 0.45 or len(starts) >= max_live):
            j = rng.randrange(len(starts))
            addr = starts.pop(j)
            ends.pop(j)
            size, stream = sizes.pop(addr)
            pool.free(addr, stream=stream if rng.random() < 0.9 else rng.randrange(streams))
        elif r < 0.995:
            size = int(math.exp(rng.random() * log_max))
            stream = rng.randrange(streams)
            try:
                addr = pool.alloc(size, stream=stream)
            except OutOfMemoryError:
                assert cap is not None or pool.stats()["reserved_bytes"] > 0
                ooms += 1
            else:
                assert addr % 512 == 0
                j = bisect.bisect_left(starts, addr)  # no overlap with the live neighbours
                assert j == 0 or ends[j - 1] <= addr, "overlaps the previous live block"
                assert j == len(starts) or addr + size <= starts[j], "overlaps the next live block"
                starts.insert(j, addr)
                ends.insert(j, addr + size)
                sizes[addr] = (size, stream)
        elif r < 0.997:
            pool.release()
        else:
            pool.complete_events()
        pool.check()
        if i % 16 == 0:
            s = pool.stats()
            assert s["live_allocations"] == len(starts)
            assert s["allocated_bytes"] >= sum(r512(n) for n, _ in sizes.values())
            assert cap is None or s["reserved_bytes"] <= cap
    for addr in starts:
        pool.free(addr, stream=sizes[addr][1])
        pool.check()
    pool.release()
    s = pool.stats()
    assert (s["reserved_bytes"], s["segments"], s["live_allocations"]) == (0, 0, 0)
    assert pool.live_events() == 0
    return ooms


def test_random_trace_100k_ops_invariants_after_every_op(pool):
    t0 = time.perf_counter()
    _run_trace(pool, 100_000, seed=0)
    assert time.perf_counter() - t0 < 60


def test_random_trace_growing_in_place():
    pool = HostPool(capacity_bytes=64 * GiB, grows_in_place=True)
    _run_trace(pool, 30_000, seed=3)


def test_random_trace_under_a_cap():
    cap = 3 * GiB
    pool = HostPool(max_bytes=cap)
    assert _run_trace(pool, 15_000, seed=1, cap=cap) > 0  # exhaustion happened and was survived


def test_random_trace_with_a_small_backing():
    pool = HostPool(capacity_bytes=4 * GiB)
    assert _run_trace(pool, 15_000, seed=2) > 0
    assert pool.stats()["backing_frees"] > 0


# ---------------------------------------------------------------------------------------------
# MemoryPool: availability on any machine; the rest on a GPU
# ---------------------------------------------------------------------------------------------
def test_availability_is_recorded_for_doctor():
    ok, why = ops.KERNELS["memory_pool"]
    assert memory.available() == (ok, why)
    assert ok or why
    assert memory._lib().autoglm_pool_stats_size() == ctypes.sizeof(memory._Stats)


@pytest.mark.skipif(memory.available()[0], reason="MemoryPool is available here")
def test_memory_pool_unavailable_says_why():
    with pytest.raises(RuntimeError, match="not available"):
        MemoryPool()


@pytest.fixture
def cuda_pool():
    torch.cuda.empty_cache()  # segments of regions of earlier tests, whose tensors died since, come back
    p = MemoryPool()
    yield p
    p.check()
    p.close()


@pytest.mark.gpu
@pytest.mark.skipif(os.environ.get("AUTOGLM_POOL_VMM") == "0", reason="AUTOGLM_POOL_VMM=0: cudaMalloc segments")
def test_gpu_large_pool_is_one_arena_that_grows_in_place(cuda_pool):
    """torch's segments of growing sizes come from one virtual-memory arena that grows in place
    (cudaMalloc segments would add one segment per request), and the memory works."""
    before = cuda_pool.stats()
    with cuda_pool:
        ts = [torch.empty(n * MiB, dtype=torch.uint8, device="cuda") for n in (30, 100, 250)]
        for i, t in enumerate(ts):
            t.fill_(i + 1)
        torch.cuda.synchronize()
        s = cuda_pool.stats()
        assert s["segments"] - before["segments"] <= 1, (before, s)
        assert s["backing_allocs"] > before["backing_allocs"]
        assert [int(t[-1]) for t in ts] == [1, 2, 3]
        del ts, t
    cuda_pool.check()


@pytest.mark.gpu
def test_gpu_tensors_come_from_the_pool(cuda_pool):
    before = cuda_pool.stats()
    outside = torch.empty(1 * MiB, dtype=torch.uint8, device="cuda")
    with cuda_pool:
        x = torch.empty(8 * MiB, dtype=torch.uint8, device="cuda")
        x.fill_(3)
        assert int(x[-1]) == 3
        inside = cuda_pool.stats()
        assert cuda_pool.owns(x) and not cuda_pool.owns(outside)
        assert inside["allocated_bytes"] >= 8 * MiB and inside["allocs"] > before["allocs"]
        del x
    after = cuda_pool.stats()
    assert after["allocated_bytes"] == before["allocated_bytes"], "region exit returns torch's cached segments"
    assert after["frees"] - before["frees"] == after["allocs"] - before["allocs"] > 0


@pytest.mark.gpu
def test_gpu_freed_blocks_are_reused(cuda_pool):
    with cuda_pool:
        x = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
        ptr = x.data_ptr()
        del x
    n = cuda_pool.stats()["backing_allocs"]
    assert n >= 1
    for _ in range(3):
        with cuda_pool:
            y = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
            assert cuda_pool.owns(y) and y.data_ptr() == ptr
            del y
    assert cuda_pool.stats()["backing_allocs"] == n


@pytest.mark.gpu
def test_gpu_reserve_then_steady_loop_makes_no_backing_allocations():
    pool = MemoryPool(initial_bytes=256 * MiB)
    try:
        n = pool.stats()["backing_allocs"]
        g = torch.Generator().manual_seed(0)
        for _ in range(20):  # regions of varying shapes (different prompts)
            with pool:
                sizes = torch.randint(1 * KiB, 16 * MiB, (8,), generator=g).tolist()
                ts = [torch.empty(s, dtype=torch.uint8, device="cuda") for s in sizes]
                for t in ts:
                    t.fill_(1)
                del ts
        with pool:  # a decode-like loop inside one region
            h = torch.randn(1, 2048, device="cuda")
            w = torch.randn(2048, 2048, device="cuda")
            for _ in range(50):
                h = torch.tanh(h @ w) * 0.5
            torch.cuda.synchronize()
            del h, w
        assert pool.stats()["backing_allocs"] == n
        pool.check()
    finally:
        pool.close()


CAP_SCENARIO = """
import torch
from autoglm_kernels.memory import MemoryPool
MiB = 2**20
pool = MemoryPool(max_bytes=64 * MiB)
try:
    with pool:
        t = torch.empty(128 * MiB, dtype=torch.uint8, device="cuda")
    raise SystemExit(f"no OutOfMemoryError: owned by the pool {pool.owns(t)}, stats {pool.stats()}")
except torch.OutOfMemoryError as err:
    message = str(err)
assert "autoglm_kernels MemoryPool" in message and "cap of 64.00 MiB" in message, message
assert pool.stats()["ooms"] >= 1
pool.check()
with pool:
    y = torch.ones(16 * MiB, dtype=torch.uint8, device="cuda")
    assert pool.owns(y) and bool((y == 1).all())  # (y.sum() would make a 128 MiB int64 copy: over the cap)
    del y
pool.check()
pool.close()
print("cap scenario ok")
"""


@pytest.mark.gpu
def test_gpu_cap_raises_out_of_memory_with_stats_and_stays_usable():
    """In a fresh process: the device's arena outlives MemoryPool objects, so memory earlier tests
    still hold would count against the cap (MemoryPool(max_bytes) then refuses with a ValueError)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", CAP_SCENARIO], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "cap scenario ok" in run.stdout, run.stdout + run.stderr


@pytest.mark.gpu
def test_gpu_foreign_free_is_refused_without_damage(cuda_pool):
    region = cuda_pool.use()
    region.__enter__()
    try:
        keep = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
        before = cuda_pool.stats()
        # what torch would do with a pointer the pool never gave out: refused, logged, no change
        memory._lib().autoglm_pool_free(ctypes.c_void_p(0xDEAD0000), 512, cuda_pool.index, None)
        after = cuda_pool.stats()
        assert after["errors"] == before["errors"] + 1
        assert after["allocated_bytes"] == before["allocated_bytes"]
        assert "not allocated by this pool" in cuda_pool.last_error
        cuda_pool.check()
        keep.fill_(7)
        assert int(keep[0]) == 7
        del keep
    except BaseException:
        region.__exit__(None, None, None)
        raise
    with pytest.raises(RuntimeError, match="refused 1 free"):  # reported at the region's exit
        region.__exit__(None, None, None)


@pytest.mark.gpu
def test_gpu_one_open_pool_per_device(cuda_pool):
    with pytest.raises(RuntimeError, match="already open"):
        MemoryPool()
    cuda_pool.close()
    MemoryPool().close()


@pytest.mark.gpu
def test_gpu_generate_inside_the_pool_gives_the_same_tokens(cuda_pool):
    from transformers import AutoModelForCausalLM

    from autoglm_kernels.models import reference_config

    cfg = reference_config("llama3.2-1b", tiny=True)
    model = AutoModelForCausalLM.from_config(cfg).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(1, cfg.vocab_size, (2, 19), device="cuda")
    kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False, pad_token_id=0)
    ref = model.generate(ids, **kw)
    with cuda_pool:
        out = model.generate(ids, **kw)
        assert cuda_pool.stats()["allocs"] > 0
    assert torch.equal(out, ref)
    del out
    torch.cuda.empty_cache()  # the segment `out` kept comes back once it is freed
    for _ in range(3):  # later regions reuse the earlier ones' memory: steady state, no cudaMalloc
        n = cuda_pool.stats()["backing_allocs"]
        with cuda_pool:
            assert torch.equal(model.generate(ids, **kw), ref)
    assert cuda_pool.stats()["backing_allocs"] == n
