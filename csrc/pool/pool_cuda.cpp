// The pool allocator on CUDA devices: a virtual-memory arena for the large pool (cudaMalloc
// segments where that is not available) and CUDA events for the backing, one pool
// per device (a registry), and the C symbols that torch's CUDAPluggableAllocator calls
// (autoglm_pool_alloc / autoglm_pool_free) plus control functions for ctypes
// (autoglm_kernels/memory.py). Compiled only in CUDA builds.
//
// The pluggable allocator's functions are global C symbols, so the pools are process-wide:
// autoglm_kernels.memory.MemoryPool configures the pool of its device, and only one
// MemoryPool per device is open at a time. Pools are never destroyed: segments can outlive
// every Python object (a tensor freed at interpreter exit), and cudaFree during static
// destruction would race CUDA's own teardown.
//
// The symbols called by torch never throw and never abort: a refused free (foreign pointer,
// double free) is recorded (errors counter, message), logged to stderr, and changes nothing.
#include <cuda.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "pool/allocator.h"

namespace autoglm::pool {
namespace {

// Switches to `device` for the scope if it is not current.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    if (previous_ != device) {
      switched_ = cudaSetDevice(device) == cudaSuccess;
      if (!switched_) (void)cudaGetLastError();
    }
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

bool is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;  // unknown: take the path that is legal during capture
  }
  return status != cudaStreamCaptureStatusNone;
}

// The CUDA driver's virtual-memory functions, looked up through the runtime (no link to libcuda).
struct Vmm {
  decltype(&cuMemAddressReserve) reserve = nullptr;
  decltype(&cuMemCreate) create = nullptr;
  decltype(&cuMemRelease) release = nullptr;
  decltype(&cuMemMap) map = nullptr;
  decltype(&cuMemUnmap) unmap = nullptr;
  decltype(&cuMemSetAccess) set_access = nullptr;
  decltype(&cuMemGetAllocationGranularity) granularity = nullptr;
  bool ok = false;
};

const Vmm& vmm() {
  static const Vmm table = [] {
    Vmm v;
    auto get = [](const char* name, auto& fn) {
      void* p = nullptr;
      cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
      if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &found) != cudaSuccess ||
          found != cudaDriverEntryPointSuccess || p == nullptr) {
        (void)cudaGetLastError();
        return false;
      }
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
      return true;
    };
    v.ok = get("cuMemAddressReserve", v.reserve) && get("cuMemCreate", v.create) && get("cuMemRelease", v.release) &&
           get("cuMemMap", v.map) && get("cuMemUnmap", v.unmap) && get("cuMemSetAccess", v.set_access) &&
           get("cuMemGetAllocationGranularity", v.granularity);
    return v;
  }();
  return table;
}

// Segments from cudaMalloc, except the large pool's arena: a virtual address range as big as the
// device's memory, reserved once and mapped from its start as the arena grows (extend()), so the
// allocator keeps the large pool as one segment whose free space always coalesces (what torch's
// expandable_segments does for its own allocator). AUTOGLM_POOL_VMM=0, or a driver without the
// virtual-memory API: plain cudaMalloc segments.
class CudaBacking final : public Backing {
 public:
  explicit CudaBacking(int device) : device_(device) {}

  void* allocate(size_t bytes) override {
    DeviceGuard guard(device_);
    if (bytes > kSmallSegment && mapped_ == 0 && arena_ready() && bytes <= va_size_ && map_at(va_base_, bytes)) {
      return reinterpret_cast<void*>(va_base_);
    }
    void* ptr = nullptr;
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) {
      (void)cudaGetLastError();  // out of memory is not sticky; clear it for torch's next check
      return nullptr;
    }
    return ptr;
  }

  bool extend(void* end, size_t bytes) override {
    const auto at = reinterpret_cast<uintptr_t>(end);
    if (mapped_ == 0 || at != va_base_ + mapped_ || bytes > va_size_ - mapped_) return false;
    DeviceGuard guard(device_);
    return map_at(at, bytes);
  }

  void deallocate(void* ptr, size_t bytes) override {
    DeviceGuard guard(device_);
    const auto addr = reinterpret_cast<uintptr_t>(ptr);
    if (mapped_ != 0 && addr >= va_base_ && addr < va_base_ + va_size_) {
      // The arena (always all of it: the allocator returns whole segments). Unmapping does not
      // wait for the GPU the way cudaFree does, so finish the work that may still use it first.
      if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
      for (const Chunk& c : chunks_) {
        (void)vmm().unmap(c.addr, c.size);
        (void)vmm().release(c.handle);
      }
      if (bytes != mapped_) {
        std::fprintf(stderr, "autoglm_kernels memory pool (cuda:%d): arena release of %zu bytes, %zu mapped\n",
                     device_, bytes, mapped_);
      }
      chunks_.clear();
      mapped_ = 0;
      return;
    }
    const cudaError_t err = cudaFree(ptr);  // synchronizes: pending work on the segment is done
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      std::fprintf(stderr, "autoglm_kernels memory pool (cuda:%d): cudaFree failed: %s\n", device_, cudaGetErrorString(err));
    }
  }

  Event record_event(Stream s) override {
    auto stream = reinterpret_cast<cudaStream_t>(s);
    // A stream being captured has run nothing yet; the capturing graph keeps its pool alive.
    if (is_capturing(stream)) return nullptr;
    DeviceGuard guard(device_);
    cudaEvent_t event = nullptr;
    if (!cache_.empty()) {
      event = cache_.back();
      cache_.pop_back();
    } else if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) {
      (void)cudaGetLastError();
      return synchronize_instead(stream);
    }
    if (cudaEventRecord(event, stream) != cudaSuccess) {
      (void)cudaGetLastError();
      cache_.push_back(event);
      return synchronize_instead(stream);
    }
    return event;
  }

  bool event_done(Event e) override {
    if (cudaEventQuery(static_cast<cudaEvent_t>(e)) == cudaSuccess) return true;
    (void)cudaGetLastError();  // cudaErrorNotReady; on a real error, waiting is the safe answer
    return false;
  }

  void wait_event(Event e, Stream s) override {
    auto event = static_cast<cudaEvent_t>(e);
    auto stream = reinterpret_cast<cudaStream_t>(s);
    // Outside capture the wait is queued on the stream (no host sync); a capturing stream
    // cannot wait on an event recorded outside its capture, so the host waits instead.
    if (!is_capturing(stream) && cudaStreamWaitEvent(stream, event, 0) == cudaSuccess) return;
    (void)cudaGetLastError();
    if (cudaEventSynchronize(event) != cudaSuccess) (void)cudaGetLastError();
  }

  void release_event(Event e) override { cache_.push_back(static_cast<cudaEvent_t>(e)); }

 private:
  // Without an event, make the work done instead: then nothing is pending.
  Event synchronize_instead(cudaStream_t stream) {
    if (cudaStreamSynchronize(stream) != cudaSuccess) (void)cudaGetLastError();
    return nullptr;
  }

  CUmemAllocationProp device_memory() const {
    CUmemAllocationProp prop = {};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device_;
    return prop;
  }

  // Reserves the arena's address range on first use; false where the arena is not available.
  bool arena_ready() {
    if (arena_tried_) return va_base_ != 0;
    arena_tried_ = true;
    const char* env = std::getenv("AUTOGLM_POOL_VMM");
    if ((env != nullptr && std::string(env) == "0") || !vmm().ok) return false;
    const CUmemAllocationProp prop = device_memory();
    size_t granularity = 0;
    if (vmm().granularity(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS ||
        granularity == 0 || kLargeRound % granularity != 0) {
      return false;  // the allocator sizes large segments in 2 MiB steps
    }
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    const size_t size = (total + kLargeRound - 1) / kLargeRound * kLargeRound;
    CUdeviceptr base = 0;
    if (vmm().reserve(&base, size, 0, 0, 0) != CUDA_SUCCESS) return false;
    va_base_ = static_cast<uintptr_t>(base);
    va_size_ = size;
    return true;
  }

  // Physical memory for [at, at + bytes) of the arena; false (nothing changed) when out of memory.
  bool map_at(uintptr_t at, size_t bytes) {
    const CUmemAllocationProp prop = device_memory();
    CUmemGenericAllocationHandle handle = 0;
    if (vmm().create(&handle, bytes, &prop, 0) != CUDA_SUCCESS) return false;
    if (vmm().map(at, bytes, 0, handle, 0) != CUDA_SUCCESS) {
      (void)vmm().release(handle);
      return false;
    }
    CUmemAccessDesc access = {};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (vmm().set_access(at, bytes, &access, 1) != CUDA_SUCCESS) {
      (void)vmm().unmap(at, bytes);
      (void)vmm().release(handle);
      return false;
    }
    chunks_.push_back(Chunk{at, bytes, handle});
    mapped_ += bytes;
    return true;
  }

  struct Chunk {
    uintptr_t addr;
    size_t size;
    CUmemGenericAllocationHandle handle;
  };

  const int device_;
  std::vector<cudaEvent_t> cache_;  // recycled events (guarded by the allocator's mutex)
  // The arena (guarded by the allocator's mutex, like everything the backing does).
  bool arena_tried_ = false;
  uintptr_t va_base_ = 0;
  size_t va_size_ = 0, mapped_ = 0;
  std::vector<Chunk> chunks_;
};

struct DevicePool {
  explicit DevicePool(int index) : device(index), backing(index), allocator(&backing) {}
  const int device;
  CudaBacking backing;
  Allocator allocator;
  std::mutex error_mutex;
  std::string last_error;  // of the torch callbacks, which may run on any thread
};

constexpr int kMaxDevices = 64;
std::mutex g_registry_mutex;
DevicePool* g_pools[kMaxDevices] = {};

DevicePool* pool_for(int device) {
  if (device < 0 || device >= kMaxDevices) {
    thread_error() = "device index " + std::to_string(device) + " is out of range [0, 64)";
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(g_registry_mutex);
  if (g_pools[device] == nullptr) g_pools[device] = new (std::nothrow) DevicePool(device);  // never deleted
  if (g_pools[device] == nullptr) thread_error() = "out of host memory creating the device pool";
  return g_pools[device];
}

void record_callback_error(DevicePool* pool, const std::string& message, bool log) {
  {
    std::lock_guard<std::mutex> lock(pool->error_mutex);
    pool->last_error = message;
  }
  if (log) std::fprintf(stderr, "autoglm_kernels memory pool (cuda:%d): %s\n", pool->device, message.c_str());
}

int fail(Status status, const std::string& message) {
  thread_error() = message;
  return static_cast<int>(status);
}

}  // namespace
}  // namespace autoglm::pool

using autoglm::pool::DevicePool;
using autoglm::pool::pool_for;
using autoglm::pool::Stats;
using autoglm::pool::Status;
using autoglm::pool::Stream;

extern "C" {

// Called by torch (CUDAPluggableAllocator) for each segment of a torch.cuda.MemPool routed here.
// nullptr tells torch it is out of memory; the reason is kept for autoglm_pool_device_error.
void* autoglm_pool_alloc(size_t size, int device, cudaStream_t stream) {
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) {
    std::fprintf(stderr, "autoglm_kernels memory pool: %s\n", autoglm::pool::thread_error().c_str());
    return nullptr;
  }
  try {
    void* ptr = nullptr;
    std::string error;
    if (pool->allocator.allocate(size, reinterpret_cast<Stream>(stream), &ptr, &error) != Status::kOk) {
      autoglm::pool::record_callback_error(pool, error, /*log=*/false);  // torch raises OutOfMemoryError
      return nullptr;
    }
    return ptr;
  } catch (const std::exception& e) {
    autoglm::pool::record_callback_error(pool, std::string("allocation failed: ") + e.what(), /*log=*/true);
    return nullptr;
  }
}

void autoglm_pool_free(void* ptr, size_t size, int device, cudaStream_t stream) {
  (void)size;
  if (ptr == nullptr) return;
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) {
    std::fprintf(stderr, "autoglm_kernels memory pool: free(%p) ignored: %s\n", ptr, autoglm::pool::thread_error().c_str());
    return;
  }
  try {
    std::string error;
    if (pool->allocator.deallocate(ptr, reinterpret_cast<Stream>(stream), &error) != Status::kOk) {
      autoglm::pool::record_callback_error(pool, error, /*log=*/true);
    }
  } catch (const std::exception& e) {
    autoglm::pool::record_callback_error(pool, std::string("free failed: ") + e.what(), /*log=*/true);
  }
}

// Control functions (ctypes). Status: 0 ok, 1 out of memory, 2 invalid; message in
// autoglm_pool_last_error_message() on the calling thread.
int autoglm_pool_configure(int device, uint64_t max_bytes, uint64_t max_growth) {
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) return static_cast<int>(Status::kInvalid);
  pool->allocator.configure(max_bytes, max_growth);
  std::lock_guard<std::mutex> lock(pool->error_mutex);
  pool->last_error.clear();
  return 0;
}

int autoglm_pool_reserve(int device, uint64_t bytes) {
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) return static_cast<int>(Status::kInvalid);
  std::string error;
  Status s = pool->allocator.reserve(bytes, &error);
  return s == Status::kOk ? 0 : autoglm::pool::fail(s, error);
}

uint64_t autoglm_pool_release(int device) {
  DevicePool* pool = pool_for(device);
  return pool == nullptr ? 0 : pool->allocator.release();
}

int autoglm_pool_stats(int device, Stats* out) {
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) return static_cast<int>(Status::kInvalid);
  *out = pool->allocator.stats();
  return 0;
}

int autoglm_pool_check(int device) {
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) return static_cast<int>(Status::kInvalid);
  std::string error;
  return pool->allocator.check(&error) ? 0 : autoglm::pool::fail(Status::kInvalid, error);
}

int autoglm_pool_owns(int device, uint64_t ptr) {
  DevicePool* pool = pool_for(device);
  return pool != nullptr && pool->allocator.owns(reinterpret_cast<void*>(ptr)) ? 1 : 0;
}

// The last failure seen by the torch callbacks of this device ("" if none since configure).
const char* autoglm_pool_device_error(int device) {
  static thread_local std::string copy;
  DevicePool* pool = pool_for(device);
  if (pool == nullptr) return "";
  std::lock_guard<std::mutex> lock(pool->error_mutex);
  copy = pool->last_error;
  return copy.c_str();
}

}  // extern "C"
