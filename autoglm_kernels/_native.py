"""Loads the native extension `autoglm_kernels._C` (which registers the torch.ops.autoglm ops)
and reports what it was built with. Nothing else imports _C directly."""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util


@functools.lru_cache(maxsize=None)
def load() -> tuple[bool, str]:
    """Import _C once. Returns (loaded, reason-if-not)."""
    try:
        import torch  # noqa: F401  (the extension links against torch's libraries)

        importlib.import_module("autoglm_kernels._C")
        return True, ""
    except ImportError as e:  # not built, or built against another torch
        return False, f"autoglm_kernels._C could not be imported ({e}); build it with `pip install --no-build-isolation -e .`"


def library_path() -> str | None:
    """Path of the built _C shared object, or None."""
    spec = importlib.util.find_spec("autoglm_kernels._C")
    return spec.origin if spec is not None else None


@functools.lru_cache(maxsize=None)
def build_info() -> dict:
    """What the _C binary itself says it was built with (cuda yes/no, arch list)."""
    ok, why = load()
    if not ok:
        return {"loaded": False, "reason": why, "cuda": False, "archs": ""}
    lib = ctypes.CDLL(library_path())
    lib.autoglm_arch_list.restype = ctypes.c_char_p
    return {
        "loaded": True,
        "reason": "",
        "cuda": bool(lib.autoglm_built_with_cuda()),
        "archs": lib.autoglm_arch_list().decode(),
        "path": library_path(),
    }
