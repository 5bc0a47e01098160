// The best-fit pool allocator (see allocator.h for the design).
#include "pool/allocator.h"

#include <algorithm>
#include <functional>
#include <cinttypes>
#include <cstdio>

namespace autoglm::pool {
namespace {

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

std::string fmt_bytes(uint64_t bytes) {
  char buf[64];
  if (bytes >= (uint64_t(1) << 20)) {
    std::snprintf(buf, sizeof(buf), "%.2f MiB", double(bytes) / double(1 << 20));
  } else {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 " B", bytes);
  }
  return buf;
}

std::string fmt_ptr(uintptr_t p) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%" PRIxPTR, p);
  return buf;
}

}  // namespace

std::string& thread_error() {
  static thread_local std::string message;
  return message;
}

Allocator::Allocator(Backing* backing, size_t max_bytes, size_t max_growth)
    : backing_(backing), max_bytes_(max_bytes), max_growth_(max_growth ? max_growth : kDefaultMaxGrowth) {}

Allocator::~Allocator() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& [base, seg] : segments_) {
    for (Block* b = seg.head; b != nullptr;) {
      Block* next = b->next;
      release_events(b->pending);
      delete b;
      b = next;
    }
    backing_->deallocate(reinterpret_cast<void*>(base), seg.size);
  }
  segments_.clear();
  live_.clear();
  free_small_.clear();
  free_large_.clear();
}

Allocator::Block* Allocator::best_fit(bool small, size_t size) {
  Block key(0, size, small);  // address 0 sorts before every block of this size
  FreeSet& set = free_set(small);
  auto it = set.lower_bound(&key);
  return it == set.end() ? nullptr : *it;
}

Status Allocator::allocate(size_t size, Stream stream, void** out, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (size > kMaxRequest) {
    ++ooms_;
    if (error) *error = "out of memory: a request of " + std::to_string(size) + " bytes is larger than any pool can hold; " + describe();
    return Status::kOutOfMemory;
  }
  const size_t rounded = round_up(std::max<size_t>(size, 1), kAlignment);
  const bool small = rounded <= kSmallRequest;
  Block* block = best_fit(small, rounded);
  if (block == nullptr) {
    std::string why;
    if (!grow(rounded, small, &why)) {
      ++ooms_;
      if (error) {
        *error = "out of memory allocating " + std::to_string(size) + " bytes (rounded to " + fmt_bytes(rounded) +
                 ", " + (small ? "small" : "large") + " pool): " + why + "; " + describe();
      }
      return Status::kOutOfMemory;
    }
    block = best_fit(small, rounded);  // the new segment holds at least `rounded` bytes
  }
  FreeSet& set = free_set(small);
  set.erase(block);
  // Work on other streams that used this memory must finish before `stream` touches it.
  for (const Pending& p : block->pending) {
    if (p.stream != stream && !backing_->event_done(p.event)) {
      backing_->wait_event(p.event, stream);
      ++stream_waits_;
    }
  }
  const size_t remainder = block->size - rounded;
  if (small ? remainder >= kAlignment : remainder > kSmallRequest) {
    Block* rest = new Block(block->addr + rounded, remainder, small);
    rest->prev = block;
    rest->next = block->next;
    if (block->next != nullptr) block->next->prev = rest;
    block->next = rest;
    rest->pending = std::move(block->pending);  // the free remainder keeps the events
    block->pending.clear();
    block->size = rounded;
    set.insert(rest);
  } else {
    release_events(block->pending);
  }
  block->allocated = true;
  block->stream = stream;
  live_.emplace(block->addr, block);
  allocated_ += block->size;
  peak_allocated_ = std::max(peak_allocated_, allocated_);
  ++allocs_;
  *out = reinterpret_cast<void*>(block->addr);
  return Status::kOk;
}

bool Allocator::grow(size_t rounded, bool small, std::string* why) {
  // Candidate segment sizes, preferred first (non-increasing).
  std::vector<size_t> sizes;
  if (small) {
    sizes = {kSmallSegment};
  } else {
    if (extend_segment(rounded)) return true;
    const size_t want = round_up(rounded, kLargeRound);
    // best_fit found no block: every wholly free large segment is smaller than the request.
    // Return them and take one segment as big as they were together (see allocator.h).
    const size_t merged = release_free_segments(/*large_only=*/true);
    const size_t doubled = std::max(kMinLargeSegment, std::min(large_reserved_, max_growth_));
    sizes = {std::max({want, merged, doubled}), std::max({want, merged, kMinLargeSegment}), std::max(want, merged),
             want, rounded};
    std::sort(sizes.begin(), sizes.end(), std::greater<size_t>());
    sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  }
  auto attempt = [&]() {
    const size_t room = max_bytes_ ? max_bytes_ - std::min(reserved_, max_bytes_) : SIZE_MAX;
    for (size_t s : sizes) {
      if (s > room) continue;
      if (try_segment(s, small)) return true;
    }
    return false;
  };
  if (attempt()) return true;
  // Out of room under the cap, or the backing is out of memory: give back the cached free
  // segments (which may also free device memory for the backing) and try once more.
  if (release_free_segments() > 0 && attempt()) return true;
  const size_t needed = small ? kSmallSegment : rounded;
  const size_t room = max_bytes_ ? max_bytes_ - std::min(reserved_, max_bytes_) : SIZE_MAX;
  if (needed > room) {
    *why = "the pool cap of " + fmt_bytes(max_bytes_) + " leaves room for " + fmt_bytes(room) + " more";
  } else {
    *why = "the backing allocator could not provide a segment of " + fmt_bytes(needed);
  }
  return false;
}

bool Allocator::extend_segment(size_t rounded) {
  for (auto& [base, seg] : segments_) {
    if (seg.small) continue;
    Block* tail = seg.head;
    while (tail->next != nullptr) tail = tail->next;
    const size_t free_tail = tail->allocated ? 0 : tail->size;  // < rounded: best_fit found nothing
    const size_t need = round_up(rounded - std::min(rounded, free_tail), kLargeRound);
    if (max_bytes_ && reserved_ + need > max_bytes_) return false;
    const uintptr_t end = base + seg.size;
    if (!backing_->extend(reinterpret_cast<void*>(end), need)) continue;
    seg.size += need;
    reserved_ += need;
    large_reserved_ += need;
    peak_reserved_ = std::max(peak_reserved_, reserved_);
    ++backing_allocs_;
    if (!tail->allocated) {  // the free tail absorbs the new range (its events stay with it)
      free_large_.erase(tail);
      tail->size += need;
      free_large_.insert(tail);
    } else {
      Block* block = new Block(end, need, /*is_small=*/false);
      block->prev = tail;
      tail->next = block;
      free_large_.insert(block);
    }
    return true;
  }
  return false;
}

bool Allocator::try_segment(size_t bytes, bool small) {
  void* ptr = backing_->allocate(bytes);
  if (ptr == nullptr) return false;
  add_segment(ptr, bytes, small);
  return true;
}

void Allocator::add_segment(void* ptr, size_t bytes, bool small) {
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  Block* head = new Block(addr, bytes, small);
  segments_.emplace(addr, Segment{bytes, small, head});
  reserved_ += bytes;
  if (!small) large_reserved_ += bytes;
  peak_reserved_ = std::max(peak_reserved_, reserved_);
  ++backing_allocs_;
  free_set(small).insert(head);
}

size_t Allocator::release_free_segments(bool large_only) {
  size_t released = 0;
  for (auto it = segments_.begin(); it != segments_.end();) {
    Block* head = it->second.head;
    if (head->allocated || head->next != nullptr || (large_only && head->small)) {  // free neighbours are always merged, so
      ++it;                                         // a free head without next spans the segment
      continue;
    }
    free_set(head->small).erase(head);
    release_events(head->pending);
    backing_->deallocate(reinterpret_cast<void*>(it->first), it->second.size);
    reserved_ -= it->second.size;
    if (!head->small) large_reserved_ -= it->second.size;
    released += it->second.size;
    ++backing_frees_;
    delete head;
    it = segments_.erase(it);
  }
  return released;
}

Status Allocator::deallocate(void* ptr, Stream stream, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  auto it = live_.find(addr);
  if (it == live_.end()) {
    ++errors_;
    if (error) {
      auto seg = segments_.upper_bound(addr);
      const bool inside = seg != segments_.begin() && addr < std::prev(seg)->first + std::prev(seg)->second.size;
      *error = "free(" + fmt_ptr(addr) + "): " +
               (inside ? "not the start of a live allocation of this pool (double free, or a pointer into a block)"
                       : "the pointer was not allocated by this pool") +
               "; nothing was changed";
    }
    return Status::kInvalid;
  }
  Block* block = it->second;
  live_.erase(it);
  block->allocated = false;
  allocated_ -= block->size;
  ++frees_;
  Event event = backing_->record_event(stream);
  if (event != nullptr) block->pending.push_back(Pending{stream, event, ++event_seq_});
  FreeSet& set = free_set(block->small);
  if (block->prev != nullptr && !block->prev->allocated) {
    Block* left = block->prev;
    set.erase(left);  // before its size changes: the set is ordered by size
    merge_into(left, block);
    block = left;
  }
  if (block->next != nullptr && !block->next->allocated) {
    Block* right = block->next;
    set.erase(right);
    merge_into(block, right);
  }
  set.insert(block);
  return Status::kOk;
}

void Allocator::merge_into(Block* left, Block* right) {
  left->size += right->size;
  left->next = right->next;
  if (right->next != nullptr) right->next->prev = left;
  for (const Pending& r : right->pending) {
    auto same = std::find_if(left->pending.begin(), left->pending.end(),
                             [&](const Pending& p) { return p.stream == r.stream; });
    if (same == left->pending.end()) {
      left->pending.push_back(r);
    } else if (r.seq > same->seq) {  // the later event on a stream implies the earlier one
      backing_->release_event(same->event);
      *same = r;
    } else {
      backing_->release_event(r.event);
    }
  }
  delete right;
}

void Allocator::release_events(std::vector<Pending>& pending) {
  for (const Pending& p : pending) backing_->release_event(p.event);
  pending.clear();
}

Status Allocator::reserve(size_t bytes, std::string* error) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (bytes <= reserved_) return Status::kOk;
  if (bytes > kMaxRequest) {
    if (error) *error = "reserve(" + std::to_string(bytes) + "): larger than any pool can hold";
    return Status::kOutOfMemory;
  }
  const size_t need = round_up(bytes - reserved_, kLargeRound);
  if (max_bytes_ && reserved_ + need > max_bytes_) {
    if (error) *error = "reserve(" + fmt_bytes(bytes) + ") exceeds the pool cap of " + fmt_bytes(max_bytes_) + "; " + describe();
    return Status::kOutOfMemory;
  }
  if (!try_segment(need, /*small=*/false)) {
    if (error) *error = "reserve(" + fmt_bytes(bytes) + "): the backing allocator could not provide " + fmt_bytes(need) + "; " + describe();
    return Status::kOutOfMemory;
  }
  return Status::kOk;
}

size_t Allocator::release() {
  std::lock_guard<std::mutex> lock(mutex_);
  return release_free_segments();
}

void Allocator::configure(size_t max_bytes, size_t max_growth) {
  std::lock_guard<std::mutex> lock(mutex_);
  max_bytes_ = max_bytes;
  max_growth_ = max_growth ? max_growth : kDefaultMaxGrowth;
  peak_reserved_ = reserved_;
  peak_allocated_ = allocated_;
  backing_allocs_ = backing_frees_ = allocs_ = frees_ = ooms_ = errors_ = stream_waits_ = 0;
}

Stats Allocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_locked();
}

Stats Allocator::stats_locked() const {
  Stats s{};
  s.reserved_bytes = reserved_;
  s.allocated_bytes = allocated_;
  s.peak_reserved_bytes = peak_reserved_;
  s.peak_allocated_bytes = peak_allocated_;
  s.free_bytes = reserved_ - allocated_;
  size_t largest = 0;
  if (!free_small_.empty()) largest = (*free_small_.rbegin())->size;
  if (!free_large_.empty()) largest = std::max(largest, (*free_large_.rbegin())->size);
  s.largest_free_bytes = largest;
  s.free_blocks = free_small_.size() + free_large_.size();
  s.segments = segments_.size();
  s.small_segments = (reserved_ - large_reserved_) / kSmallSegment;
  s.backing_allocs = backing_allocs_;
  s.backing_frees = backing_frees_;
  s.allocs = allocs_;
  s.frees = frees_;
  s.live_allocations = live_.size();
  s.ooms = ooms_;
  s.errors = errors_;
  s.stream_waits = stream_waits_;
  s.max_bytes = max_bytes_;
  s.fragmentation = s.free_bytes ? 1.0 - double(largest) / double(s.free_bytes) : 0.0;
  return s;
}

std::string Allocator::describe() const {
  const Stats s = stats_locked();
  char frag[32];
  std::snprintf(frag, sizeof(frag), "%.1f%%", 100.0 * s.fragmentation);
  return "pool: reserved " + fmt_bytes(s.reserved_bytes) + " in " + std::to_string(s.segments) + " segments, allocated " +
         fmt_bytes(s.allocated_bytes) + " in " + std::to_string(s.live_allocations) + " blocks, free " +
         fmt_bytes(s.free_bytes) + " (largest free block " + fmt_bytes(s.largest_free_bytes) + ", fragmentation " + frag +
         "), cap " + (s.max_bytes ? fmt_bytes(s.max_bytes) : std::string("none"));
}

bool Allocator::owns(const void* ptr) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto addr = reinterpret_cast<uintptr_t>(ptr);
  auto seg = segments_.upper_bound(addr);
  return seg != segments_.begin() && addr < std::prev(seg)->first + std::prev(seg)->second.size;
}

bool Allocator::check(std::string* error) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto fail = [&](const std::string& what, uintptr_t where) {
    if (error) *error = "pool invariant violated at " + fmt_ptr(where) + ": " + what;
    return false;
  };
  size_t reserved = 0, large = 0, allocated = 0, n_free = 0, n_live = 0;
  uintptr_t prev_end = 0;
  for (const auto& [base, seg] : segments_) {
    if (base < prev_end) return fail("segment overlaps the previous one", base);
    prev_end = base + seg.size;
    if (seg.size == 0 || seg.size % kAlignment != 0) return fail("segment size not a multiple of 512", base);
    if (seg.small && seg.size != kSmallSegment) return fail("small segment is not 2 MiB", base);
    const Block* head = seg.head;
    if (head == nullptr || head->prev != nullptr || head->addr != base) return fail("segment head block broken", base);
    uintptr_t expect = base;
    const Block* before = nullptr;
    for (const Block* b = head; b != nullptr; before = b, b = b->next) {
      if (b->addr != expect) return fail("gap or overlap between blocks", b->addr);
      if (b->prev != before) return fail("prev link does not match next link", b->addr);
      if (b->size == 0 || b->size % kAlignment != 0) return fail("block size not a multiple of 512", b->addr);
      if (b->small != seg.small) return fail("block pool kind differs from its segment's", b->addr);
      expect += b->size;
      if (expect > base + seg.size) return fail("blocks run past the segment end", b->addr);
      if (b->allocated) {
        ++n_live;
        allocated += b->size;
        auto it = live_.find(b->addr);
        if (it == live_.end() || it->second != b) return fail("allocated block missing from the live map", b->addr);
        if (!b->pending.empty()) return fail("allocated block holds events", b->addr);
      } else {
        ++n_free;
        if (before != nullptr && !before->allocated) return fail("adjacent free blocks not coalesced", b->addr);
        const FreeSet& set = seg.small ? free_small_ : free_large_;
        auto it = set.find(const_cast<Block*>(b));
        if (it == set.end() || *it != b) return fail("free block missing from its free set", b->addr);
        for (size_t i = 0; i < b->pending.size(); ++i) {
          if (b->pending[i].event == nullptr) return fail("null event recorded", b->addr);
          for (size_t j = i + 1; j < b->pending.size(); ++j) {
            if (b->pending[i].stream == b->pending[j].stream) return fail("two events for one stream", b->addr);
          }
        }
      }
    }
    if (expect != base + seg.size) return fail("blocks do not cover the segment", base);
    reserved += seg.size;
    if (!seg.small) large += seg.size;
  }
  if (n_free != free_small_.size() + free_large_.size()) return fail("free sets hold blocks of no segment", 0);
  if (n_live != live_.size()) return fail("live map holds blocks of no segment", 0);
  if (reserved != reserved_ || large != large_reserved_) return fail("reserved bytes stat is wrong", 0);
  if (allocated != allocated_) return fail("allocated bytes stat is wrong", 0);
  if (peak_reserved_ < reserved_ || peak_allocated_ < allocated_) return fail("peak below current", 0);
  return true;
}

}  // namespace autoglm::pool
