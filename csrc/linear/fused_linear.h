// Shared by the CPU and CUDA implementations of autoglm::fused_linear:
// argument checks, activation parsing, and the plain-ATen path (reference on CPU, stock
// fallback on CUDA). y = act(x @ weight^T + bias); gated_silu: weight = [gate; up] stacked
// along N, y = silu(gate) * up of width N/2.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "check.h"

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace autoglm {
namespace linear {

enum class Act : int { kNone = 0, kRelu = 1, kGelu = 2, kSilu = 3, kGatedSilu = 4 };

inline Act parse_activation(c10::string_view name) {
  if (name == "none") return Act::kNone;
  if (name == "relu") return Act::kRelu;
  if (name == "gelu") return Act::kGelu;
  if (name == "silu") return Act::kSilu;
  if (name == "gated_silu") return Act::kGatedSilu;
  AG_CHECK_VALUE(false, "fused_linear: unknown activation '", std::string(name),
                 "'; expected one of: none, relu, gelu, silu, gated_silu");
  return Act::kNone;
}

// weight [N, K] (and bias [N]) against x's dtype and device and the input width K; returns N.
// `op` and `name` (the weight's name) label the errors.
inline int64_t check_weight(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            int64_t K, const char* op = "fused_linear", const char* name = "weight") {
  AG_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": ", name, " dtype ", weight.scalar_type(),
                " differs from x dtype ", x.scalar_type());
  AG_CHECK_VALUE(weight.dim() == 2, op, ": ", name, " must be 2-D [N, K], got ", weight.dim(), " dims");
  AG_CHECK_VALUE(weight.is_contiguous(), op, ": ", name, " must be contiguous");
  AG_CHECK_VALUE(x.device() == weight.device(), op, ": x on ", x.device(), " but ", name, " on ", weight.device());
  const int64_t N = weight.size(0);
  AG_CHECK_VALUE(weight.size(1) == K, op, ": the input has K=", K, " but ", name, " is [", N, ", ", weight.size(1),
                 "]");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    AG_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": ", name, "'s bias dtype ", b.scalar_type(),
                  " differs from x dtype ", x.scalar_type());
    AG_CHECK_VALUE(b.device() == x.device(), op, ": ", name, "'s bias on ", b.device(), " but x on ", x.device());
    AG_CHECK_VALUE(b.dim() == 1 && b.size(0) == N, op, ": ", name, "'s bias must be [", N, "], got ", b.sizes());
  }
  return N;
}

// Checks shared by every device; returns the output width (N, or N/2 for gated_silu).
inline int64_t check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          Act act) {
  AG_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fused_linear: x must be floating point, got ",
                x.scalar_type());
  AG_CHECK_VALUE(x.dim() >= 1, "fused_linear: x must have at least 1 dim");
  const int64_t N = check_weight(x, weight, bias, x.size(-1));
  if (act == Act::kGatedSilu) {
    AG_CHECK_VALUE(N % 2 == 0, "fused_linear: gated_silu needs an even N (gate and up halves), got N=", N);
    return N / 2;
  }
  return N;
}

// Checks of gated_mlp(x, gate_up, gate_up_bias, down, down_bias) = down(silu(gate) * up), where
// [gate; up] = x @ gate_up^T + gate_up_bias: gate_up [2I, K], down [N, I]; returns N.
inline int64_t check_mlp_args(const at::Tensor& x, const at::Tensor& gate_up,
                              const std::optional<at::Tensor>& gate_up_bias, const at::Tensor& down,
                              const std::optional<at::Tensor>& down_bias) {
  const int64_t inner = check_args(x, gate_up, gate_up_bias, Act::kGatedSilu);
  AG_CHECK_VALUE(down.dim() == 2 && down.size(1) == inner, "gated_mlp: gate_up gives ", inner,
                 " features (half of its N=", gate_up.size(0), ") but the down weight is ", down.sizes(),
                 "; expected [N, ", inner, "]");
  return check_weight(x, down, down_bias, inner, "gated_mlp", "down");
}

// The optional RMSNorm weight (applied to x before the projection) and residual (added to its
// output) of fused_linear / gated_mlp: norm_weight [K] and residual [..., n_out] (x's leading
// dims), both of x's dtype and device; eps > 0.
inline void check_prologue(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& norm_weight,
                           double eps, const std::optional<at::Tensor>& residual, int64_t n_out) {
  if (norm_weight.has_value()) {
    const at::Tensor& w = *norm_weight;
    AG_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": norm_weight dtype ", w.scalar_type(),
                  " differs from x dtype ", x.scalar_type());
    AG_CHECK_VALUE(w.device() == x.device(), op, ": norm_weight on ", w.device(), " but x on ", x.device());
    AG_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(-1), op, ": norm_weight must be [K] = [", x.size(-1),
                   "], got ", w.sizes());
    AG_CHECK_VALUE(eps > 0.0, op, ": norm_eps must be > 0, got ", eps);
  }
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    AG_CHECK_TYPE(r.scalar_type() == x.scalar_type(), op, ": residual dtype ", r.scalar_type(),
                  " differs from x dtype ", x.scalar_type());
    AG_CHECK_VALUE(r.device() == x.device(), op, ": residual on ", r.device(), " but x on ", x.device());
    std::vector<int64_t> want(x.sizes().begin(), x.sizes().end());
    want.back() = n_out;
    AG_CHECK_VALUE(r.sizes().vec() == want, op, ": residual must have the output's shape ", at::IntArrayRef(want),
                   ", got ", r.sizes());
  }
}

// The RMSNorm after a projection to n features (linear_add_rms_norm): norm_weight [n] of x's dtype
// and device, eps > 0.
inline void check_post_norm(const char* op, const at::Tensor& x, const at::Tensor& norm_weight, double eps,
                            int64_t n) {
  AG_CHECK_TYPE(norm_weight.scalar_type() == x.scalar_type(), op, ": norm_weight dtype ", norm_weight.scalar_type(),
                " differs from x dtype ", x.scalar_type());
  AG_CHECK_VALUE(norm_weight.device() == x.device(), op, ": norm_weight on ", norm_weight.device(), " but x on ",
                 x.device());
  AG_CHECK_VALUE(norm_weight.dim() == 1 && norm_weight.size(0) == n, op, ": norm_weight must be [N] = [", n,
                 "] (the projection's output features), got ", norm_weight.sizes());
  AG_CHECK_VALUE(eps > 0.0, op, ": norm_eps must be > 0, got ", eps);
}

// transformers' RMSNorm (Llama, Qwen, GLM) of 2-D x2 [M, K] in ATen ops: rnd(rnd(x * rstd) * w),
// rstd = rsqrt(mean(x^2) + eps) in fp32, rounded to x's dtype at the same two points.
inline at::Tensor reference_rms_norm(const at::Tensor& x2, const at::Tensor& w, double eps) {
  const at::Tensor xf = x2.to(at::kFloat);
  const at::Tensor n = (xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x2.scalar_type());
  return (n.to(at::kFloat) * w.to(at::kFloat)).to(x2.scalar_type());
}

// x [..., K] as [M, K] (a view where possible); also right for K == 0, where reshape(-1, K) is not.
inline at::Tensor rows_2d(const at::Tensor& x) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return x.reshape({rows, x.size(-1)});
}

inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n_out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n_out;
  return shape;
}

// y (2-D [M, N], fresh, of the compute dtype) -> act(y), in place where the width is unchanged.
inline at::Tensor apply_activation_(at::Tensor y, Act act) {
  switch (act) {
    case Act::kNone: return y;
    case Act::kRelu: return y.relu_();
    case Act::kGelu: return at::gelu_(y, "tanh");
    case Act::kSilu: return at::silu_(y);
    case Act::kGatedSilu: {
      const int64_t h = y.size(-1) / 2;
      return at::silu(y.narrow(-1, 0, h)).mul_(y.narrow(-1, h, h));
    }
  }
  return y;
}

// Plain-ATen fused_linear on 2-D x [M, K], computed in `compute` dtype, returned as x's dtype.
inline at::Tensor reference_2d(const at::Tensor& x2, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               Act act, at::ScalarType compute) {
  at::Tensor xc = x2.to(compute), wc = weight.to(compute);
  std::optional<at::Tensor> bc;
  if (bias.has_value()) bc = bias->to(compute);
  at::Tensor y = at::linear(xc, wc, bc);
  return apply_activation_(y, act).to(x2.scalar_type());
}

}  // namespace linear
}  // namespace autoglm
