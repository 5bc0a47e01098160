"""MemoryPool: the native best-fit pool allocator (csrc/pool/) under torch's CUDA allocations.

    pool = MemoryPool(initial_bytes=512 << 20, max_bytes=8 << 30)
    with pool:                        # or `with pool.use():`; one region per generate, say
        out = model.generate(...)
    pool.stats()                      # reserved / allocated / peaks / backing allocations / ...

How it plugs in: torch's caching allocator keeps serving tensors, but inside a region it takes
the *segments* of a private torch.cuda.MemPool from this pool (CUDAPluggableAllocator ->
autoglm_pool_alloc / autoglm_pool_free) instead of from cudaMalloc/cudaFree. Each region gets a
fresh torch MemPool, dropped at exit and followed by torch.cuda.empty_cache(), so torch hands
its cached segments back (the exit also trims torch's default-pool cache); here they
coalesce with their neighbours, and the next region (a longer prompt, say) reuses the same
device memory without cudaMalloc and without segments cached for other sizes piling up.
`reserve()` sizes the arena up front so that steady-state decode makes no backing allocation.
On the GPU the pool's `allocs`/`frees` therefore count torch segments (>= 2 MiB), not tensors.

Rules:
- one open MemoryPool per device: torch calls global C symbols, so the pool behind them is
  per device (process-wide); close() the first before opening another;
- a region routes the current thread's allocations only (torch.cuda.use_mem_pool semantics);
- a tensor that outlives its region keeps its segment; once freed, the segment comes back to
  the pool at the next torch.cuda.empty_cache();
- streams: memory freed on one stream is reused on another only after the second stream waits
  for an event recorded at the free (see csrc/pool/allocator.h);
- torch.cuda.empty_cache() does not shrink the pool (use release()), and torch's
  expandable_segments mode does not mix with MemPool allocators.

HostPool runs the same allocator over a simulated device (fake, never dereferenced address
ranges), so its logic is tested on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import operator
import threading
import weakref
from typing import Optional, Union

import torch

from . import _native, ops

OutOfMemoryError = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

DEFAULT_MAX_GROWTH = 20 << 20  # largest segment the doubling growth creates; 20 MiB: none (csrc/pool/allocator.h)
_OK, _OUT_OF_MEMORY, _INVALID = 0, 1, 2

_STAT_FIELDS = (
    "reserved_bytes", "allocated_bytes", "peak_reserved_bytes", "peak_allocated_bytes", "free_bytes",
    "largest_free_bytes", "free_blocks", "segments", "small_segments", "backing_allocs", "backing_frees",
    "allocs", "frees", "live_allocations", "ooms", "errors", "stream_waits", "max_bytes",
)


class _Stats(ctypes.Structure):
    """Mirror of autoglm::pool::Stats (csrc/pool/allocator.h)."""

    _fields_ = [(name, ctypes.c_uint64) for name in _STAT_FIELDS] + [("fragmentation", ctypes.c_double)]


def _stats_dict(s: _Stats) -> dict:
    d = {name: int(getattr(s, name)) for name in _STAT_FIELDS}
    d["fragmentation_pct"] = round(100.0 * s.fragmentation, 2)  # 1 - largest free block / free bytes
    return d


def available() -> tuple[bool, str]:
    """(True, "") where MemoryPool can run here, else (False, why): needs _C built with CUDA and a GPU."""
    return ops.KERNELS["memory_pool"]


@functools.lru_cache(maxsize=None)
def _lib() -> ctypes.CDLL:
    """The _C shared object with the pool's C API declared."""
    ok, why = _native.load()
    if not ok:
        raise RuntimeError(f"the memory pool needs the native extension: {why}")
    lib = ctypes.CDLL(_native.library_path())
    u64, p, i = ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
    sigs = {
        "autoglm_pool_last_error_message": (ctypes.c_char_p, []),
        "autoglm_pool_stats_size": (u64, []),
        "autoglm_pool_host_create": (p, [u64, u64, u64, ctypes.c_int]),
        "autoglm_pool_host_destroy": (None, [p]),
        "autoglm_pool_host_alloc": (i, [p, u64, u64, ctypes.POINTER(u64)]),
        "autoglm_pool_host_free": (i, [p, u64, u64]),
        "autoglm_pool_host_reserve": (i, [p, u64]),
        "autoglm_pool_host_release": (u64, [p]),
        "autoglm_pool_host_configure": (None, [p, u64, u64]),
        "autoglm_pool_host_stats": (None, [p, ctypes.POINTER(_Stats)]),
        "autoglm_pool_host_owns": (i, [p, u64]),
        "autoglm_pool_host_check": (i, [p]),
        "autoglm_pool_host_complete_events": (None, [p]),
        "autoglm_pool_host_live_events": (u64, [p]),
        "autoglm_pool_host_waits": (u64, [p]),
    }
    if _native.build_info()["cuda"]:
        sigs.update({
            "autoglm_pool_configure": (i, [i, u64, u64]),
            "autoglm_pool_reserve": (i, [i, u64]),
            "autoglm_pool_release": (u64, [i]),
            "autoglm_pool_stats": (i, [i, ctypes.POINTER(_Stats)]),
            "autoglm_pool_check": (i, [i]),
            "autoglm_pool_owns": (i, [i, u64]),
            "autoglm_pool_device_error": (ctypes.c_char_p, [i]),
            "autoglm_pool_free": (None, [p, ctypes.c_size_t, i, p]),
        })
    for name, (restype, argtypes) in sigs.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise RuntimeError(f"_C lacks {name}: it was built before csrc/pool/ existed; rebuild it with "
                               "`pip install --no-build-isolation -e .`") from None
        fn.restype, fn.argtypes = restype, argtypes
    if lib.autoglm_pool_stats_size() != ctypes.sizeof(_Stats):
        raise RuntimeError("_C's pool Stats struct does not match autoglm_kernels/memory.py; rebuild _C")
    return lib


def _last_error() -> str:
    return (_lib().autoglm_pool_last_error_message() or b"").decode(errors="replace")


def _raise(status: int, what: str) -> None:
    message = f"{what}: {_last_error()}"
    if status == _OUT_OF_MEMORY:
        raise OutOfMemoryError(message)
    raise ValueError(message)


def _nbytes(name: str, value, *, positive: bool = False) -> int:
    """`value` as a byte count: an int in [0, 2**63) (or > 0), else a clear TypeError/ValueError."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int number of bytes, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int number of bytes, got {type(value).__name__}") from None
    if n < 0 or (positive and n == 0) or n >= 2**63:
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and < 2**63 bytes, got {n}")
    return n


# ---------------------------------------------------------------------------------------------
# HostPool: the allocator over a simulated device, for tests
# ---------------------------------------------------------------------------------------------
class HostPool:
    """The pool allocator over a simulated device of `capacity_bytes` (fake addresses).

    Addresses are plain ints that are never dereferenced, so GiB-sized requests cost no RAM;
    consecutive segments are adjacent (the allocator must still not merge across them).
    `stream` arguments are opaque ints; events recorded at frees stay pending until
    complete_events(), so cross-stream waits show in stats()["stream_waits"].
    grows_in_place: the last segment can grow into the addresses after it, as the GPU pool's
    virtual-memory arena does.
    """

    def __init__(self, capacity_bytes: int = 1 << 50, max_bytes: Optional[int] = None, *,
                 max_growth_bytes: int = DEFAULT_MAX_GROWTH, grows_in_place: bool = False):
        capacity = _nbytes("capacity_bytes", capacity_bytes)
        cap = 0 if max_bytes is None else _nbytes("max_bytes", max_bytes, positive=True)
        growth = _nbytes("max_growth_bytes", max_growth_bytes, positive=True)
        self._lib = _lib()
        self._handle = self._lib.autoglm_pool_host_create(capacity, cap, growth, int(bool(grows_in_place)))
        if not self._handle:
            raise MemoryError("could not create the host pool")

    def _h(self):
        if not self._handle:
            raise RuntimeError("this HostPool is closed")
        return self._handle

    def alloc(self, nbytes: int, stream: int = 0) -> int:
        """Address of a block of >= nbytes (rounded up to 512 B); OutOfMemoryError when exhausted."""
        out = ctypes.c_uint64()
        status = self._lib.autoglm_pool_host_alloc(self._h(), _nbytes("nbytes", nbytes), _nbytes("stream", stream),
                                                   ctypes.byref(out))
        if status:
            _raise(status, f"HostPool.alloc({nbytes})")
        return out.value

    def free(self, ptr: int, stream: int = 0) -> None:
        """Return a block; ValueError (and no change) for a pointer that is not a live allocation."""
        status = self._lib.autoglm_pool_host_free(self._h(), _nbytes("ptr", ptr), _nbytes("stream", stream))
        if status:
            _raise(status, "HostPool.free")

    def reserve(self, nbytes: int) -> None:
        """Grow the large pool in one backing allocation so that reserved >= nbytes."""
        status = self._lib.autoglm_pool_host_reserve(self._h(), _nbytes("nbytes", nbytes))
        if status:
            _raise(status, "HostPool.reserve")

    def release(self) -> int:
        """Return every wholly free segment to the backing; the bytes released."""
        return int(self._lib.autoglm_pool_host_release(self._h()))

    def configure(self, max_bytes: Optional[int] = None, max_growth_bytes: int = DEFAULT_MAX_GROWTH) -> None:
        """New cap / growth limit; peaks and counters restart from the current state."""
        cap = 0 if max_bytes is None else _nbytes("max_bytes", max_bytes, positive=True)
        self._lib.autoglm_pool_host_configure(self._h(), cap, _nbytes("max_growth_bytes", max_growth_bytes, positive=True))

    def stats(self) -> dict:
        s = _Stats()
        self._lib.autoglm_pool_host_stats(self._h(), ctypes.byref(s))
        return _stats_dict(s)

    def owns(self, ptr: int) -> bool:
        return bool(self._lib.autoglm_pool_host_owns(self._h(), _nbytes("ptr", ptr)))

    def check(self) -> None:
        """Verify every invariant in C++ (tiling, links, coalescing, free sets, stats); RuntimeError if broken."""
        if self._lib.autoglm_pool_host_check(self._h()):
            raise RuntimeError(_last_error())

    def complete_events(self) -> None:
        """Mark every recorded event complete (as if the simulated device caught up)."""
        self._lib.autoglm_pool_host_complete_events(self._h())

    def live_events(self) -> int:
        """Events recorded and not yet released by the allocator (leak check)."""
        return int(self._lib.autoglm_pool_host_live_events(self._h()))

    def waits(self) -> int:
        """Waits the simulated device was asked for (should equal stats()["stream_waits"])."""
        return int(self._lib.autoglm_pool_host_waits(self._h()))

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.autoglm_pool_host_destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()


# ---------------------------------------------------------------------------------------------
# MemoryPool: the allocator on a CUDA device, plugged under torch
# ---------------------------------------------------------------------------------------------
_registry_lock = threading.Lock()
_open_pools: dict[int, weakref.ref] = {}  # device index -> the open MemoryPool
_pluggable = None  # the CUDAPluggableAllocator, kept for the process: torch pools hold a raw pointer to it


def _pluggable_allocator():
    global _pluggable
    with _registry_lock:
        if _pluggable is None:
            _pluggable = torch.cuda.memory.CUDAPluggableAllocator(
                _native.library_path(), "autoglm_pool_alloc", "autoglm_pool_free")
        return _pluggable


def _cuda_index(device) -> int:
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(f"device must be a CUDA device such as 'cuda:0' or 0, got {device!r} ({e})") from None
    if device.type != "cuda":
        raise ValueError(f"MemoryPool manages CUDA memory; got device {device}")
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"cuda:{index} does not exist ({torch.cuda.device_count()} CUDA devices visible)")
    return index


class _Region:
    """One region: a fresh torch.cuda.MemPool whose segments come from the pool, active on this thread."""

    def __init__(self, pool: "MemoryPool"):
        self._pool = pool
        self._mempool = None
        self._ctx = None

    def __enter__(self) -> "MemoryPool":
        pool = self._pool
        pool._check_open()
        if self._ctx is not None:
            raise RuntimeError("this region is already active; use pool.use() again for a nested region")
        with torch.cuda.device(pool.index):
            self._mempool = torch.cuda.MemPool(_pluggable_allocator().allocator())
        self._before = pool._raw_stats()
        self._ctx = torch.cuda.use_mem_pool(self._mempool, device=pool.index)
        self._ctx.__enter__()
        return pool

    def __exit__(self, exc_type, exc, tb) -> bool:
        ctx, self._ctx = self._ctx, None
        try:
            # Not given the exception: thrown into use_mem_pool's generator, its traceback would
            # keep the torch MemPool (a generator local) alive after the region.
            ctx.__exit__(None, None, None)
        finally:
            # The last references to the torch MemPool (the context manager keeps its arguments).
            # A dropped MemPool's cached segments go back through our free only at the next
            # empty_cache (PyTorch's documented MemPool behaviour; without it the H100 run saw
            # every region take new segments), which also trims torch's default-pool cache.
            del ctx
            self._mempool = None
            with torch.cuda.device(self._pool.index):
                torch.cuda.empty_cache()
        pool, before = self._pool, self._before
        after = pool._raw_stats()
        if exc_type is not None and issubclass(exc_type, OutOfMemoryError) and after.ooms > before.ooms:
            raise OutOfMemoryError(f"{exc}\n\nautoglm_kernels MemoryPool on cuda:{pool.index}: {pool.last_error}") from exc
        if exc_type is None and after.errors > before.errors:
            raise RuntimeError(f"autoglm_kernels MemoryPool on cuda:{pool.index} refused {after.errors - before.errors} "
                               f"free(s) in this region (state left intact): {pool.last_error}")
        return False


class MemoryPool:
    """Route the CUDA allocations of a region (e.g. a whole `generate`) through the native pool.

    initial_bytes: reserve() this much up front (one cudaMalloc).
    max_bytes: cap on the bytes the pool holds (None = no cap); past it, allocations in a
        region raise torch.OutOfMemoryError with the pool's stats, and the pool stays usable.
    device: the CUDA device (default: the current one).
    max_growth_bytes: largest segment the doubling growth creates. The default, 20 MiB, means no
        doubling: a new segment is as big as the request, at least 20 MiB, as in torch's caching
        allocator. More means fewer cudaMallocs while the arena grows and a higher peak.
    """

    def __init__(self, initial_bytes: int = 0, max_bytes: Optional[int] = None, device=None, *,
                 max_growth_bytes: int = DEFAULT_MAX_GROWTH):
        initial = _nbytes("initial_bytes", initial_bytes)
        cap = 0 if max_bytes is None else _nbytes("max_bytes", max_bytes, positive=True)
        growth = _nbytes("max_growth_bytes", max_growth_bytes, positive=True)
        if cap and initial > cap:
            raise ValueError(f"initial_bytes ({initial}) is larger than max_bytes ({cap})")
        self._closed = True
        ok, why = available()
        if not ok:
            raise RuntimeError(f"MemoryPool is not available here: {why}")
        self.index = _cuda_index(device)
        self._lib = _lib()
        self._local = threading.local()
        with _registry_lock:
            ref = _open_pools.get(self.index)
            other = ref() if ref is not None else None
            if other is not None and not other._closed:
                raise RuntimeError(
                    f"a MemoryPool is already open on cuda:{self.index}: torch calls the pool through global C "
                    "symbols, so there is one pool per device; close() the other one first")
            _open_pools[self.index] = weakref.ref(self)
            self._closed = False
        self._lib.autoglm_pool_configure(self.index, cap, growth)
        if cap:
            # The device's arena outlives MemoryPool objects: drop what an earlier pool left cached,
            # and refuse a cap below what tensors from earlier regions still hold.
            self.release()
            held = self._raw_stats().reserved_bytes
            if held > cap:
                self.close()
                raise ValueError(
                    f"max_bytes ({cap / 2**20:.2f} MiB) is below the {held / 2**20:.2f} MiB the cuda:{self.index} pool "
                    "still holds for tensors allocated in earlier MemoryPool regions; free those tensors (and call "
                    "torch.cuda.empty_cache()) or use a larger cap")
        if initial:
            try:
                self.reserve(initial)
            except Exception:
                self.close()
                raise

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.index)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MemoryPool is closed")

    def use(self) -> _Region:
        """A context manager routing this thread's CUDA allocations in it through the pool."""
        self._check_open()
        return _Region(self)

    def __enter__(self) -> "MemoryPool":
        region = self.use()
        region.__enter__()
        self._local.__dict__.setdefault("regions", []).append(region)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self._local.regions.pop().__exit__(exc_type, exc, tb)

    def _raw_stats(self) -> _Stats:
        s = _Stats()
        self._lib.autoglm_pool_stats(self.index, ctypes.byref(s))
        return s

    def stats(self) -> dict:
        """reserved/allocated/peak bytes, segments, backing_allocs (cudaMalloc calls), allocs/frees,
        largest free block, fragmentation_pct, ooms, errors, stream_waits (since this pool opened)."""
        return _stats_dict(self._raw_stats())

    def reserve(self, nbytes: int) -> None:
        """Grow the arena (one cudaMalloc) so that it holds >= nbytes; OutOfMemoryError if it cannot."""
        self._check_open()
        status = self._lib.autoglm_pool_reserve(self.index, _nbytes("nbytes", nbytes))
        if status:
            _raise(status, f"MemoryPool.reserve on cuda:{self.index}")

    def release(self) -> int:
        """cudaFree every wholly free segment; the bytes released."""
        return int(self._lib.autoglm_pool_release(self.index))

    def owns(self, x: Union[torch.Tensor, int]) -> bool:
        """Whether a tensor's storage (or a device address) lies in this pool's memory."""
        ptr = x.data_ptr() if isinstance(x, torch.Tensor) else _nbytes("ptr", x)
        return bool(self._lib.autoglm_pool_owns(self.index, ptr))

    def check(self) -> None:
        """Verify the allocator's invariants (C++, O(blocks)); RuntimeError if one is broken."""
        if self._lib.autoglm_pool_check(self.index):
            raise RuntimeError(_last_error())

    @property
    def last_error(self) -> str:
        """The last failure the allocator saw from torch's calls on this device ('' if none)."""
        return (self._lib.autoglm_pool_device_error(self.index) or b"").decode(errors="replace")

    def close(self) -> None:
        """Release the free segments and let another MemoryPool open on this device."""
        if self._closed:
            return
        if getattr(self._local, "regions", None):
            raise RuntimeError("close() inside an active `with pool:` region")
        self.release()
        with _registry_lock:
            if _open_pools.get(self.index) is not None and _open_pools[self.index]() is self:
                del _open_pools[self.index]
            self._closed = True

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        if self._closed:
            return "MemoryPool(closed)"
        s = self.stats()
        cap = f"{s['max_bytes'] / 2**20:.0f} MiB" if s["max_bytes"] else "none"
        return (f"MemoryPool(cuda:{self.index}, reserved {s['reserved_bytes'] / 2**20:.1f} MiB, "
                f"allocated {s['allocated_bytes'] / 2**20:.1f} MiB, {s['segments']} segments, cap {cap})")
