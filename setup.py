"""Build autoglm_kernels._C: a CUDAExtension where the CUDA toolkit is found, else C++ only.

Environment:
  AUTOGLM_KERNELS_CPU_ONLY=1   build the C++-only extension even if nvcc exists
  TORCH_CUDA_ARCH_LIST         archs to build (default "8.0;8.6;8.9;9.0;9.0a")
  CUDA_HOME                    toolkit root; found automatically when nvcc on PATH is a wrapper script
  MAX_JOBS / NVCC_THREADS      build parallelism
"""

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;8.9;9.0;9.0a"


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h")
    )


def find_cuda_home():
    """The CUDA toolkit root, or None.

    torch guesses the root from `which nvcc`; where nvcc is a wrapper script
    (/usr/local/bin/nvcc here) that guess is /usr/local and linking -lcudart fails.
    So check each candidate really holds a toolkit, and fall back to /usr/local/cuda.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if _is_toolkit(c):
            return os.path.realpath(c)
    return None


def build_extension():
    cpu_only = os.environ.get("AUTOGLM_KERNELS_CPU_ONLY", "0") not in ("", "0")
    cuda_home = None if cpu_only else find_cuda_home()
    if cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cuda_only_cpp = lambda p: p.endswith("_cuda.cpp")  # noqa: E731  host code that calls the CUDA runtime
    cpp = sorted(p for p in glob.glob("csrc/**/*.cpp", recursive=True) if not cuda_only_cpp(p))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True)) + sorted(
        p for p in glob.glob("csrc/**/*.cpp", recursive=True) if cuda_only_cpp(p)
    )
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if cuda_home else ""
    defines = [f'-DAUTOGLM_ARCH_LIST="{archs}"']
    # No -std flag: torch picks the standard its headers need (C++17 up to 2.12, C++20 after).
    cxx_flags = ["-O3"] + defines
    include_dirs = [os.path.join(ROOT, "csrc")]
    if cuda_home:
        nvcc_flags = [
            "-O3",
            "--use_fast_math",
            "-lineinfo",
            "--expt-relaxed-constexpr",
            "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            f"--threads={os.environ.get('NVCC_THREADS', '4')}",
            "-DAUTOGLM_WITH_CUDA",
        ] + defines
        print(f"autoglm_kernels: building CUDA extension (CUDA_HOME={cuda_home}, archs={archs})")
        ext = CUDAExtension(
            "autoglm_kernels._C",
            cpp + cu,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags + ["-DAUTOGLM_WITH_CUDA"], "nvcc": nvcc_flags},
        )
    else:
        why = "AUTOGLM_KERNELS_CPU_ONLY is set" if cpu_only else "no CUDA toolkit found"
        print(f"autoglm_kernels: building C++-only extension ({why})")
        ext = CppExtension("autoglm_kernels._C", cpp, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags})
    return ext, BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


ext, build_ext = build_extension()
setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
