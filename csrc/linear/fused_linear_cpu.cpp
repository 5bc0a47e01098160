// CPU implementation of autoglm::fused_linear: the reference, computed in fp32 and cast back
// to x's dtype (fp16/bf16 inputs are upcast), so the package runs (and can be tested) on CPU.
#include <torch/library.h>

#include "linear/fused_linear.h"

namespace autoglm {
namespace linear {

// x2 [M, K] through the optional RMSNorm; y2 [M, n] plus the optional residual, rounded to y2's dtype.
at::Tensor normed(const at::Tensor& x2, const std::optional<at::Tensor>& norm_weight, double eps) {
  return norm_weight.has_value() ? reference_rms_norm(x2, *norm_weight, eps) : x2;
}
at::Tensor plus_residual(const at::Tensor& y2, const std::optional<at::Tensor>& residual) {
  return residual.has_value() ? y2.add(rows_2d(*residual)) : y2;
}

at::Tensor fused_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view activation, const std::optional<at::Tensor>& norm_weight, double norm_eps,
                            const std::optional<at::Tensor>& residual) {
  const Act act = parse_activation(activation);
  const int64_t n_out = check_args(x, weight, bias, act);
  check_prologue("fused_linear", x, norm_weight, norm_eps, residual, n_out);
  const at::Tensor x2 = normed(rows_2d(x), norm_weight, norm_eps);
  at::Tensor y = reference_2d(x2, weight, bias, act, at::promote_types(x.scalar_type(), at::kFloat));
  return plus_residual(y, residual).reshape(out_shape(x, n_out));
}

at::Tensor gated_mlp_cpu(const at::Tensor& x, const at::Tensor& gate_up, const std::optional<at::Tensor>& gate_up_bias,
                         const at::Tensor& down, const std::optional<at::Tensor>& down_bias,
                         const std::optional<at::Tensor>& norm_weight, double norm_eps,
                         const std::optional<at::Tensor>& residual) {
  const int64_t n_out = check_mlp_args(x, gate_up, gate_up_bias, down, down_bias);
  check_prologue("gated_mlp", x, norm_weight, norm_eps, residual, n_out);
  const at::ScalarType compute = at::promote_types(x.scalar_type(), at::kFloat);
  // The hidden activation is rounded to x's dtype between the projections, as the stock MLP's is.
  const at::Tensor h = reference_2d(normed(rows_2d(x), norm_weight, norm_eps), gate_up, gate_up_bias,
                                    Act::kGatedSilu, compute);
  return plus_residual(reference_2d(h, down, down_bias, Act::kNone, compute), residual).reshape(out_shape(x, n_out));
}

// (h, RMSNorm(h)) with h = x @ weight^T + bias + residual: the reference of the CUDA op's one launch.
std::tuple<at::Tensor, at::Tensor> linear_add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           const at::Tensor& residual, const at::Tensor& norm_weight,
                                                           double norm_eps, const at::Tensor& ticket) {
  const int64_t n = check_args(x, weight, bias, Act::kNone);
  check_post_norm("linear_add_rms_norm", x, norm_weight, norm_eps, n);
  const at::Tensor h = fused_linear_cpu(x, weight, bias, "none", std::nullopt, norm_eps, residual);
  return {h, reference_rms_norm(rows_2d(h), norm_weight, norm_eps).reshape(h.sizes())};
}

// On CPU every fused_linear / gated_mlp call is one reference op, prologue and residual included.
bool fuses_prologue_cpu(const at::Tensor& weight, int64_t rows) { return true; }

}  // namespace linear
}  // namespace autoglm

TORCH_LIBRARY_IMPL(autoglm, CPU, m) {
  m.impl("fused_linear", &autoglm::linear::fused_linear_cpu);
  m.impl("gated_mlp", &autoglm::linear::gated_mlp_cpu);
  m.impl("fuses_prologue", &autoglm::linear::fuses_prologue_cpu);
  m.impl("linear_add_rms_norm", &autoglm::linear::linear_add_rms_norm_cpu);
}
