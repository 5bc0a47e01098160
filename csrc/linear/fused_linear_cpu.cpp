// CPU implementation of autoglm::fused_linear: the reference, computed in fp32 and cast back
// to x's dtype (fp16/bf16 inputs are upcast), so the package runs (and can be tested) on CPU.
#include <torch/library.h>

#include "linear/fused_linear.h"

namespace autoglm {
namespace linear {

at::Tensor fused_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            c10::string_view activation) {
  const Act act = parse_activation(activation);
  const int64_t n_out = check_args(x, weight, bias, act);
  at::Tensor x2 = rows_2d(x);
  at::Tensor y = reference_2d(x2, weight, bias, act, at::promote_types(x.scalar_type(), at::kFloat));
  return y.reshape(out_shape(x, n_out));
}

at::Tensor gated_mlp_cpu(const at::Tensor& x, const at::Tensor& gate_up, const std::optional<at::Tensor>& gate_up_bias,
                         const at::Tensor& down, const std::optional<at::Tensor>& down_bias) {
  const int64_t n_out = check_mlp_args(x, gate_up, gate_up_bias, down, down_bias);
  const at::ScalarType compute = at::promote_types(x.scalar_type(), at::kFloat);
  // The hidden activation is rounded to x's dtype between the projections, as the stock MLP's is.
  const at::Tensor h = reference_2d(rows_2d(x), gate_up, gate_up_bias, Act::kGatedSilu, compute);
  return reference_2d(h, down, down_bias, Act::kNone, compute).reshape(out_shape(x, n_out));
}

}  // namespace linear
}  // namespace autoglm

TORCH_LIBRARY_IMPL(autoglm, CPU, m) {
  m.impl("fused_linear", &autoglm::linear::fused_linear_cpu);
  m.impl("gated_mlp", &autoglm::linear::gated_mlp_cpu);
}
