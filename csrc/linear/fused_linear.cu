// CUDA implementation of autoglm::fused_linear: y = act(x @ weight^T + bias).
//
// Decode (M = rows of x <= 16, fp16/bf16): a weight-streaming GEMV on tensor cores. Each warp
// owns a 16-row weight tile (for gated_silu: 8 gate rows + the 8 matching up rows) and a slice
// of K (split-K across the warps of a block, reduced through shared memory). Per step a warp
// reads 32 k of its 16 rows with one 16-byte load per lane and row half, and x for up to 8
// (or 16) rows with one 16-byte load per lane, then issues mma.sync m16n8k16 with fp32
// accumulators: the weight rows are the MMA's M side and the x rows its N side, so every
// weight byte is read once for all M rows. The K order inside a 32-wide step is permuted the
// same way for weight and x (a dot product does not care), which is what lets each lane use
// one 16-byte load instead of four 4-byte loads. The epilogue (bias, activation, gating, cast)
// runs on the fp32 sums before the single store.
//
// Prefill (M > 16) and anything the GEMV does not take (fp32, K % 8 != 0, misaligned weight):
// the best stock path, with the epilogue fused where cuBLASLt can (relu + bias) and one
// fused silu(g)*u kernel for gated_silu instead of chunk + silu + mul.
//
// autoglm::gated_mlp (the whole gated MLP, down(silu(gate) * up)) runs the same kernels, and
// both ops take an optional RMSNorm before the projection (the GEMV's prologue) and a residual
// added after it (its epilogue), for the decoder layer's decode step. Two more epilogues:
// autoglm::qkv_rope_append (RoPE + static-cache append after the qkv projection) and
// autoglm::linear_add_rms_norm (the next RMSNorm after o_proj + residual, by the last block).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "linear/fused_linear.h"

namespace autoglm {
namespace linear {
namespace {

constexpr int kMaxGemvRows = 16;  // M above this goes to the GEMM path
// An integer tuning knob from the environment, read once per process (callers keep it in a
// function-local static): its value (`fallback` when unset), or for anything but an integer in
// [lo, hi] the error every call that uses it raises (knob_value), not only the first. The
// message is one std::string (see check.h for why).
struct Knob {
  int64_t value;
  std::string error;  // empty: valid
};
Knob read_knob(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return {fallback, {}};
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  if (end != env && *end == '\0' && v >= lo && v <= hi) return {static_cast<int64_t>(v), {}};
  return {fallback, std::string(name) + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi) +
                        ", got '" + env + "'"};
}
int64_t knob_value(const Knob& knob) {
  AG_CHECK_VALUE(knob.error.empty(), knob.error);
  return knob.value;
}

// Weights larger than this go to cuBLAS (+ the fused epilogue) even at M <= 16: measured on H100,
// cuBLAS streams > 64 MiB weights at 85-92% of read bandwidth, ahead of this GEMV (Llama-3.1-8B's
// 117 MiB down_proj: step 6.44 vs 5.97 ms; with a 3-batch ring the GEMV matched cuBLAS there in
// isolation, 44.8 vs 45.0 us, but the step, with the norms folded, took 5.99 vs 5.92 ms:
// bench/results/..._1411_...), and far ahead on the very wide lm_heads (N >= 50k),
// where the GEMV runs 1-warp blocks. Exactly 64 MiB (Llama-3.2-1B's gate_up) stays on the GEMV
// (step 1.159 vs 1.242 ms, bench/results/..._1144_...).
// AUTOGLM_GEMV_MAX_WEIGHT_MIB overrides it (a tuning knob for benchmarks; read once per process).
int64_t max_gemv_weight_bytes() {
  static const Knob mib = read_knob("AUTOGLM_GEMV_MAX_WEIGHT_MIB", 64, 0, int64_t(1) << 30);
  return knob_value(mib) << 20;
}
// Bytes of each weight row a warp pulls into L2 before it waits for the previous kernel (see
// gemv_kernel; register kernel only): one unrolled batch (kUnroll steps: 256 bytes). Deeper
// prefetch measured slower (L2 thrash). AUTOGLM_GEMV_PREFETCH_BYTES overrides it (read once).
int64_t gemv_prefetch_bytes() {
  static const Knob bytes = read_knob("AUTOGLM_GEMV_PREFETCH_BYTES", 256, 0, int64_t(1) << 30);
  return knob_value(bytes);
}
// Split-K warps per SM the launch aims at (see launch_gemv_nb). AUTOGLM_GEMV_WARPS_PER_SM
// overrides it (a tuning knob for benchmarks; read once per process).
int gemv_warps_per_sm() {
  static const Knob warps = read_knob("AUTOGLM_GEMV_WARPS_PER_SM", 16, 1, 64);
  return static_cast<int>(knob_value(warps));
}
// Whether the split-K warp count may stop between two powers of two (see launch_gemv_nb): 1 (the
// default: any count, but for the staged kernel only one that leaves the next kernel room),
// 0 (powers of two only) or 2 (any count that fits, the rule before the room check).
// AUTOGLM_GEMV_ANY_WARPS overrides it (a tuning knob for benchmarks; read once per process).
int gemv_any_warps() {
  static const Knob any = read_knob("AUTOGLM_GEMV_ANY_WARPS", 1, 0, 2);
  return static_cast<int>(knob_value(any));
}
// Cluster split-K of the GEMV (see gemv_kernel's CL and cluster_split): 0 (the default: where it
// evens out the blocks per SM), 1 (never) or 2..kMaxClusterSplit (that many blocks per tile
// wherever it applies). AUTOGLM_GEMV_CLUSTER_SPLIT overrides it (a tuning knob; read once).
int gemv_cluster_split_knob() {
  static const Knob split = read_knob("AUTOGLM_GEMV_CLUSTER_SPLIT", 0, 0, 4);
  return static_cast<int>(knob_value(split));
}
constexpr int kStepK = 32;        // k per warp step: 4 lanes x 8 elements (16 bytes) per row
constexpr int kUnroll = 4;        // steps whose loads are in flight together (4 KB of weight per warp)
constexpr int kMaxWarps = 16;     // split-K warps per block
constexpr int kMaxClusterSplit = 4;  // blocks of one thread-block cluster sharing a tile's K (see gemv_kernel)

template <typename T>
struct Num;
template <>
struct Num<__nv_bfloat16> {
  static constexpr bool kBf16 = true;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16(v); }
};
template <>
struct Num<__half> {
  static constexpr bool kBf16 = false;
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half(v); }
};

// The RoPE + static-cache append epilogue of the decode qkv projection (autoglm::qkv_rope_append;
// gemv_kernel's ROPE instantiations). The tile's 16 rows are 8 rotation pairs (x1, x2) of one head:
// the MMA's lo and hi fragment rows, so each epilogue thread holds both elements of a pair.
// Heads [0, hq) are q, [hq, hq + hk) k, then hk v heads, d dims each. Pair f < F of a q or k head
// rotates: layout 0 (rotate_half) dims (f, f + F) with cos[f], cos[f + F]; layout 1 (GLM-4) dims
// (2f, 2f + 1), both with cos[f]; layout 2 (GLM-4.1V, pair-duplicated cos) dims (2f, 2f + 1) with
// cos[2f], cos[2f + 1]. Other pairs (dims past 2F, v heads) are (2f, 2f + 1), unrotated. k and v
// rows also go to the caches [B, hk, C, d] at slot *cache_len (< C), x row m being batch entry m;
// the block that takes the last ticket advances *cache_len by one after every block has read it.
struct RopeArgs {
  const void* cos = nullptr;  // [B or 1, 1, 2F] of T (null: no rotation, the append alone)
  const void* sin = nullptr;
  int64_t cos_b = 0, cos_r = 0, sin_b = 0, sin_r = 0;  // strides: batch (0: broadcast), rotary dim
  int layout = 0, F = 0, hq = 0, hk = 0, d = 0;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t kc_b = 0, kc_h = 0, kc_n = 0, vc_b = 0, vc_h = 0, vc_n = 0, capacity = 0;
  void* cache_len = nullptr;  // int64 (len64) or int32, one element
  bool len64 = true;
  unsigned* ticket = nullptr;  // zero between launches

  // The head, the within-head dims (lo, hi) and whether pair p (of the whole output) rotates.
  __device__ __forceinline__ void pair(int p, int& head, int& lo, int& hi, bool& rot) const {
    const int half_d = d >> 1;
    head = p / half_d;
    const int f = p - head * half_d;
    rot = head < hq + hk && f < F;
    lo = rot && layout == 0 ? f : 2 * f;
    hi = rot && layout == 0 ? f + F : 2 * f + 1;
  }
};

// The RMSNorm after an output projection (autoglm::linear_add_rms_norm; gemv_kernel's kEpiNorm
// instantiations): y = x @ w^T + bias + res as usual, then the block that takes the last ticket
// (every other block has stored its part of y and fenced) reads y back from L2 and writes
// out = rnd(rnd(y * rstd) * w) per row, rstd = rsqrt(mean(y^2) + eps), and resets the ticket.
// One launch instead of the projection + a norm kernel, and the next projection's weight
// prefetch (PDL) overlaps this one's tail instead of the norm kernel.
struct PostNormArgs {
  void* out = nullptr;          // [M, N] of T
  const void* weight = nullptr;  // [N] of T, 16-byte aligned
  float eps = 0.0f;
  unsigned* ticket = nullptr;  // zero between launches
};

// What gemv_kernel's epilogue does besides the plain store.
constexpr int kEpiPlain = 0;  // act(+ bias)(+ residual) -> y
constexpr int kEpiRope = 1;   // RopeArgs
constexpr int kEpiNorm = 2;   // PostNormArgs

// 16-byte weight load: read once, so bypass L1 and do not keep it there. volatile: the call
// sits under a bounds predicate and must not be hoisted (speculated) out of it.
__device__ __forceinline__ void load_weight(uint32_t (&r)[4], const void* p) {
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
      : "l"(p));
}

// Programmatic dependent launch (sm_90+, launched with the attribute by launch_gemv_act): let
// the next kernel begin launching, and wait until the previous kernel has finished and its
// writes are visible. The same protocol as the Triton kernels' pdl_prologue; no-ops otherwise.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// 16-byte asynchronous copy global -> shared, through L2 only (sm_80+): the bytes are in flight
// without holding registers, so a warp can keep more of its weight stream in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

// 16-byte activation load: x is small and re-read by every block, so let it cache.
__device__ __forceinline__ void load_x(uint32_t (&r)[4], const void* p) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  r[0] = v.x;
  r[1] = v.y;
  r[2] = v.z;
  r[3] = v.w;
}

// d += A(16x16, row) * B(16x8, col), fp32 accumulate. a: {row g k0-1, row g+8 k0-1, row g k8-9, row g+8 k8-9}.
template <bool kBf16>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(d[0]), "f"(d[1]), "f"(d[2]), "f"(d[3]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(d[0]), "f"(d[1]), "f"(d[2]), "f"(d[3]));
  }
}

// v rounded to T and back: the rounding a stock op makes where it writes v as T. The epilogues
// round where the stock modules do (the projection's output, then each elementwise op's), so a
// patched model's values differ from stock's only where a sum's order moved a rounding.
template <typename T>
__device__ __forceinline__ float rnd(float v) {
  return Num<T>::to_float(Num<T>::from_float(v));
}

// silu as torch's CUDA kernel computes it, v / (1 + expf(-v)), bit for bit: CUDA 13's expf (what
// nvcc emits for it without fast math: a rounding-mode range reduction, then ex2.approx scaled by
// 2^j, its final multiply fused with the `1 +`) and an IEEE division, written with intrinsics
// because this file builds with --use_fast_math, which would turn expf into __expf (up to ~14 ulp
// off at |v| ~ 10) and the division into an approximation.
__device__ __forceinline__ float silu_f(float v) {
  const float a = -v;
  const float t = __saturatef(__fmaf_rn(a, __int_as_float(0x3BBB989D), 0.5f));
  const float j = __fmaf_rd(t, __int_as_float(0x437C0000), __int_as_float(0x4B400001));
  const float r = __fadd_rn(j, __int_as_float(0xCB40007F));
  const float f = __fmaf_rn(a, __int_as_float(0x32A57060), __fmaf_rn(a, __int_as_float(0x3FB8AA3B), -r));
  float e;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(f));
  return __fdiv_rn(v, __fmaf_rn(e, __int_as_float(__float_as_int(j) << 23), 1.0f));
}

// transformers' RMSNorm in a block (the GEMV's prologue and the linear_add_rms_norm epilogue).
// rstd[m] = rsqrt(mean(row_m^2) + eps) in fp32 for M rows of length L (L % 8 == 0): each thread
// sums 16-byte chunks, two loads in flight; warps reduce by shuffles, then through
// scratch[warp * stride + m]. load(m, k): elements [k, k + 8) of row m. Ends with a barrier.
template <typename T, typename Load>
__device__ __forceinline__ void block_rstd(int M, int L, float eps, Load load, float* scratch, int stride,
                                           float* rstd) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int step = 8 * static_cast<int>(blockDim.x);
  for (int m = 0; m < M; ++m) {
    float ss = 0.0f;
    for (int k0 = 8 * static_cast<int>(threadIdx.x); k0 < L; k0 += 2 * step) {
      uint4 v[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int k = k0 + u * step;
        v[u] = k < L ? load(m, k) : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const T* e = reinterpret_cast<const T*>(&v[u]);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float f = Num<T>::to_float(e[i]);
          ss += f * f;
        }
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) scratch[warp * stride + m] = ss;
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < M) {
    float ss = 0.0f;
    for (int w2 = 0; w2 < nwarps; ++w2) ss += scratch[w2 * stride + threadIdx.x];
    rstd[threadIdx.x] = rsqrtf(ss / static_cast<float>(L) + eps);
  }
  __syncthreads();
}

// rnd(rnd(v * rstd) * w) of 8 elements: the stock RMSNorm's two roundings.
template <typename T>
__device__ __forceinline__ uint4 rms_scale8(uint4 v, uint4 w, float rstd) {
  const T* ve = reinterpret_cast<const T*>(&v);
  const T* we = reinterpret_cast<const T*>(&w);
  uint4 o;
  T* oe = reinterpret_cast<T*>(&o);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float n = rnd<T>(Num<T>::to_float(ve[e]) * rstd);
    oe[e] = Num<T>::from_float(n * Num<T>::to_float(we[e]));
  }
  return o;
}

// v + res[o] rounded to T (v already rounded: transformers' `residual + out`), or v (res null).
template <typename T>
__device__ __forceinline__ T add_residual(T v, const T* __restrict__ res, int64_t o) {
  return res == nullptr ? v : Num<T>::from_float(Num<T>::to_float(v) + Num<T>::to_float(res[o]));
}

template <Act ACT>
__device__ __forceinline__ float activate(float v) {
  if constexpr (ACT == Act::kRelu) return fmaxf(v, 0.0f);
  if constexpr (ACT == Act::kGelu) {
    // 0.5 v (1 + tanh(u)) == v * sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3): no tanh.approx error.
    const float u2 = 1.5957691216057308f * (v + 0.044715f * v * v * v);
    return v / (1.0f + __expf(-u2));
  }
  if constexpr (ACT == Act::kSilu) return silu_f(v);
  return v;
}

// Grid: one block per 16-row weight tile (gated: 8 output columns = 8 gate + 8 up rows).
// Block: S warps (blockDim.x = 32 * S), warp w sums k-steps [w * steps_per_warp, ...).
// Lane (g = lane / 4, t = lane % 4) loads, for each step, physical k [32 s + 8 t, +8) of weight
// rows g and g+8 of the tile and of x rows g (and g + 8 when MT = 2). In MMA k-step 2j + h
// (h = 0, 1) those 8 elements play logical k {2t, 2t+1} (words 2h) and {2t+8, 2t+9} (word 2h+1)
// for both A and B, so the permutation is consistent.
// x: [M, K], w: [N, K], bias: [N] or null, y: [M, n_out]; K % 8 == 0, x and w 16-byte aligned.
// Registers: MT = 1 fits 64 (two 512-thread blocks per SM); MT = 2 needs ~110 to keep all
// kUnroll steps' loads in flight without spilling, so one 512-thread block per SM.
//
// NORM: the input is RMSNorm(x; norm_w, eps): after the PDL wait each block reduces x's rows to
// their 1/rms and writes rnd(rnd(x * rstd) * w) (the stock RMSNorm's rounding) into shared memory
// behind the ring; the main loop reads x from there. The block's first weight batches are in flight
// meanwhile, so the norm kernel before the projection is gone at the cost of that short prologue.
// (A version that normalized x as the main loop loaded it from L2 stalled each step on those
// loads: 3-14 us more per GEMV on the H100, bench/results/..._1234_.../fold_cost.txt.)
// res (or null): y = rnd(rnd(act(...)) + res), the residual add after an output projection, with
// the rounding of transformers' `residual + out`.
//
// NB > 0 (staged): the weights go through a per-warp ring of NB batches (kUnroll steps each, 1 KB
// a step) in shared memory, filled by cp.async NB batches ahead: the first NB batches are issued
// before the PDL wait and each consumed batch is refilled at once, so 4 * NB KB of every warp's
// weight stream stay in flight (NB = 0: one batch of loads into registers at a time, 4 KB, with
// the first batch prefetched into L2 before the wait). Each lane reads back only the 16 bytes it
// copied, so the ring needs no barrier.
//
// CL (cluster split-K; sm_90+, plain epilogue only): the gridDim.y blocks of a thread-block
// cluster share one tile, each taking its slice of K (its warps are warps blockIdx.y * nwarps +
// warp of one split over gridDim.y * nwarps); each block sums its warps' partials, writes them
// into the first block's shared memory (distributed shared memory), and after the cluster
// barrier that block adds them in rank order (deterministic) and runs the epilogue. It evens out
// the blocks per SM where tiles / SMs leaves a short last wave (see cluster_split).
template <typename T, int MT, Act ACT, bool HAS_BIAS, int NB, bool NORM, int EPI = kEpiPlain, bool CL = false>
__global__ void __launch_bounds__(kMaxWarps * 32, MT == 1 ? 2 : 1)
    gemv_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
                int M, int N, int K, int n_out, int steps_per_warp, int prefetch_bytes, const T* __restrict__ norm_w,
                float eps, const T* __restrict__ res, RopeArgs ra, PostNormArgs pn) {
  constexpr bool kGated = ACT == Act::kGatedSilu;
  constexpr bool ROPE = EPI == kEpiRope, POSTNORM = EPI == kEpiNorm;
  static_assert(!POSTNORM || (ACT == Act::kNone && !NORM), "the norm epilogue follows a plain projection");
  static_assert(!ROPE || ACT == Act::kNone, "the RoPE epilogue follows a plain projection");
  static_assert(!CL || (EPI == kEpiPlain && !NORM), "the cluster split has the plain epilogue only");
  __shared__ float partial[kMaxWarps][MT * 4 * 32];
  __shared__ float rstd_s[NORM ? kMaxGemvRows : 1];
  extern __shared__ uint4 ring_smem[];  // NB > 0: [warps][NB][kUnroll][lo 32 | hi 32]; NORM: then xs [M][K]

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;

  // Weight rows this lane loads: fragment row g (lo) and g + 8 (hi).
  int row_lo, row_hi;
  bool ok_lo, ok_hi;
  if constexpr (kGated) {
    const int n = blockIdx.x * 8 + g;
    ok_lo = ok_hi = n < n_out;
    row_lo = ok_lo ? n : 0;
    row_hi = ok_hi ? n + n_out : 0;
  } else if constexpr (ROPE) {
    const int p = blockIdx.x * 8 + g;
    int head, lo, hi;
    bool rot;
    ra.pair(p, head, lo, hi, rot);
    ok_lo = ok_hi = 2 * p < N;
    row_lo = ok_lo ? head * ra.d + lo : 0;
    row_hi = ok_hi ? head * ra.d + hi : 0;
  } else {
    const int n = blockIdx.x * 16 + g;
    ok_lo = n < N;
    ok_hi = n + 8 < N;
    row_lo = ok_lo ? n : 0;
    row_hi = ok_hi ? n + 8 : 0;
  }
  const T* w_lo = w + static_cast<int64_t>(row_lo) * K + 8 * t;
  const T* w_hi = w + static_cast<int64_t>(row_hi) * K + 8 * t;
  const T* x_row[MT];
  bool ok_x[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int m = mt * 8 + g;
    ok_x[mt] = m < M;
    x_row[mt] = x + static_cast<int64_t>(ok_x[mt] ? m : 0) * K + 8 * t;
  }

  const int num_steps = (K + kStepK - 1) / kStepK;
  const int step_begin = (static_cast<int>(blockIdx.y) * nwarps + warp) * steps_per_warp;  // CL: y > 0
  const int step_end = min(step_begin + steps_per_warp, num_steps);

  // Nothing before pdl_wait() may touch x or y (the previous kernel may still write x, or read
  // what y overwrites); the weights are constant, so they start moving while the previous kernel
  // finishes: the staged kernel issues its first NB batches into the ring; the register kernel
  // pulls the first `prefetch_bytes` of each of the warp's 16 rows (its k range: 64 bytes a step)
  // into L2, one prefetch per 128-byte line, lane -> (row lane % 16, every other line). HBM then
  // stays busy across the previous kernel's tail and this one's start. The next kernel may
  // launch once this one runs (after the wait: one kernel of lookahead, see pdl_prologue in
  // autoglm_kernels/triton).
  constexpr int kRingSlots = NB > 0 ? NB : 1;
  uint4* const ring = ring_smem + warp * (NB * kUnroll * 64);
  // Row r (0..15) of the tile (rows g and g + 8 of the fragments above: gated, the 8 gate rows and
  // then their up rows; RoPE, the 8 pairs' first and second rows) and whether it exists.
  auto tile_row = [&](int r, bool& ok) {
    if constexpr (kGated) {
      const int n = blockIdx.x * 8 + (r & 7);
      ok = n < n_out;
      return n + (r >= 8 ? n_out : 0);
    } else if constexpr (ROPE) {
      const int p = blockIdx.x * 8 + (r & 7);
      int head, lo, hi;
      bool rot;
      ra.pair(p, head, lo, hi, rot);
      ok = 2 * p < N;
      return head * ra.d + (r >= 8 ? hi : lo);
    } else {
      const int n = blockIdx.x * 16 + r;
      ok = n < N;
      return n;
    }
  };
  // Copies this lane's 16 bytes of rows lo and hi for the kUnroll steps from s0 into `slot`
  // (steps out of range: nothing; the consumer zeroes them by the same predicate).
  auto issue_batch = [&](uint4* slot, int s0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = (s0 + u) * kStepK;
      if (s0 + u < step_end && k + 8 * t < K) {
        if (ok_lo) cp_async16(slot + u * 64 + lane, w_lo + k);
        if (ok_hi) cp_async16(slot + u * 64 + 32 + lane, w_hi + k);
      }
    }
  };
  if constexpr (NB > 0) {
#pragma unroll
    for (int bb = 0; bb < NB; ++bb) {
      issue_batch(ring + bb * kUnroll * 64, step_begin + bb * kUnroll);
      cp_async_commit();
    }
  } else if (step_begin < step_end) {
    bool ok_r;
    const int row = tile_row(lane & 15, ok_r);
    if (ok_r) {
      const char* base = reinterpret_cast<const char*>(w + static_cast<int64_t>(row) * K);
      const int64_t begin = static_cast<int64_t>(step_begin) * kStepK * sizeof(T);
      const int64_t k_end = static_cast<int64_t>(step_end) * kStepK < K ? static_cast<int64_t>(step_end) * kStepK : K;
      const int64_t end = k_end * static_cast<int64_t>(sizeof(T));
      const int64_t stop = end < begin + prefetch_bytes ? end : begin + prefetch_bytes;
      // Lines of [begin, stop): this lane takes line starts begin_line + 128 * (2 i + lane / 16).
      const int64_t first = static_cast<int64_t>((reinterpret_cast<uintptr_t>(base + begin) & ~uintptr_t(127)) -
                                                 reinterpret_cast<uintptr_t>(base));
      for (int64_t off = first + 128 * (lane >> 4); off < stop; off += 256) prefetch_l2(base + (off > begin ? off : begin));
    }
  }
  pdl_wait();
  pdl_launch_dependents();
  // The bias of tile row threadIdx.x (< 16): loaded here, after the wait (the previous kernel may
  // have written it), and only used after the main loop, so its latency hides behind the weight
  // stream instead of sitting between the split-K reduction and the stores (bias_s below).
  T bias_raw = Num<T>::from_float(0.0f);
  if constexpr (HAS_BIAS) {
    if (threadIdx.x < 16) {
      bool ok_b = false;
      const int row_b = tile_row(threadIdx.x, ok_b);
      if (ok_b) bias_raw = bias[row_b];
    }
  }
  // ROPE: the cache slot of this step, read by every thread before its block takes a ticket.
  int64_t slot = 0;
  if constexpr (ROPE) {
    slot = ra.len64 ? *static_cast<const volatile int64_t*>(ra.cache_len)
                    : static_cast<int64_t>(*static_cast<const volatile int32_t*>(ra.cache_len));
  }

  if constexpr (NORM) {
    // 1/rms of each row (two 16-byte loads in flight per thread; partial[][] is free until the
    // split-K reduction), then the normed rows into shared memory; x_row then points there.
    T* xs = reinterpret_cast<T*>(ring_smem + nwarps * (NB * kUnroll * 64));
    auto x_chunk = [&](int m, int k) {
      return __ldg(reinterpret_cast<const uint4*>(x + static_cast<int64_t>(m) * K + k));
    };
    block_rstd<T>(M, K, eps, x_chunk, &partial[0][0], MT * 4 * 32, rstd_s);
    for (int i = threadIdx.x; i < M * (K / 8); i += blockDim.x) {
      const int m = i / (K / 8), k = (i - m * (K / 8)) * 8;
      const uint4 wv = __ldg(reinterpret_cast<const uint4*>(norm_w + k));
      *reinterpret_cast<uint4*>(xs + static_cast<int64_t>(m) * K + k) = rms_scale8<T>(x_chunk(m, k), wv, rstd_s[m]);
    }
    __syncthreads();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) x_row[mt] = xs + static_cast<int64_t>(ok_x[mt] ? mt * 8 + g : 0) * K + 8 * t;
  }

  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;

  int batch = 0;
  for (int step = step_begin; step < step_end; step += kUnroll, ++batch) {
    uint32_t a_lo[kUnroll][4], a_hi[kUnroll][4], b[kUnroll][MT][4];
    uint4* slot = ring + (batch % kRingSlots) * kUnroll * 64;  // NB = 0: unused
    if constexpr (NB > 0) cp_async_wait<NB - 1>();  // this batch's group (NB groups ago) has landed
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = (step + u) * kStepK;
      // K % 8 == 0, so a lane's 8 elements are all in range or all out of range.
      const bool ok = (step + u < step_end) && (k + 8 * t < K);
      if (ok && ok_lo) {
        if constexpr (NB > 0) {
          const uint4 v = slot[u * 64 + lane];
          a_lo[u][0] = v.x, a_lo[u][1] = v.y, a_lo[u][2] = v.z, a_lo[u][3] = v.w;
        } else {
          load_weight(a_lo[u], w_lo + k);
        }
      } else {
        a_lo[u][0] = a_lo[u][1] = a_lo[u][2] = a_lo[u][3] = 0u;
      }
      if (ok && ok_hi) {
        if constexpr (NB > 0) {
          const uint4 v = slot[u * 64 + 32 + lane];
          a_hi[u][0] = v.x, a_hi[u][1] = v.y, a_hi[u][2] = v.z, a_hi[u][3] = v.w;
        } else {
          load_weight(a_hi[u], w_hi + k);
        }
      } else {
        a_hi[u][0] = a_hi[u][1] = a_hi[u][2] = a_hi[u][3] = 0u;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = (step + u) * kStepK;
      const bool ok = (step + u < step_end) && (k + 8 * t < K);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if (ok && ok_x[mt]) {
          if constexpr (NORM) {  // from shared memory
            const uint4 v = *reinterpret_cast<const uint4*>(x_row[mt] + k);
            b[u][mt][0] = v.x, b[u][mt][1] = v.y, b[u][mt][2] = v.z, b[u][mt][3] = v.w;
          } else {
            load_x(b[u][mt], x_row[mt] + k);
          }
        } else {
          b[u][mt][0] = b[u][mt][1] = b[u][mt][2] = b[u][mt][3] = 0u;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<Num<T>::kBf16>(acc[mt], a_lo[u][2 * h], a_hi[u][2 * h], a_lo[u][2 * h + 1], a_hi[u][2 * h + 1],
                                   b[u][mt][2 * h], b[u][mt][2 * h + 1]);
        }
      }
    }
    if constexpr (NB > 0) {  // refill the slot just consumed, NB batches ahead
      issue_batch(slot, step + NB * kUnroll);
      cp_async_commit();
    }
  }

  if constexpr (NB > 0) cp_async_wait<0>();  // nothing may land in shared memory after the block exits

  __shared__ float bias_s[16];  // the tile rows' bias (HAS_BIAS), visible after the barrier below
  if constexpr (HAS_BIAS) {
    if (threadIdx.x < 16) bias_s[threadIdx.x] = Num<T>::to_float(bias_raw);
  }
  // Split-K reduction. Accumulator j of lane l in column tile mt is D[row][col] with
  // row = g + 8 * (j / 2) and col (= row of x) = 8 * mt + 2 * t + j % 2.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < 4; ++j) partial[warp][(mt * 4 + j) * 32 + lane] = acc[mt][j];
  }
  __syncthreads();
  int nsum = nwarps;  // rows of partial[] the epilogue adds up
  if constexpr (CL) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int kAll = MT * 4 * 32;
    __shared__ float cluster_sum[kMaxClusterSplit][kAll];
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    const unsigned rank = cluster.block_rank();
    float* first = cluster.map_shared_rank(&cluster_sum[0][0], 0);
    for (int i = threadIdx.x; i < kAll; i += blockDim.x) {
      float v = 0.0f;
      for (int s = 0; s < nwarps; ++s) v += partial[s][i];
      first[rank * kAll + i] = v;
    }
    cluster.sync();  // every block's sums are in the first block's shared memory
    if (rank != 0) return;
    for (int i = threadIdx.x; i < kAll; i += blockDim.x) {
      float v = 0.0f;
      for (unsigned r = 0; r < cluster.num_blocks(); ++r) v += cluster_sum[r][i];
      partial[0][i] = v;
    }
    __syncthreads();
    nsum = 1;
#else
    __trap();  // the host launches CL only on sm_90+
#endif
  }

  constexpr int kOutputs = kGated || ROPE ? MT * 2 * 32 : MT * 4 * 32;
  for (int i = threadIdx.x; i < kOutputs; i += blockDim.x) {
    const int l = i & 31, jj = i >> 5;
    const int lg = l >> 2, lt = l & 3;
    if constexpr (ROPE) {
      // x1 is fragment row lg (j = 0, 1), x2 row lg + 8 (j = 2, 3) of the same column (x row m).
      const int mt = jj >> 1, j = jj & 1;
      const int m = mt * 8 + 2 * lt + j, p = blockIdx.x * 8 + lg;
      if (m < M && 2 * p < N) {
        int head, lo, hi;
        bool rot;
        ra.pair(p, head, lo, hi, rot);
        const int n_lo = head * ra.d + lo, n_hi = head * ra.d + hi;
        float x1 = 0.0f, x2 = 0.0f;
        for (int s = 0; s < nsum; ++s) {
          x1 += partial[s][(mt * 4 + j) * 32 + l];
          x2 += partial[s][(mt * 4 + j + 2) * 32 + l];
        }
        if constexpr (HAS_BIAS) {
          x1 += bias_s[lg];  // bias[n_lo]
          x2 += bias_s[8 + lg];  // bias[n_hi]
        }
        // the projection's output as the stock linear rounds it, then the rotation with stock's
        // roundings (what the RoPE kernel computes from that output)
        x1 = rnd<T>(x1);
        x2 = rnd<T>(x2);
        if (rot) {
          const int f = ra.layout == 0 ? lo : lo >> 1;
          const int col1 = ra.layout == 2 ? 2 * f : f;
          const int col2 = ra.layout == 0 ? f + ra.F : (ra.layout == 1 ? f : 2 * f + 1);
          const T* cs = static_cast<const T*>(ra.cos) + m * ra.cos_b;
          const T* sn = static_cast<const T*>(ra.sin) + m * ra.sin_b;
          const float c1 = Num<T>::to_float(cs[col1 * ra.cos_r]), c2 = Num<T>::to_float(cs[col2 * ra.cos_r]);
          const float s1 = Num<T>::to_float(sn[col1 * ra.sin_r]), s2 = Num<T>::to_float(sn[col2 * ra.sin_r]);
          // transformers' `q * cos + rotate_half(q) * sin` in T: each product rounded, then the sum
          const float y1 = rnd<T>(x1 * c1) - rnd<T>(x2 * s1), y2 = rnd<T>(x2 * c2) + rnd<T>(x1 * s2);
          x1 = y1;
          x2 = y2;
        }
        const T o1 = Num<T>::from_float(x1), o2 = Num<T>::from_float(x2);
        y[static_cast<int64_t>(m) * N + n_lo] = o1;
        y[static_cast<int64_t>(m) * N + n_hi] = o2;
        if (head >= ra.hq && slot < ra.capacity) {
          const bool is_v = head >= ra.hq + ra.hk;
          const int h = head - ra.hq - (is_v ? ra.hk : 0);
          T* c = static_cast<T*>(is_v ? ra.v_cache : ra.k_cache) +
                 (is_v ? m * ra.vc_b + h * ra.vc_h + slot * ra.vc_n : m * ra.kc_b + h * ra.kc_h + slot * ra.kc_n);
          c[lo] = o1;
          c[hi] = o2;
        }
      }
    } else if constexpr (kGated) {
      // gate is fragment row lg (j = 0, 1), up is row lg + 8 (j = 2, 3) of the same column.
      const int mt = jj >> 1, j = jj & 1;
      const int m = mt * 8 + 2 * lt + j, n = blockIdx.x * 8 + lg;
      if (m < M && n < n_out) {
        float gate = 0.0f, up = 0.0f;
        for (int s = 0; s < nsum; ++s) {
          gate += partial[s][(mt * 4 + j) * 32 + l];
          up += partial[s][(mt * 4 + j + 2) * 32 + l];
        }
        if constexpr (HAS_BIAS) {
          gate += bias_s[lg];  // bias[n]
          up += bias_s[8 + lg];  // bias[n + n_out]
        }
        // stock's roundings: the projection's outputs, silu(gate), then the product
        const float s = rnd<T>(silu_f(rnd<T>(gate)));
        const int64_t o = static_cast<int64_t>(m) * n_out + n;
        y[o] = add_residual(Num<T>::from_float(s * rnd<T>(up)), res, o);
      }
    } else {
      const int mt = jj >> 2, j = jj & 3;
      const int m = mt * 8 + 2 * lt + (j & 1), n = blockIdx.x * 16 + lg + 8 * (j >> 1);
      if (m < M && n < N) {
        float v = 0.0f;
        for (int s = 0; s < nsum; ++s) v += partial[s][(mt * 4 + j) * 32 + l];
        if constexpr (HAS_BIAS) v += bias_s[lg + 8 * (j >> 1)];  // bias[n]
        const int64_t o = static_cast<int64_t>(m) * N + n;
        y[o] = add_residual(Num<T>::from_float(activate<ACT>(rnd<T>(v))), res, o);  // act of the rounded output
      }
    }
  }
  if constexpr (ROPE) {
    // Every thread of the block has read the slot (and stored its outputs): take a ticket; the
    // last block advances the cache length and resets the ticket for the next launch.
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      if (atomicAdd(ra.ticket, 1u) == gridDim.x - 1) {
        *ra.ticket = 0u;
        if (ra.len64) {
          *static_cast<volatile int64_t*>(ra.cache_len) = slot + 1;
        } else {
          *static_cast<volatile int32_t*>(ra.cache_len) = static_cast<int32_t>(slot + 1);
        }
        __threadfence();
      }
    }
  }
  if constexpr (POSTNORM) {
    // Every thread has stored its outputs; thread 0 publishes them (fence) and takes a ticket.
    __shared__ bool last_s;
    __shared__ float rstd_o[kMaxGemvRows];
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      last_s = atomicAdd(pn.ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last_s) return;
    __threadfence();  // the other blocks' y, read below from L2 (ld.cg)
    auto y_chunk = [&](int m, int k) {
      return __ldcg(reinterpret_cast<const uint4*>(y + static_cast<int64_t>(m) * N + k));
    };
    block_rstd<T>(M, N, pn.eps, y_chunk, &partial[0][0], MT * 4 * 32, rstd_o);  // N % 8 == 0 (host check)
    T* out = static_cast<T*>(pn.out);
    for (int i = threadIdx.x; i < M * (N / 8); i += blockDim.x) {
      const int m = i / (N / 8), k = (i - m * (N / 8)) * 8;
      const uint4 wv = __ldg(reinterpret_cast<const uint4*>(static_cast<const T*>(pn.weight) + k));
      *reinterpret_cast<uint4*>(out + static_cast<int64_t>(m) * N + k) = rms_scale8<T>(y_chunk(m, k), wv, rstd_o[m]);
    }
    if (threadIdx.x == 0) *pn.ticket = 0u;  // the next launch starts after this grid completes
  }
}

// out[r, c] = silu(y[r, c]) * y[r, h + c] for y: [rows, 2h], out: [rows, h], rounded as stock's
// `silu(gate) * up` rounds (silu's output, then the product); 8 elements per thread with 16-byte
// accesses when VEC (h % 8 == 0), else one.
template <typename T, bool VEC>
__global__ void silu_mul_kernel(const T* __restrict__ y, T* __restrict__ out, int64_t rows, int64_t h) {
  pdl_wait();  // launched with PDL where it is on: the down projection's GEMV may launch behind it
  pdl_launch_dependents();
  constexpr int kE = VEC ? 8 : 1;
  const int64_t per_row = h / kE, total = rows * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / per_row, c = (i - r * per_row) * kE;
    const T* gp = y + r * 2 * h + c;
    T* op = out + r * h + c;
    if constexpr (VEC) {
      const uint4 gv = *reinterpret_cast<const uint4*>(gp);
      const uint4 uv = *reinterpret_cast<const uint4*>(gp + h);
      uint4 ov;
      const T* ge = reinterpret_cast<const T*>(&gv);
      const T* ue = reinterpret_cast<const T*>(&uv);
      T* oe = reinterpret_cast<T*>(&ov);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        oe[e] = Num<T>::from_float(rnd<T>(silu_f(Num<T>::to_float(ge[e]))) * Num<T>::to_float(ue[e]));
      *reinterpret_cast<uint4*>(op) = ov;
    } else {
      *op = Num<T>::from_float(rnd<T>(silu_f(Num<T>::to_float(*gp))) * Num<T>::to_float(gp[h]));
    }
  }
}

template <typename T>
struct CudaType;
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Attribute `A` of the current device, cached per device (a host-side query, safe during graph
// capture); 0 where the device index is out of the cache's range. Not through
// ATen/cuda/CUDAContext.h, which needs the cuSPARSE/cuBLAS headers at build time.
template <cudaDeviceAttr A>
int device_attribute() {
  constexpr int kMaxDevices = 64;
  static int cache[kMaxDevices] = {};  // value + 1; 0 unknown
  const int dev = c10::cuda::current_device();
  if (dev < 0 || dev >= kMaxDevices) return 0;
  if (cache[dev] == 0) {
    int v = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, A, dev));
    cache[dev] = v + 1;
  }
  return cache[dev] - 1;
}

// SM count of the current device (132 where it cannot be read).
int sm_count() {
  const int v = device_attribute<cudaDevAttrMultiProcessorCount>();
  return v > 0 ? v : 132;
}

// The current device's compute capability major (0 where it cannot be read).
int device_major() { return device_attribute<cudaDevAttrComputeCapabilityMajor>(); }

// A launch attribute grouping blocks into thread-block clusters of `y` blocks along y.
cudaLaunchAttribute cluster_y_attr(int y) {
  cudaLaunchAttribute a = {};
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = 1;
  a.val.clusterDim.y = static_cast<unsigned>(y);
  a.val.clusterDim.z = 1;
  return a;
}

// Dynamic shared memory of a block of `warps` warps: the weight ring of the staged kernel.
constexpr int ring_bytes(int nb, int warps) { return nb * kUnroll * 64 * 16 * warps; }

// Normed rows of x the RMSNorm prologue keeps in shared memory, at most (larger M * K: the norm
// runs as ATen ops before a plain GEMV).
constexpr int64_t kMaxNormSmemBytes = 64 << 10;

// Lets the kernel use more than 48 KB of dynamic shared memory (once per instantiation): what its
// largest block asks for, at most what the device allows beside the static arrays (a 3-batch ring
// of 16 warps plus 64 KiB of normed rows would not fit: resident_blocks then reports 0 for that
// block size, so the launch takes fewer warps). Returns the limit set.
template <typename Kernel>
int allow_ring(Kernel kernel, int nb, bool norm) {
  const int want = ring_bytes(nb, kMaxWarps) + (norm ? static_cast<int>(kMaxNormSmemBytes) : 0);
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c10::cuda::current_device()));
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  const int bytes = std::min<int>(want, optin - static_cast<int>(attr.sharedSizeBytes));
  if (bytes > 0) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return bytes;
}

// Where gemv_kernel takes the cluster split (CL): the register kernel for M = 9..16 rows (MT = 2)
// with the plain epilogue (no norm prologue, no RoPE or norm epilogue). At M <= 8 the staged
// kernel was as fast on 264 as on 272 tiles (77.2 / 76.5% of read bandwidth at M = 8).
template <int MT, int NB, bool NORM, int EPI>
constexpr bool kClusterOk = MT == 2 && NB == 0 && !NORM && EPI == kEpiPlain;

// Blocks of `warps` warps that fit on one SM at once (registers, shared memory: the ring and
// `extra_smem` more), cached per kernel and block size with the last extra_smem asked for (a
// model's norm prologue asks with the same M * K every step; a host-side query, safe during graph
// capture). One 64-bit word per entry, so concurrent callers never pair a size with another's count.
// 0: a block of that size does not fit (more shared memory than `smem_limit`, allow_ring's).
// HB: the kernel with a bias, which may take a few more registers than the one without.
template <typename T, int MT, Act ACT, int NB, bool NORM, int EPI, bool HB>
int resident_blocks(int warps, int extra_smem, int smem_limit) {
  static std::atomic<int64_t> cache[kMaxWarps + 1] = {};
  const int64_t hit = cache[warps].load(std::memory_order_relaxed);
  if (hit != 0 && (hit >> 32) == int64_t(extra_smem) + 1) return static_cast<int>(hit & 0xffffffff);
  int n = 0;
  if (ring_bytes(NB, warps) + extra_smem <= smem_limit)
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv_kernel<T, MT, ACT, HB, NB, NORM, EPI>,
                                                                 32 * warps, ring_bytes(NB, warps) + extra_smem));
  cache[warps].store(((int64_t(extra_smem) + 1) << 32) | n, std::memory_order_relaxed);
  return n;
}

// Clusters of `split` blocks of `warps` warps of the cluster-split kernel (no dynamic shared
// memory: NB = 0, no norm) that are resident at once on the device, cached per (warps, split).
// HB as for resident_blocks.
template <typename T, int MT, Act ACT, int NB, bool NORM, int EPI, bool HB>
int resident_clusters(int warps, int split) {
  static std::atomic<int> cache[kMaxWarps + 1][kMaxClusterSplit + 1] = {};  // count + 1; 0 unknown
  const int hit = cache[warps][split].load(std::memory_order_relaxed);
  if (hit != 0) return hit - 1;
  cudaLaunchAttribute attr[1] = {cluster_y_attr(split)};
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(1, static_cast<unsigned>(split));
  cfg.blockDim = dim3(32 * warps);
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&n, gemv_kernel<T, MT, ACT, HB, NB, NORM, EPI, true>, &cfg));
  cache[warps][split].store(n + 1, std::memory_order_relaxed);
  return n;
}

// Output tiles (blocks before any cluster split) of a GEMV writing n_out columns from an N-row
// weight: 16 weight rows a tile, 8 output columns (16 rows: gate and up) for gated_silu.
inline int64_t gemv_tiles(Act act, int64_t N, int64_t n_out) {
  return act == Act::kGatedSilu ? (n_out + 7) / 8 : (N + 15) / 16;
}

// Batches of weights each warp keeps in flight through shared memory (0: the register-only
// kernel). Measured on the H100 (bench_linear, M = 1 / 16): the ring (2 batches) took the 1-2B
// models' GEMVs from 46-80% to 62-81% of read bandwidth at M = 1 (bench/results/..._1023_...) (GLM-4 qkv 18.4 -> 15.6 us,
// below cuBLAS's 16.3), but made most M = 16 cases slower (its 512-thread blocks then hold 128 KB
// of ring, one per SM), so M > 8 keeps the register kernel. M <= 8 takes 3 batches where the
// grid has more tiles than SMs but at most 1.5x as many (some SMs stream two blocks, most one):
// there the deeper ring lets the busier SMs keep more bytes in flight. On the H100, this rule
// against 2 batches everywhere (bench/results/..._2225_.../gemv_depth_*.log), M = 1: 2048 -> 3072
// (192 tiles) 5.27 / 5.80 us, 2048 -> 2560 (160) 4.91 / 5.12, 4096 -> 3072 9.83 / 9.98; M = 8:
// 2048 -> 3072 5.76 / 5.93, 2048 -> 2560 5.19 / 5.03. The other grids lost 1-7% with 3 batches
// (..._2106_.../gemv_nb_*.log: 2048 -> 8192 13.84 / 14.08 us, 8192 -> 2048 13.73-13.94 /
// 14.27-14.36, 4096 -> 4608 15.0-15.2 / 16.1), and so did the models when every grid took 3
// (Llama-3.2-1B 812-814 / 796-798 tok/s); with this rule the 1B's captured step is unchanged
// (1.106-1.118 vs 1.111-1.118 ms, ..._2231_...).
// AUTOGLM_GEMV_STAGES (0, 2 or 3) overrides both (a tuning knob; read once per process).
int gemv_stages(int mt, int64_t tiles) {
  static const Knob stages = [] {
    Knob k = read_knob("AUTOGLM_GEMV_STAGES", -1, 0, 3);
    if (k.error.empty() && k.value == 1) k.error = "AUTOGLM_GEMV_STAGES must be 0, 2 or 3, got 1";
    return k;
  }();
  const int env_nb = static_cast<int>(knob_value(stages));
  if (env_nb >= 0) return env_nb;
  if (mt != 1) return 0;
  const int64_t sms = sm_count();
  return tiles > sms && 2 * tiles <= 3 * sms ? 3 : 2;
}

// Programmatic dependent launch on devices of compute capability >= 9 unless AUTOGLM_PDL is 0 or
// triton (read once per process; the switch autoglm_kernels/triton/__init__.py reads too).
bool pdl_enabled() {
  static const bool env_on = [] {
    const char* env = std::getenv("AUTOGLM_PDL");
    return env == nullptr || *env == '\0' || std::string(env) == "1" || std::string(env) == "gemv";
  }();
  return env_on && device_major() >= 9;
}

// kernel<<<grid, block, 0, stream>>>(args...), with the programmatic-serialization attribute
// where PDL is on (the kernel must start with pdl_launch_dependents / pdl_wait), in clusters of
// `cluster_y` blocks along y where that is > 1.
template <typename... Params, typename... Args>
void launch_pdl_cluster(void (*kernel)(Params...), dim3 grid, dim3 block, int smem_bytes, cudaStream_t stream,
                        int cluster_y, Args... args) {
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_y > 1) attr[n++] = cluster_y_attr(cluster_y);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = static_cast<size_t>(smem_bytes);
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = static_cast<unsigned>(n);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...));
}
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, int smem_bytes, cudaStream_t stream, Args... args) {
  launch_pdl_cluster(kernel, grid, block, smem_bytes, stream, 1, args...);
}

// Blocks per tile of the cluster split-K (gemv_kernel's CL) for `tiles` tiles of `num_steps` K
// steps on `sms` SMs; fits(S): whether all tiles' clusters of S blocks are resident at once.
// The split whose busiest SM streams the fewest steps, ceil(tiles * S / sms) * ceil(num_steps / S),
// if that is at least 10% fewer than without one, and each block keeps >= kMinClusterSteps steps;
// else 1. Where tiles / sms leaves a short last wave of blocks (GLM-4's qkv at M = 9..16: 288
// tiles on 132 SMs, so 24 SMs stream 3 tiles while 108 stream 2) the blocks per SM even out.
// Measured on the H100 at M = 9 / 16 (bench/results/..._1325_.../gemv_cluster_*.log), 2 blocks
// per tile against 1: 4096 -> 4608 16.45 / 16.55 us (stock 16.4 / 16.5) against 16.82 / 17.14,
// 4096 -> 5120 17.21 / 17.27 against 18.09 / 18.44; shorter block slices lost (2048 -> 3072,
// 32 steps a block: 7.37 / 7.48 against 6.84 / 7.07), as did 3 and 4 blocks per tile on
// 4096-wide rows (up to 1.9x slower).
constexpr int kMinClusterSteps = 64;
template <typename Fits>
int cluster_split(int64_t tiles, int num_steps, int sms, Fits fits) {
  const int knob = gemv_cluster_split_knob();
  if (knob == 1) return 1;
  if (knob > 1) return knob * kUnroll <= num_steps && fits(knob) ? knob : 1;  // forced where it can run
  auto busiest = [&](int S) { return ((tiles * S + sms - 1) / sms) * ((num_steps + S - 1) / S); };
  int best = 1;
  for (int S = 2; S <= kMaxClusterSplit && (num_steps + S - 1) / S >= kMinClusterSteps; ++S) {
    if (busiest(S) < busiest(best) && fits(S)) best = S;
  }
  return busiest(best) * 10 <= busiest(1) * 9 ? best : 1;
}

// What a GEMV launch reads besides x, w and bias: the RMSNorm weight and eps of its prologue and
// the residual added to its output (null: none).
struct Extras {
  const at::Tensor* norm_weight = nullptr;
  double eps = 0.0;
  const at::Tensor* residual = nullptr;
  const RopeArgs* rope = nullptr;  // the qkv projection's RoPE + cache-append epilogue (qkv_rope_append)
  const PostNormArgs* post_norm = nullptr;  // the RMSNorm after it (linear_add_rms_norm)
};

// x: [M, K], w: [N, K], y: [M, n_out].
template <typename scalar_t, int MT, Act ACT, int NB, bool NORM, int EPI>
void launch_gemv_nb(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                    int64_t n_out, const Extras& ex) {
  using T = typename CudaType<scalar_t>::type;
  static const int smem_limit = [] {  // before the occupancy query, which counts the ring
    return std::min(allow_ring(gemv_kernel<T, MT, ACT, false, NB, NORM, EPI>, NB, NORM),
                    allow_ring(gemv_kernel<T, MT, ACT, true, NB, NORM, EPI>, NB, NORM));
  }();
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(w.size(1)), N = static_cast<int>(w.size(0));
  const int64_t tiles = gemv_tiles(ACT, N, n_out);
  const int num_steps = (K + kStepK - 1) / kStepK;
  const int sms = sm_count();
  // f(std::true_type) with a bias, f(std::false_type) without: the kernel instance this call launches.
  auto with_bias = [&](auto f) { return bias.has_value() ? f(std::true_type{}) : f(std::false_type{}); };
  // Clusters of `S` blocks of `w` warps resident at once, for the kernel this call launches.
  auto clusters = [&](int w, int S) {
    if constexpr (kClusterOk<MT, NB, NORM, EPI>) {
      return with_bias([&](auto hb) { return resident_clusters<T, MT, ACT, NB, NORM, EPI, decltype(hb)::value>(w, S); });
    } else {
      return 0;  // no cluster kernel here
    }
  };
  // Blocks per tile (cluster split-K, sm_90+): 1 unless it evens out the blocks per SM.
  int split = 1;
  if constexpr (kClusterOk<MT, NB, NORM, EPI>) {
    if (device_major() >= 9) {
      split = cluster_split(tiles, num_steps, sms, [&](int S) {
        return tiles <= int64_t(clusters(1, S));
      });
    }
  }
  const int64_t blocks = tiles * split;
  const int block_steps = (num_steps + split - 1) / split;
  // Split K over more warps while the grid is small (aim for ~16 warps per SM), keeping at
  // least two unrolled batches per warp, and only while all tiles stay resident at once: a
  // second, mostly empty wave of blocks costs more than the extra split gains (the H100 run
  // measured M = 16 on 4096->4608 at 0.82x cuBLAS with 288 blocks on 264 resident slots).
  const int norm_smem = NORM ? M * K * static_cast<int>(sizeof(T)) : 0;  // <= kMaxNormSmemBytes
  const int64_t target_warps = int64_t(gemv_warps_per_sm()) * sms;
  auto slots = [&](int w) {  // blocks of w warps resident at once on the device
    const int per_sm =
        with_bias([&](auto hb) { return resident_blocks<T, MT, ACT, NB, NORM, EPI, decltype(hb)::value>(w, norm_smem, smem_limit); });
    return int64_t(per_sm) * sms;
  };
  auto fits = [&](int w) {  // every warp gets a batch, and all blocks are resident at once
    if (w * kUnroll > block_steps) return false;
    if constexpr (kClusterOk<MT, NB, NORM, EPI>) {
      if (split > 1) return tiles <= int64_t(clusters(w, split));
    }
    return blocks <= slots(w);
  };
  int warps = 1;
  while (warps < kMaxWarps && blocks * warps < target_warps && fits(2 * warps)) warps *= 2;
  // Where doubling stopped on residency, not on the target, take the most warps in between that
  // still fit: e.g. GLM-4's qkv at M = 9..16 (288 tiles, register-bound 4-warp blocks, 8-warp
  // blocks fit only 264 at once) gets 6-warp blocks, 1.5x the warps streaming its weights.
  // The staged kernel (M <= 8) takes such a count only where that leaves free block slots for at
  // least half as many blocks as there are SMs: under PDL the next kernel's blocks become resident
  // in those slots and start their loads while this one runs. Measured on the H100 at M = 1
  // (bench/results/..._2106_.../gemv_nb_*.log, powers of two / any count): 2048 -> 4096 (256
  // blocks) 7.10 / 7.97 us, 2048 -> 8192 (512) 13.49 / 13.85, 4096 -> 4096 (256) 13.71 / 13.82;
  // the any count won on the smaller grids (2 batches; they take 3 now, see gemv_stages):
  // 2048 -> 3072 (192) 5.94 / 5.80, 2048 -> 2560 (160) 5.12 / 5.08.
  const int any_warps = gemv_any_warps();
  auto leaves_room = [&](int w) { return any_warps == 2 || NB == 0 || slots(w) - blocks >= sms / 2; };
  if (any_warps > 0 && warps < kMaxWarps && blocks * warps < target_warps) {
    for (int w = std::min(2 * warps - 1, kMaxWarps); w > warps; --w) {
      if (fits(w) && leaves_room(w)) {
        warps = w;
        break;
      }
    }
  }
  const int steps_per_warp = (num_steps + split * warps - 1) / (split * warps);
  const int prefetch_bytes = static_cast<int>(std::min<int64_t>(gemv_prefetch_bytes(), int64_t(steps_per_warp) * kStepK * x.element_size()));

  auto ptr = [](const at::Tensor* t) { return t == nullptr ? nullptr : reinterpret_cast<const T*>(t->data_ptr<scalar_t>()); };
  const T* xp = reinterpret_cast<const T*>(x.data_ptr<scalar_t>());
  const T* wp = reinterpret_cast<const T*>(w.data_ptr<scalar_t>());
  T* yp = reinterpret_cast<T*>(y.data_ptr<scalar_t>());
  const T* bp = bias.has_value() ? reinterpret_cast<const T*>(bias->data_ptr<scalar_t>()) : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(split)), block(32 * warps);
  const RopeArgs ra = ex.rope != nullptr ? *ex.rope : RopeArgs{};
  const PostNormArgs pn = ex.post_norm != nullptr ? *ex.post_norm : PostNormArgs{};
  auto go = [&](auto with_bias, auto without_bias) {
    launch_pdl_cluster(bp != nullptr ? with_bias : without_bias, grid, block, ring_bytes(NB, warps) + norm_smem, stream,
                       split, xp, wp, bp, yp, M, N, K, static_cast<int>(n_out), steps_per_warp, prefetch_bytes,
                       ptr(ex.norm_weight), static_cast<float>(ex.eps), ptr(ex.residual), ra, pn);
  };
  constexpr bool kCl = kClusterOk<MT, NB, NORM, EPI>;
  if (kCl && split > 1) {
    go(gemv_kernel<T, MT, ACT, true, NB, NORM, EPI, kCl>, gemv_kernel<T, MT, ACT, false, NB, NORM, EPI, kCl>);
  } else {
    go(gemv_kernel<T, MT, ACT, true, NB, NORM, EPI>, gemv_kernel<T, MT, ACT, false, NB, NORM, EPI>);
  }
}

template <typename scalar_t, int MT, Act ACT, bool NORM, int EPI = kEpiPlain>
void launch_gemv_in(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                    int64_t n_out, const Extras& ex) {
  switch (gemv_stages(MT, gemv_tiles(ACT, w.size(0), n_out))) {
    case 0: return launch_gemv_nb<scalar_t, MT, ACT, 0, NORM, EPI>(x, w, bias, y, n_out, ex);
    case 3: return launch_gemv_nb<scalar_t, MT, ACT, 3, NORM, EPI>(x, w, bias, y, n_out, ex);
    default: return launch_gemv_nb<scalar_t, MT, ACT, 2, NORM, EPI>(x, w, bias, y, n_out, ex);
  }
}

// Only the prologues the ops use are instantiated: RMSNorm before the plain and the gated
// projection (qkv, gate_up).
template <typename scalar_t, int MT, Act ACT>
void launch_gemv_act(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                     int64_t n_out, const Extras& ex) {
  if constexpr (ACT == Act::kNone || ACT == Act::kGatedSilu) {
    if (ex.norm_weight != nullptr) return launch_gemv_in<scalar_t, MT, ACT, true>(x, w, bias, y, n_out, ex);
  }
  AG_CHECK(ex.norm_weight == nullptr, "fused_linear: no GEMV norm prologue for this activation");
  launch_gemv_in<scalar_t, MT, ACT, false>(x, w, bias, y, n_out, ex);
}

template <typename scalar_t, int MT>
void launch_gemv_mt(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                    Act act, int64_t n_out, const Extras& ex) {
  switch (act) {
    case Act::kNone: return launch_gemv_act<scalar_t, MT, Act::kNone>(x, w, bias, y, n_out, ex);
    case Act::kRelu: return launch_gemv_act<scalar_t, MT, Act::kRelu>(x, w, bias, y, n_out, ex);
    case Act::kGelu: return launch_gemv_act<scalar_t, MT, Act::kGelu>(x, w, bias, y, n_out, ex);
    case Act::kSilu: return launch_gemv_act<scalar_t, MT, Act::kSilu>(x, w, bias, y, n_out, ex);
    case Act::kGatedSilu: return launch_gemv_act<scalar_t, MT, Act::kGatedSilu>(x, w, bias, y, n_out, ex);
  }
}

// y [M, n_out] = the GEMV of x (rows <= 16) against w, with the prologue and residual of `ex`.
template <typename scalar_t>
void launch_gemv(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                 Act act, int64_t n_out, const Extras& ex) {
  if (x.size(0) <= 8) {
    launch_gemv_mt<scalar_t, 1>(x, w, bias, y, act, n_out, ex);
  } else {
    launch_gemv_mt<scalar_t, 2>(x, w, bias, y, act, n_out, ex);
  }
}

// out = silu(y[:, :h]) * y[:, h:] for a fresh contiguous y [rows, 2h] of fp16/bf16.
at::Tensor silu_mul(const at::Tensor& y) {
  const int64_t rows = y.size(0), h = y.size(1) / 2;
  at::Tensor out = at::empty({rows, h}, y.options());
  if (out.numel() == 0) return out;
  const bool vec = h % 8 == 0 && aligned16(y);
  const int64_t items = rows * (vec ? h / 8 : h);
  const int threads = 256;
  const int64_t max_blocks = 32LL * sm_count();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((items + threads - 1) / threads, max_blocks));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(y.scalar_type(), "fused_linear_silu_mul", [&] {
    using T = typename CudaType<scalar_t>::type;
    const T* yp = reinterpret_cast<const T*>(y.data_ptr<scalar_t>());
    T* op = reinterpret_cast<T*>(out.data_ptr<scalar_t>());
    launch_pdl(vec ? silu_mul_kernel<T, true> : silu_mul_kernel<T, false>, dim3(blocks), dim3(threads), 0, stream, yp,
               op, rows, h);
  });
  return out;
}

// The best stock path for x2 [M, K] (any M): cuBLAS(Lt) GEMM with what epilogue it can fuse.
at::Tensor gemm_path(const at::Tensor& x2, const at::Tensor& weight, const std::optional<at::Tensor>& bias, Act act) {
  const bool reduced = x2.scalar_type() == at::kHalf || x2.scalar_type() == at::kBFloat16;
  switch (act) {
    case Act::kRelu:
      // cuBLASLt RELU_BIAS epilogue: relu commutes with rounding, so this equals stock's
      // linear-then-relu. (Its GELU_BIAS epilogue works on the fp32 sums, before stock's rounding
      // of the linear's output: gelu takes the default path, as stock does.)
      if (bias.has_value() && x2.size(0) > 0 && x2.size(1) > 0)
        return at::_addmm_activation(*bias, x2, weight.t(), 1, 1, false);
      return apply_activation_(at::linear(x2, weight, bias), act);
    case Act::kGatedSilu:
      if (reduced) return silu_mul(at::linear(x2, weight, bias));
      return apply_activation_(at::linear(x2, weight, bias), act);
    default:
      return apply_activation_(at::linear(x2, weight, bias), act);
  }
}

// Whether M rows of `dtype` against weight [N, K] take the handwritten GEMV (else gemm_path).
bool gemv_takes(at::ScalarType dtype, int64_t M, const at::Tensor& weight) {
  const int64_t N = weight.size(0), K = weight.size(1);
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  return reduced && M >= 1 && M <= kMaxGemvRows && N >= 1 && K >= 8 && K % 8 == 0 && N <= INT32_MAX / 2 &&
         K <= INT32_MAX / 2 && aligned16(weight) && N * K * int64_t(weight.element_size()) <= max_gemv_weight_bytes();
}

// act(norm?(x2) @ weight^T + b) (+ residual) for 2-D x2 [M, K]: the GEMV where it takes the
// shape; else gemm_path, with the norm and the residual add as ATen ops around it.
at::Tensor linear_2d(const at::Tensor& x2, const at::Tensor& weight, const std::optional<at::Tensor>& b, Act act,
                     int64_t n_out, const Extras& ex = {}) {
  const int64_t M = x2.size(0);
  const bool gemv = gemv_takes(x2.scalar_type(), M, weight);
  if (ex.norm_weight != nullptr && (!gemv || M * x2.size(1) * x2.element_size() > kMaxNormSmemBytes)) {
    Extras plain = ex;  // no GEMV, or more normed rows than the prologue's shared memory holds
    plain.norm_weight = nullptr;
    return linear_2d(reference_rms_norm(x2, *ex.norm_weight, ex.eps), weight, b, act, n_out, plain);
  }
  if (!gemv) {
    at::Tensor y = gemm_path(x2, weight, b, act);
    return ex.residual != nullptr ? y.add_(*ex.residual) : y;
  }
  at::Tensor xc = x2.contiguous();
  if (!aligned16(xc)) xc = xc.clone(at::MemoryFormat::Contiguous);  // a fresh allocation is aligned
  at::Tensor y2 = at::empty({M, n_out}, x2.options());
  if (x2.scalar_type() == at::kBFloat16) {
    launch_gemv<at::BFloat16>(xc, weight, b, y2, act, n_out, ex);
  } else {
    launch_gemv<at::Half>(xc, weight, b, y2, act, n_out, ex);
  }
  return y2;
}

// The optional norm weight and residual of a fused_linear / gated_mlp call, checked and laid out
// for the kernels (contiguous; the residual as [M, n_out]); `ex` points into this object.
struct Prologue {
  at::Tensor norm_weight, residual;
  Extras ex;
  Prologue(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& norm_weight_, double eps,
           const std::optional<at::Tensor>& residual_, int64_t n_out) {
    check_prologue(op, x, norm_weight_, eps, residual_, n_out);
    if (norm_weight_.has_value()) {
      norm_weight = norm_weight_->contiguous();
      ex.norm_weight = &norm_weight;
      ex.eps = eps;
    }
    if (residual_.has_value()) {
      residual = rows_2d(*residual_).contiguous();
      ex.residual = &residual;
    }
  }
  Prologue(const Prologue&) = delete;
};

at::Tensor fused_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             c10::string_view activation, const std::optional<at::Tensor>& norm_weight,
                             double norm_eps, const std::optional<at::Tensor>& residual) {
  const Act act = parse_activation(activation);
  const int64_t n_out = check_args(x, weight, bias, act);
  AG_CHECK_VALUE(x.is_cuda(), "fused_linear: x must be a CUDA tensor here, got ", x.device());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const Prologue pro("fused_linear", x, norm_weight, norm_eps, residual, n_out);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  return linear_2d(rows_2d(x), weight, b, act, n_out, pro.ex).reshape(out_shape(x, n_out));
}

// down(silu(gate) * up) (+ residual) with [gate; up] = norm?(x) @ gate_up^T + gate_up_bias, in
// two kernels at decode where both projections take the GEMV: the gated GEMV (RMSNorm in its
// prologue, silu-multiply in its epilogue) then the down GEMV (residual add in its epilogue);
// else cuBLAS + silu_mul for gate_up. (A down GEMV computing silu(gate) * up as it loaded x,
// after a cuBLAS gate_up, measured 45-50 vs 45 us for cuBLAS + silu_mul + GEMV: removed.)
at::Tensor gated_mlp_cuda(const at::Tensor& x, const at::Tensor& gate_up, const std::optional<at::Tensor>& gate_up_bias,
                          const at::Tensor& down, const std::optional<at::Tensor>& down_bias,
                          const std::optional<at::Tensor>& norm_weight, double norm_eps,
                          const std::optional<at::Tensor>& residual) {
  const int64_t n_out = check_mlp_args(x, gate_up, gate_up_bias, down, down_bias);
  AG_CHECK_VALUE(x.is_cuda(), "gated_mlp: x must be a CUDA tensor here, got ", x.device());
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const Prologue pro("gated_mlp", x, norm_weight, norm_eps, residual, n_out);
  std::optional<at::Tensor> bg, bd;
  if (gate_up_bias.has_value()) bg = gate_up_bias->contiguous();
  if (down_bias.has_value()) bd = down_bias->contiguous();
  const at::Tensor x2 = rows_2d(x);
  const int64_t inner = down.size(1);
  Extras in_ex = pro.ex, out_ex;  // the norm before gate_up, the residual after down
  in_ex.residual = nullptr;
  out_ex.residual = pro.ex.residual;
  const at::Tensor h = linear_2d(x2, gate_up, bg, Act::kGatedSilu, inner, in_ex);
  return linear_2d(h, down, bd, Act::kNone, n_out, out_ex).reshape(out_shape(x, n_out));
}

template <typename scalar_t, int MT, int EPI>
void launch_epi_mt(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                   const Extras& ex) {
  if constexpr (EPI == kEpiRope) {
    if (ex.norm_weight != nullptr) return launch_gemv_in<scalar_t, MT, Act::kNone, true, EPI>(x, w, bias, y, w.size(0), ex);
  }
  AG_CHECK(ex.norm_weight == nullptr, "fused_linear: no GEMV norm prologue before this epilogue");
  launch_gemv_in<scalar_t, MT, Act::kNone, false, EPI>(x, w, bias, y, w.size(0), ex);
}

// y [M, N] = the plain projection of x [M, K] (contiguous, 16-byte aligned, M <= 16) against
// w [N, K] with epilogue EPI (kEpiRope: qkv_rope_append, kEpiNorm: linear_add_rms_norm) and the
// norm prologue / residual of `ex`: the dtype x rows dispatch of both ops (launch_gemv's twin).
template <int EPI>
void launch_gemv_epi(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias, at::Tensor& y,
                     const Extras& ex) {
  const bool one_tile = x.size(0) <= 8;
  if (x.scalar_type() == at::kBFloat16) {
    one_tile ? launch_epi_mt<at::BFloat16, 1, EPI>(x, w, bias, y, ex) : launch_epi_mt<at::BFloat16, 2, EPI>(x, w, bias, y, ex);
  } else {
    one_tile ? launch_epi_mt<at::Half, 1, EPI>(x, w, bias, y, ex) : launch_epi_mt<at::Half, 2, EPI>(x, w, bias, y, ex);
  }
}

// autoglm::qkv_rope_append on CUDA: the decode qkv GEMV (with its optional RMSNorm prologue) and
// RoPE + the static-cache append in its epilogue (RopeArgs): one launch where the stock step runs
// the projection, the rotary kernels and the cache update. x [B, 1, K] (one token per sequence,
// every sequence at slot *cache_len); returns [B, 1, N] with q and k rotated. Only shapes the GEMV
// takes (ops.qkv_rope_append_ composes fused_linear + rope_append_kv for the rest).
at::Tensor qkv_rope_append_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& norm_weight, double norm_eps,
                                const std::optional<at::Tensor>& cos, const std::optional<at::Tensor>& sin,
                                int64_t rope_layout, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_len, const at::Tensor& ticket, int64_t num_q_heads) {
  constexpr const char* op = "qkv_rope_append";
  const int64_t n = check_args(x, weight, bias, Act::kNone);
  AG_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor here, got ", x.device());
  AG_CHECK_VALUE(x.dim() == 3 && x.size(1) == 1, op, ": x must be [B, 1, K] (one decode token per sequence), got ",
                 x.sizes());
  const int64_t B = x.size(0);
  AG_CHECK_VALUE(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && k_cache.size(0) == B, op,
                 ": k_cache and v_cache must both be [B=", B, ", Hk, capacity, D]; got ", k_cache.sizes(), " and ",
                 v_cache.sizes());
  for (const at::Tensor* t : {&k_cache, &v_cache}) {
    AG_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": cache dtype ", t->scalar_type(), " differs from x dtype ",
                  x.scalar_type());
    AG_CHECK_VALUE(t->device() == x.device() && t->stride(3) == 1, op,
                   ": the caches must be on x's device with a contiguous last dim");
  }
  const int64_t hk = k_cache.size(1), d = k_cache.size(3);
  AG_CHECK_VALUE(d % 16 == 0, op, ": head_dim must be a multiple of 16, got ", d);
  AG_CHECK_VALUE(num_q_heads >= 1 && n == (num_q_heads + 2 * hk) * d, op, ": weight has N=", n, " rows but ",
                 num_q_heads, " q heads and ", hk, " kv heads of ", d, " dims need ", (num_q_heads + 2 * hk) * d);
  AG_CHECK_TYPE(cache_len.scalar_type() == at::kLong || cache_len.scalar_type() == at::kInt, op,
                ": cache_len must be int64 or int32, got ", cache_len.scalar_type());
  AG_CHECK_TYPE(ticket.scalar_type() == at::kInt, op, ": ticket must be int32, got ", ticket.scalar_type());
  AG_CHECK_VALUE(cache_len.numel() == 1 && ticket.numel() == 1 && cache_len.device() == x.device() &&
                     ticket.device() == x.device(),
                 op, ": cache_len and ticket must be one-element tensors on x's device");
  AG_CHECK_VALUE(cos.has_value() == sin.has_value(), op, ": pass both cos and sin, or neither (no RoPE)");
  AG_CHECK_VALUE(gemv_takes(x.scalar_type(), B, weight), op,
                 ": this weight and batch do not take the decode GEMV (fuses_prologue is false); "
                 "use fused_linear + rope_append_kv");
  check_prologue(op, x, norm_weight, norm_eps, std::nullopt, n);
  const c10::cuda::OptionalCUDAGuard guard(x.device());

  RopeArgs ra;
  if (cos.has_value()) {
    const at::Tensor &c = *cos, &s = *sin;
    AG_CHECK_VALUE(c.dim() == 3 && c.sizes() == s.sizes() && (c.size(0) == 1 || c.size(0) == B) && c.size(1) == 1,
                   op, ": cos and sin must be [B=", B, " or 1, 1, R]; got ", c.sizes(), " and ", s.sizes());
    AG_CHECK_TYPE(c.scalar_type() == x.scalar_type() && s.scalar_type() == x.scalar_type(), op,
                  ": cos/sin dtype must be x's (", x.scalar_type(), "), got ", c.scalar_type());
    AG_CHECK_VALUE(c.device() == x.device() && s.device() == x.device(), op, ": cos/sin must be on x's device");
    const int64_t R = c.size(2);
    AG_CHECK_VALUE(R >= 2 && R % 2 == 0 && R <= d, op, ": rotary dim R=", R, " must be even, >= 2 and <= head_dim ",
                   d);
    AG_CHECK_VALUE(rope_layout >= 0 && rope_layout <= 2, op, ": rope_layout must be 0, 1 or 2, got ", rope_layout);
    ra.cos = c.data_ptr();
    ra.sin = s.data_ptr();
    ra.cos_b = c.size(0) == 1 ? 0 : c.stride(0);
    ra.sin_b = s.size(0) == 1 ? 0 : s.stride(0);
    ra.cos_r = c.stride(2);
    ra.sin_r = s.stride(2);
    ra.F = static_cast<int>(R / 2);
    ra.layout = static_cast<int>(rope_layout);
  }
  ra.hq = static_cast<int>(num_q_heads);
  ra.hk = static_cast<int>(hk);
  ra.d = static_cast<int>(d);
  ra.k_cache = k_cache.data_ptr();
  ra.v_cache = v_cache.data_ptr();
  ra.kc_b = k_cache.stride(0), ra.kc_h = k_cache.stride(1), ra.kc_n = k_cache.stride(2);
  ra.vc_b = v_cache.stride(0), ra.vc_h = v_cache.stride(1), ra.vc_n = v_cache.stride(2);
  ra.capacity = k_cache.size(2);
  ra.cache_len = cache_len.data_ptr();
  ra.len64 = cache_len.scalar_type() == at::kLong;
  ra.ticket = reinterpret_cast<unsigned*>(ticket.data_ptr<int32_t>());

  at::Tensor x2 = rows_2d(x).contiguous();
  at::Tensor nw;
  Extras ex;
  ex.rope = &ra;
  if (norm_weight.has_value()) {
    if (x2.numel() * x2.element_size() > kMaxNormSmemBytes) {
      x2 = reference_rms_norm(x2, *norm_weight, norm_eps);  // more rows than the prologue stages
    } else {
      nw = norm_weight->contiguous();
      ex.norm_weight = &nw;
      ex.eps = norm_eps;
    }
  }
  if (!aligned16(x2)) x2 = x2.clone(at::MemoryFormat::Contiguous);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  at::Tensor y2 = at::empty({B, n}, x.options());
  launch_gemv_epi<kEpiRope>(x2, weight, b, y2, ex);
  return y2.view({B, 1, n});
}

// autoglm::linear_add_rms_norm on CUDA: h = x @ weight^T + bias + residual and out = RMSNorm(h)
// in one GEMV launch (PostNormArgs) where the GEMV takes the weight (N % 8 == 0); otherwise
// linear_2d and the RMSNorm as ATen ops, with the same rounding. Returns (h, out), [..., N] each.
std::tuple<at::Tensor, at::Tensor> linear_add_rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            const at::Tensor& residual, const at::Tensor& norm_weight,
                                                            double norm_eps, const at::Tensor& ticket) {
  constexpr const char* op = "linear_add_rms_norm";
  const int64_t n = check_args(x, weight, bias, Act::kNone);
  AG_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor here, got ", x.device());
  check_post_norm(op, x, norm_weight, norm_eps, n);
  AG_CHECK_TYPE(ticket.scalar_type() == at::kInt, op, ": ticket must be int32, got ", ticket.scalar_type());
  AG_CHECK_VALUE(ticket.numel() == 1 && ticket.device() == x.device(), op,
                 ": ticket must be a one-element tensor on x's device");
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const Prologue pro(op, x, std::nullopt, norm_eps, residual, n);
  std::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  const at::Tensor x2 = rows_2d(x), nw = norm_weight.contiguous();
  const int64_t M = x2.size(0);
  const auto shape = out_shape(x, n);
  if (!gemv_takes(x.scalar_type(), M, weight) || n % 8 != 0 || !aligned16(nw)) {
    const at::Tensor h = linear_2d(x2, weight, b, Act::kNone, n, pro.ex);
    return {h.reshape(shape), reference_rms_norm(h, nw, norm_eps).reshape(shape)};
  }
  at::Tensor xc = x2.contiguous();
  if (!aligned16(xc)) xc = xc.clone(at::MemoryFormat::Contiguous);
  at::Tensor h = at::empty({M, n}, x.options()), out = at::empty({M, n}, x.options());
  PostNormArgs pn;
  pn.out = out.data_ptr();
  pn.weight = nw.data_ptr();
  pn.eps = static_cast<float>(norm_eps);
  pn.ticket = reinterpret_cast<unsigned*>(ticket.data_ptr<int32_t>());
  Extras ex = pro.ex;
  ex.post_norm = &pn;
  launch_gemv_epi<kEpiNorm>(xc, weight, b, h, ex);
  return {h.view(shape), out.view(shape)};
}

// Whether fused_linear / gated_mlp on `weight` at `rows` rows run a norm prologue or residual
// epilogue inside the GEMV (true) or as ATen ops around cuBLAS (false).
bool fuses_prologue_cuda(const at::Tensor& weight, int64_t rows) { return gemv_takes(weight.scalar_type(), rows, weight); }

}  // namespace
}  // namespace linear
}  // namespace autoglm

TORCH_LIBRARY_IMPL(autoglm, CUDA, m) {
  m.impl("fused_linear", &autoglm::linear::fused_linear_cuda);
  m.impl("gated_mlp", &autoglm::linear::gated_mlp_cuda);
  m.impl("fuses_prologue", &autoglm::linear::fuses_prologue_cuda);
  m.impl("qkv_rope_append", &autoglm::linear::qkv_rope_append_cuda);
  m.impl("linear_add_rms_norm", &autoglm::linear::linear_add_rms_norm_cuda);
}
