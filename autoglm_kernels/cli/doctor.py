"""`autoglm-kernels doctor`: versions, what _C was built with, the GPU, and per kernel whether it
runs here or falls back to stock, and why."""

from __future__ import annotations

import importlib.metadata
import platform


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    import torch

    from autoglm_kernels import __version__, _native, ops

    info = {
        "autoglm_kernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda or "none (CPU build)",
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "extension": _native.build_info(),
        "gpu": None,
        "kernels": {name: {"available": ok, "reason": why} for name, (ok, why) in sorted(ops.KERNELS.items())},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count,
        }
    return info


def run(args) -> int:
    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2))
        return 0
    ext = info["extension"]
    print(f"autoglm_kernels {info['autoglm_kernels']}  python {info['python']}")
    print(f"torch {info['torch']} (CUDA {info['torch_cuda']})  triton {info['triton']}  transformers {info['transformers']}")
    if ext["loaded"]:
        built = f"CUDA, archs {ext['archs']}" if ext["cuda"] else "C++ only (no CUDA kernels)"
        print(f"_C: built with {built}  [{ext['path']}]")
    else:
        print(f"_C: not loaded: {ext['reason']}")
    gpu = info["gpu"]
    print(f"GPU: {gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs)" if gpu else "GPU: none visible (torch.cuda.is_available() is False)")
    print("kernels:")
    width = max((len(k) for k in info["kernels"]), default=10)
    for name, k in info["kernels"].items():
        state = "available" if k["available"] else f"stock fallback: {k['reason']}"
        print(f"  {name:<{width}}  {state}")
    return 0
