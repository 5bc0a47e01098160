// Read-only kernels with the decode GEMV's access patterns (no math: each warp folds what it
// read into a checksum), to see which pattern streams a weight matrix [N, K] closest to the read
// bandwidth. Loaded by scripts/read_patterns.py (torch.utils.cpp_extension.load_inline).
//
// Both kernels: one block per 16-row tile of W, `warps` warps splitting K, warp w reading
// elements [w * kchunk, (w + 1) * kchunk) of each of the tile's 16 rows through a ring of NB
// shared-memory slots per warp.
//   frag: the GEMV's producer today. A batch is `unroll` 32-element steps; lane (g, t) copies 16
//         bytes of rows g and g + 8 per step with cp.async (8 rows x 64 bytes per instruction),
//         one commit group per batch, NB groups in flight.
//   bulk: one cp.async.bulk (the Hopper TMA engine's 1-D copy) per row and batch, `seg` bytes
//         long, issued by lanes 0..15, completing on one mbarrier per slot; NB slots in flight.
#include <cuda_bf16.h>
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>

namespace {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wait_group() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ void mbar_init(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_u32(dst)),
               "l"(src), "r"(bytes), "r"(smem_u32(bar))
               : "memory");
}

template <int NB>
__global__ void frag_kernel(const __nv_bfloat16* __restrict__ w, int N, int K, int kchunk, int unroll, uint32_t* out) {
  extern __shared__ uint4 ring[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int row_lo = blockIdx.x * 16 + g, row_hi = row_lo + 8;
  const bool ok_lo = row_lo < N, ok_hi = row_hi < N;
  const __nv_bfloat16* w_lo = w + static_cast<int64_t>(ok_lo ? row_lo : 0) * K + 8 * t;
  const __nv_bfloat16* w_hi = w + static_cast<int64_t>(ok_hi ? row_hi : 0) * K + 8 * t;
  const int k_begin = warp * kchunk, k_end = min(K, k_begin + kchunk);
  const int s_begin = k_begin / 32, s_end = (k_end + 31) / 32;
  uint4* my = ring + warp * NB * unroll * 64;
  auto issue = [&](int b) {
    uint4* slot = my + (b % NB) * unroll * 64;
    for (int u = 0; u < unroll; ++u) {
      const int s = s_begin + b * unroll + u, k = s * 32;
      if (s < s_end && k + 8 * t < k_end) {
        if (ok_lo) cp_async16(slot + u * 64 + lane, w_lo + k);
        if (ok_hi) cp_async16(slot + u * 64 + 32 + lane, w_hi + k);
      }
    }
    commit();
  };
  const int batches = (s_end - s_begin + unroll - 1) / unroll;
  for (int b = 0; b < NB; ++b) issue(b);
  uint32_t acc = 0;
  for (int b = 0; b < batches; ++b) {
    wait_group<NB - 1>();
    const uint4* slot = my + (b % NB) * unroll * 64;
    for (int u = 0; u < unroll; ++u) {
      const int s = s_begin + b * unroll + u, k = s * 32;
      if (s < s_end && k + 8 * t < k_end) {  // what issue() copied
        if (ok_lo) { const uint4 a = slot[u * 64 + lane]; acc ^= a.x ^ a.y ^ a.z ^ a.w; }
        if (ok_hi) { const uint4 c = slot[u * 64 + 32 + lane]; acc ^= c.x ^ c.y ^ c.z ^ c.w; }
      }
    }
    issue(b + NB);
  }
  wait_group<0>();
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

template <int NB>
__global__ void bulk_kernel(const __nv_bfloat16* __restrict__ w, int N, int K, int kchunk, int seg, uint32_t* out) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int stride = seg + 64;  // 64 bytes of padding: rows g and g + 1 land on other banks
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem) + warp * NB;
  unsigned char* my = smem + 128 * ((nwarps * NB * 8 + 127) / 128) + static_cast<int64_t>(warp) * NB * 16 * stride;
  if (lane < NB) mbar_init(bars + lane);
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  __syncwarp();
  const int rows = min(16, N - static_cast<int>(blockIdx.x) * 16);
  const int64_t b_begin = static_cast<int64_t>(warp) * kchunk * 2;
  const int64_t b_end = min(static_cast<int64_t>(K), static_cast<int64_t>(warp) * kchunk + kchunk) * 2;
  const int batches = b_end > b_begin ? static_cast<int>((b_end - b_begin + seg - 1) / seg) : 0;
  const char* row0 = reinterpret_cast<const char*>(w) + static_cast<int64_t>(blockIdx.x) * 16 * K * 2;
  auto issue = [&](int b) {
    if (b >= batches) return;
    const int64_t off = b_begin + static_cast<int64_t>(b) * seg;
    const uint32_t len = static_cast<uint32_t>(min(static_cast<int64_t>(seg), b_end - off));
    uint64_t* bar = bars + b % NB;
    if (lane == 0) mbar_expect(bar, len * rows);
    __syncwarp();
    if (lane < rows) bulk_copy(my + (b % NB) * 16 * stride + lane * stride, row0 + static_cast<int64_t>(lane) * K * 2 + off, len, bar);
  };
  for (int b = 0; b < NB; ++b) issue(b);
  uint32_t acc = 0;
  for (int b = 0; b < batches; ++b) {
    mbar_wait(bars + b % NB, (b / NB) & 1);
    const int64_t off = b_begin + static_cast<int64_t>(b) * seg;
    const int len = static_cast<int>(min(static_cast<int64_t>(seg), b_end - off));
    const unsigned char* slot = my + (b % NB) * 16 * stride;
    for (int r = 0; r < rows; ++r)
      for (int o = lane * 16; o < len; o += 512) {
        const uint4 a = *reinterpret_cast<const uint4*>(slot + r * stride + o);
        acc ^= a.x ^ a.y ^ a.z ^ a.w;
      }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // our reads before the refill's writes
    __syncwarp();
    issue(b + NB);
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

template <typename Kernel>
void launch(Kernel k, int blocks, int warps, int smem, const at::Tensor& w, int kchunk, int param, at::Tensor& out) {
  if (smem > 48 * 1024) TORCH_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) == cudaSuccess, "smem");
  k<<<blocks, 32 * warps, smem, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __nv_bfloat16*>(w.data_ptr()), static_cast<int>(w.size(0)), static_cast<int>(w.size(1)),
      kchunk, param, reinterpret_cast<uint32_t*>(out.data_ptr()));
  TORCH_CHECK(cudaGetLastError() == cudaSuccess, "launch failed");
}

}  // namespace

// kind 0: frag (param = unroll), 1: bulk (param = segment bytes). Returns the dynamic smem used.
int64_t read_pattern(const at::Tensor& w, at::Tensor& out, int64_t kind, int64_t nb, int64_t warps, int64_t param) {
  const int N = static_cast<int>(w.size(0)), K = static_cast<int>(w.size(1));
  const int blocks = (N + 15) / 16;
  const int kchunk = ((K + warps - 1) / warps + 31) / 32 * 32;
  int smem;
  if (kind == 0) {
    smem = static_cast<int>(warps * nb * param * 64 * 16);
    switch (nb) {
      case 2: launch(frag_kernel<2>, blocks, warps, smem, w, kchunk, param, out); break;
      case 3: launch(frag_kernel<3>, blocks, warps, smem, w, kchunk, param, out); break;
      default: launch(frag_kernel<4>, blocks, warps, smem, w, kchunk, param, out); break;
    }
  } else {
    smem = static_cast<int>(128 * ((warps * nb * 8 + 127) / 128) + warps * nb * 16 * (param + 64));
    switch (nb) {
      case 2: launch(bulk_kernel<2>, blocks, warps, smem, w, kchunk, param, out); break;
      case 3: launch(bulk_kernel<3>, blocks, warps, smem, w, kchunk, param, out); break;
      default: launch(bulk_kernel<4>, blocks, warps, smem, w, kchunk, param, out); break;
    }
  }
  return smem;
}
