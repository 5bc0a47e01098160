// The op registry: every native op's schema lives here, in one TORCH_LIBRARY block.
// Implementations register per device at the end of their own files
// (TORCH_LIBRARY_IMPL(autoglm, CPU|CUDA, m)); fake (meta) implementations are in
// autoglm_kernels/ops.py. Importing autoglm_kernels._C registers everything: there is
// no pybind layer.
#include <Python.h>
#include <torch/library.h>

#ifndef AUTOGLM_ARCH_LIST
#define AUTOGLM_ARCH_LIST ""
#endif

extern "C" {
// Empty module: importing _C runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

// Build facts read by `python -m autoglm_kernels doctor` (through ctypes), so that it
// reports what this binary was built with, not what the environment says now.
const char* autoglm_arch_list() { return AUTOGLM_ARCH_LIST; }
int autoglm_built_with_cuda() {
#ifdef AUTOGLM_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}
}

TORCH_LIBRARY(autoglm, m) {
  // y = act(norm(x) @ weight^T + bias) + residual. activation: none | relu | gelu (tanh) | silu |
  // gated_silu. gated_silu: weight is [gate; up] stacked along N (gate first); y = silu(gate) * up,
  // width N/2. norm_weight (optional, [K]): x goes through transformers' RMSNorm with it and
  // norm_eps first; residual (optional, the output's shape) is added to the output.
  m.def("fused_linear(Tensor x, Tensor weight, Tensor? bias=None, str activation='none', Tensor? norm_weight=None, "
        "float norm_eps=1e-6, Tensor? residual=None) -> Tensor");
  // The gated MLP: down(silu(gate) * up) + residual, [gate; up] = norm(x) @ gate_up^T + gate_up_bias
  // (gate first); gate_up [2I, K], down [N, I]. On CUDA two kernels at decode.
  m.def("gated_mlp(Tensor x, Tensor gate_up, Tensor? gate_up_bias, Tensor down, Tensor? down_bias=None, "
        "Tensor? norm_weight=None, float norm_eps=1e-6, Tensor? residual=None) -> Tensor");
  // Whether fused_linear / gated_mlp on `weight` at `rows` rows of input run the norm and the
  // residual add inside their own kernel (the decode GEMV; always on CPU) or as separate ops.
  m.def("fuses_prologue(Tensor weight, int rows) -> bool");
  // The decode qkv projection with RoPE and the static-cache append in its epilogue (one launch):
  // qkv = norm?(x) @ weight^T + bias, x [B, 1, K], weight rows [q heads; k heads; v heads] of D
  // = k_cache.size(3) dims; q and k heads rotate by cos/sin (rope_layout 0 rotate_half, 1 GLM-4
  // interleaved, 2 GLM-4.1V pair-duplicated; no cos/sin: no rotation), k and v go to k_cache /
  // v_cache [B, Hk, C, D] at slot cache_len, which advances by one (ticket: an int32 that is zero
  // between calls). Returns qkv [B, 1, N] with q and k rotated.
  m.def("qkv_rope_append(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight, float norm_eps, Tensor? cos, "
        "Tensor? sin, int rope_layout, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) cache_len, "
        "Tensor(d!) ticket, int num_q_heads) -> Tensor");
  // An output projection with the residual add and the RMSNorm that follows it (a pre-norm decode
  // step's o_proj and post-attention norm): h = x @ weight^T + bias + residual, out = RMSNorm(h;
  // norm_weight [N], norm_eps) with transformers' rounding. On CUDA one launch where the decode
  // GEMV takes the weight (the last block to finish normalizes; ticket: an int32 that is zero
  // between calls). Returns (h, out).
  m.def("linear_add_rms_norm(Tensor x, Tensor weight, Tensor? bias, Tensor residual, Tensor norm_weight, "
        "float norm_eps, Tensor(a!) ticket) -> (Tensor, Tensor)");
}
