// Device-agnostic best-fit pool allocator: the logic of the CUDA memory pool, testable on CPU.
//
// Modelled on PyTorch's CUDACachingAllocator and RMM's pool_memory_resource:
// - sizes are rounded up to 512 B;
// - requests <= 1 MiB are served from a small pool of 2 MiB segments, larger ones from a
//   large pool whose segments are at least 20 MiB (or the request rounded up to 2 MiB);
//   optionally (`max_growth` above 20 MiB) the large pool grows by doubling, each new segment
//   as big as the large pool already is, up to `max_growth` bytes;
// - where the backing can grow a segment in place (a virtual-memory arena on the GPU), a large
//   request that no free block fits first tries that: the segment grows by what its free tail
//   block lacks, so the large pool stays one contiguous arena in which all free space coalesces;
// - otherwise, a large request that no free block fits first returns the large pool's wholly free
//   segments (each too small for it, and blocks never merge across segments) and takes one
//   segment as big as they were together, or as the request: the arena defragments instead
//   of growing while idle segments of the wrong sizes sit in it (PyTorch's caching allocator
//   returns its cached segments only when cudaMalloc fails);
// - best fit: std::set of free blocks ordered by (size, address), lower_bound;
// - a block is split when the remainder is worth keeping (>= 512 B in the small pool,
//   > 1 MiB in the large pool), and merged with free neighbours (prev/next links) when
//   freed; blocks never merge across segments (backing allocations);
// - one mutex guards everything.
//
// Stream ordering (event per freed block): a freed block remembers, per stream it was used
// on, an event recorded at the free. Reuse on the same stream needs nothing (stream order);
// reuse on another stream first makes that stream wait for the event (no host sync unless
// the stream is being captured), so memory freed on one stream is never handed to another
// while kernels on the first may still touch it. Merging unions the events (the newest per
// stream wins); splitting leaves them with the free remainder.
//
// The Backing supplies segments (cudaMalloc on GPU; fake address ranges in CPU tests: the
// allocator never dereferences the memory it manages) and events.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace autoglm::pool {

constexpr size_t kAlignment = 512;              // every block size is a multiple of this
constexpr size_t kSmallRequest = size_t(1) << 20;  // requests <= 1 MiB use the small pool
constexpr size_t kSmallSegment = size_t(2) << 20;  // small pool segments: exactly 2 MiB
constexpr size_t kMinLargeSegment = size_t(20) << 20;
constexpr size_t kLargeRound = size_t(2) << 20;    // large segments: multiples of 2 MiB
constexpr size_t kDefaultMaxGrowth = kMinLargeSegment;  // no doubling
constexpr size_t kMaxRequest = size_t(1) << 56;    // larger requests are refused (overflow guard)

using Stream = uintptr_t;  // an opaque stream handle (cudaStream_t on GPU)
using Event = void*;       // an opaque event handle (cudaEvent_t on GPU); nullptr = nothing to wait for

// Where segments and events come from. Called with the allocator's mutex held.
class Backing {
 public:
  virtual ~Backing() = default;
  virtual void* allocate(size_t bytes) = 0;  // nullptr when out of memory
  virtual void deallocate(void* ptr, size_t bytes) = 0;
  virtual Event record_event(Stream stream) = 0;  // marks "all work queued on stream so far"
  virtual bool event_done(Event event) = 0;
  virtual void wait_event(Event event, Stream stream) = 0;  // later work on stream waits for event
  virtual void release_event(Event event) = 0;
  // Growing a large segment in place (a virtual-memory arena): map `bytes` more at `end`, the
  // end of a segment this backing handed out. False where it cannot (the default: cudaMalloc).
  virtual bool extend(void* end, size_t bytes) {
    (void)end;
    (void)bytes;
    return false;
  }
};

// Plain data, mirrored field by field by ctypes in autoglm_kernels/memory.py.
struct Stats {
  uint64_t reserved_bytes;       // held from the backing
  uint64_t allocated_bytes;      // handed out (block sizes, i.e. after rounding)
  uint64_t peak_reserved_bytes;
  uint64_t peak_allocated_bytes;
  uint64_t free_bytes;           // reserved - allocated
  uint64_t largest_free_bytes;
  uint64_t free_blocks;
  uint64_t segments;
  uint64_t small_segments;
  uint64_t backing_allocs;       // cudaMalloc calls that succeeded
  uint64_t backing_frees;
  uint64_t allocs;
  uint64_t frees;
  uint64_t live_allocations;
  uint64_t ooms;
  uint64_t errors;               // refused frees (double free, foreign pointer)
  uint64_t stream_waits;         // cross-stream reuses that had to wait for an event
  uint64_t max_bytes;            // cap on reserved bytes; 0 = none
  double fragmentation;          // 1 - largest_free / free (0 when nothing is free)
};

enum class Status : int { kOk = 0, kOutOfMemory = 1, kInvalid = 2 };

class Allocator {
 public:
  // max_bytes: cap on reserved bytes (0 = none); max_growth: largest segment the doubling
  // growth creates (a bigger request still gets a segment of its own size; 20 MiB = no doubling).
  explicit Allocator(Backing* backing, size_t max_bytes = 0, size_t max_growth = kDefaultMaxGrowth);
  ~Allocator();  // returns every segment to the backing
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // On failure *out is untouched and *error (if given) says why. A refused free changes nothing;
  // an out-of-memory allocate may have returned cached free segments to the backing first.
  Status allocate(size_t size, Stream stream, void** out, std::string* error);
  Status deallocate(void* ptr, Stream stream, std::string* error);
  // Grows the large pool in one backing allocation so that reserved >= bytes.
  Status reserve(size_t bytes, std::string* error);
  // Returns every wholly free segment to the backing; the bytes released.
  size_t release();
  // New cap and growth limit; peaks and counters restart from the current state.
  void configure(size_t max_bytes, size_t max_growth);

  Stats stats() const;
  bool owns(const void* ptr) const;  // inside one of this pool's segments
  // Full consistency check (tiling, links, coalescing, free sets, stats). O(blocks).
  bool check(std::string* error) const;

 private:
  struct Pending {
    Stream stream;
    Event event;
    uint64_t seq;  // record order: on one stream a later event implies the earlier ones
  };
  struct Block {
    Block(uintptr_t a, size_t n, bool is_small) : addr(a), size(n), small(is_small) {}
    uintptr_t addr;
    size_t size;
    bool small;
    bool allocated = false;
    Block* prev = nullptr;  // neighbours within the segment
    Block* next = nullptr;
    Stream stream = 0;      // stream of the current allocation
    std::vector<Pending> pending;  // free blocks only
  };
  struct BySizeThenAddr {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->addr < b->addr;
    }
  };
  using FreeSet = std::set<Block*, BySizeThenAddr>;
  struct Segment {
    size_t size;
    bool small;
    Block* head;
  };

  FreeSet& free_set(bool small) { return small ? free_small_ : free_large_; }
  Block* best_fit(bool small, size_t size);
  bool grow(size_t rounded, bool small, std::string* why);
  bool try_segment(size_t bytes, bool small);
  bool extend_segment(size_t rounded);
  void add_segment(void* ptr, size_t bytes, bool small);
  size_t release_free_segments(bool large_only = false);
  void merge_into(Block* left, Block* right);  // left absorbs right (both free, neighbours)
  void release_events(std::vector<Pending>& pending);
  std::string describe() const;  // one line of stats for error messages
  Stats stats_locked() const;

  Backing* backing_;
  size_t max_bytes_;
  size_t max_growth_;
  mutable std::mutex mutex_;
  FreeSet free_small_, free_large_;
  std::map<uintptr_t, Segment> segments_;          // by base address
  std::unordered_map<uintptr_t, Block*> live_;     // allocated blocks by address
  size_t reserved_ = 0, large_reserved_ = 0, allocated_ = 0;
  size_t peak_reserved_ = 0, peak_allocated_ = 0;
  uint64_t backing_allocs_ = 0, backing_frees_ = 0, allocs_ = 0, frees_ = 0;
  uint64_t ooms_ = 0, errors_ = 0, stream_waits_ = 0, event_seq_ = 0;
};

// Message of the last failed pool C-API call on this thread (see host_pool.cpp, pool_cuda.cpp).
std::string& thread_error();

}  // namespace autoglm::pool
