"""Triton kernels, each registered as a torch op with torch.library.triton_op (so they compose
with torch.compile and CUDA-graph capture) and called only through autoglm_kernels.ops."""
