// The pool allocator over a simulated device, for tests on any machine (autoglm_kernels.memory.HostPool).
//
// HostBacking hands out fake address ranges that are never dereferenced, from a simulated
// device of `capacity` bytes, so 1 GiB requests cost no RAM. Consecutive segments are
// adjacent in address space on purpose: the allocator must still never merge across them.
// With grows_in_place it also simulates the GPU's virtual-memory arena (extend()).
// Its events complete only when the test says so (autoglm_pool_host_complete_events), so
// cross-stream waits can be observed.
//
// C API through ctypes; status codes: 0 ok, 1 out of memory, 2 invalid argument. The
// message of the last failure on the calling thread: autoglm_pool_last_error_message().
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <set>

#include "pool/allocator.h"

namespace autoglm::pool {
namespace {

class HostBacking final : public Backing {
 public:
  HostBacking(uint64_t capacity, bool grows_in_place) : capacity_(capacity), grows_in_place_(grows_in_place) {}

  // Like a virtual-memory arena (pool_cuda.cpp): only the last segment handed out can grow,
  // into the address range right after it.
  bool extend(void* end, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto addr = reinterpret_cast<uintptr_t>(end);
    if (!grows_in_place_ || segments_.empty() || addr != next_ || bytes == 0 || bytes > capacity_ - used_) return false;
    auto last = std::prev(segments_.end());
    if (last->first + last->second != addr) return false;
    last->second += bytes;
    next_ += bytes;
    used_ += bytes;
    return true;
  }

  void* allocate(size_t bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes == 0 || bytes > capacity_ - used_) return nullptr;
    const uintptr_t addr = next_;
    next_ += bytes;  // the next segment starts right after this one
    used_ += bytes;
    segments_.emplace(addr, bytes);
    return reinterpret_cast<void*>(addr);
  }

  void deallocate(void* ptr, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = segments_.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == segments_.end() || it->second != bytes) {
      ++misuse_;  // the allocator returned something it was never given
      return;
    }
    used_ -= bytes;
    segments_.erase(it);
  }

  Event record_event(Stream) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const uintptr_t id = ++event_id_;
    live_events_.insert(id);
    pending_events_.insert(id);
    return reinterpret_cast<Event>(id);
  }

  bool event_done(Event event) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto id = reinterpret_cast<uintptr_t>(event);
    if (!live_events_.count(id)) ++misuse_;
    return !pending_events_.count(id);
  }

  void wait_event(Event event, Stream) override {
    event_done(event);  // counts misuse of an unknown event
    std::lock_guard<std::mutex> lock(mutex_);
    ++waits_;
  }

  void release_event(Event event) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto id = reinterpret_cast<uintptr_t>(event);
    if (live_events_.erase(id) == 0) ++misuse_;  // released twice, or never recorded
    pending_events_.erase(id);
  }

  void complete_events() {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_events_.clear();
  }
  uint64_t live_events() {
    std::lock_guard<std::mutex> lock(mutex_);
    return live_events_.size();
  }
  uint64_t waits() {
    std::lock_guard<std::mutex> lock(mutex_);
    return waits_;
  }
  uint64_t misuse() {
    std::lock_guard<std::mutex> lock(mutex_);
    return misuse_;
  }

 private:
  std::mutex mutex_;
  const uint64_t capacity_;
  const bool grows_in_place_;
  uint64_t used_ = 0, misuse_ = 0, waits_ = 0;
  uintptr_t next_ = uintptr_t(1) << 40;  // far from any real heap address
  uintptr_t event_id_ = 0;
  std::map<uintptr_t, size_t> segments_;
  std::set<uintptr_t> live_events_, pending_events_;
};

struct HostPool {
  HostPool(uint64_t capacity, uint64_t max_bytes, uint64_t max_growth, bool grows_in_place)
      : backing(capacity, grows_in_place), allocator(&backing, max_bytes, max_growth) {}
  HostBacking backing;  // declared first: destroyed after the allocator returns its segments
  Allocator allocator;
};

HostPool* as_pool(void* handle) { return static_cast<HostPool*>(handle); }

int fail(Status status, const std::string& message) {
  thread_error() = message;
  return static_cast<int>(status);
}

}  // namespace
}  // namespace autoglm::pool

using autoglm::pool::as_pool;
using autoglm::pool::HostPool;
using autoglm::pool::Stats;
using autoglm::pool::Status;

extern "C" {

const char* autoglm_pool_last_error_message(void) { return autoglm::pool::thread_error().c_str(); }

uint64_t autoglm_pool_stats_size(void) { return sizeof(Stats); }

void* autoglm_pool_host_create(uint64_t capacity, uint64_t max_bytes, uint64_t max_growth, int grows_in_place) {
  return new (std::nothrow) HostPool(capacity, max_bytes, max_growth, grows_in_place != 0);
}

void autoglm_pool_host_destroy(void* handle) { delete as_pool(handle); }

int autoglm_pool_host_alloc(void* handle, uint64_t size, uint64_t stream, uint64_t* out) {
  std::string error;
  void* ptr = nullptr;
  Status s = as_pool(handle)->allocator.allocate(size, stream, &ptr, &error);
  if (s != Status::kOk) return autoglm::pool::fail(s, error);
  *out = reinterpret_cast<uintptr_t>(ptr);
  return 0;
}

int autoglm_pool_host_free(void* handle, uint64_t ptr, uint64_t stream) {
  std::string error;
  Status s = as_pool(handle)->allocator.deallocate(reinterpret_cast<void*>(ptr), stream, &error);
  return s == Status::kOk ? 0 : autoglm::pool::fail(s, error);
}

int autoglm_pool_host_reserve(void* handle, uint64_t bytes) {
  std::string error;
  Status s = as_pool(handle)->allocator.reserve(bytes, &error);
  return s == Status::kOk ? 0 : autoglm::pool::fail(s, error);
}

uint64_t autoglm_pool_host_release(void* handle) { return as_pool(handle)->allocator.release(); }

void autoglm_pool_host_configure(void* handle, uint64_t max_bytes, uint64_t max_growth) {
  as_pool(handle)->allocator.configure(max_bytes, max_growth);
}

void autoglm_pool_host_stats(void* handle, Stats* out) { *out = as_pool(handle)->allocator.stats(); }

int autoglm_pool_host_owns(void* handle, uint64_t ptr) {
  return as_pool(handle)->allocator.owns(reinterpret_cast<void*>(ptr)) ? 1 : 0;
}

// 0 when every invariant holds (and the backing was never misused), else 2 with the message.
int autoglm_pool_host_check(void* handle) {
  std::string error;
  if (!as_pool(handle)->allocator.check(&error)) return autoglm::pool::fail(Status::kInvalid, error);
  if (as_pool(handle)->backing.misuse() != 0) {
    return autoglm::pool::fail(Status::kInvalid, "the allocator misused its backing (bad segment or event release)");
  }
  return 0;
}

void autoglm_pool_host_complete_events(void* handle) { as_pool(handle)->backing.complete_events(); }

uint64_t autoglm_pool_host_live_events(void* handle) { return as_pool(handle)->backing.live_events(); }

uint64_t autoglm_pool_host_waits(void* handle) { return as_pool(handle)->backing.waits(); }

}  // extern "C"
