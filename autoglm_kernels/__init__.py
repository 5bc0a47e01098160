"""autoglm-kernels: handwritten CUDA and Triton kernels patched into Hugging Face transformers models.

    from autoglm_kernels import patch_model
    report = patch_model(model)   # fused attention/MLP/norm paths; the rest stays stock
"""

__version__ = "0.1.0"

from . import ops  # noqa: E402,F401  (registers every op)


def __getattr__(name):
    # patch/ pulls in transformers; import it only when asked for.
    if name in ("patch_model", "unpatch_model", "PatchReport"):
        from . import patch

        return getattr(patch, name)
    raise AttributeError(f"module 'autoglm_kernels' has no attribute {name!r}")
