"""Triton kernels, each registered as a torch op with torch.library.triton_op (so they compose
with torch.compile and CUDA-graph capture) and called only through autoglm_kernels.ops."""

import dataclasses
import os
import threading

import torch
import triton
import triton.language as tl

try:
    from torch._library.triton import set_wrap_triton_enabled
except ImportError:  # an older torch: no direct path
    set_wrap_triton_enabled = None

_direct = threading.local()  # .on: inside an op's `direct` call on this thread


def env_int(name: str, default: int, allowed) -> int:
    """An integer tuning knob from the environment (read at import): `default` when unset, a
    clear error when the value is not one of `allowed`."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value not in allowed:
        shown = f"{min(allowed)}..{max(allowed)}" if isinstance(allowed, range) else ", ".join(map(str, allowed))
        raise ValueError(f"{name} must be an integer in {shown}, got {raw!r}")
    return value


def _pdl_supported() -> bool:
    """Triton can launch with programmatic dependent launch (a `launch_pdl` compile option)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return any(f.name == "launch_pdl" for f in dataclasses.fields(CUDAOptions))


# Programmatic dependent launch (Hopper and newer) for the ops' direct launches: a kernel may
# launch while the one before it finishes (see pdl_prologue). On by default; AUTOGLM_PDL=0 turns
# it off, =triton / =gemv keep it for these kernels / the CUDA GEMV only (which reads the same
# switch). Captured decode step, H100, same run (bench/results/20261126T0845_..._09381c1eebba):
# Llama-3.2-1B 1.276 -> 1.190 ms, OPT-1.3B 1.560 -> 1.424 ms.
PDL = os.environ.get("AUTOGLM_PDL", "1") in ("1", "triton") and _pdl_supported()
_pdl_devices: dict = {}


def _pdl_on(device_index: int) -> bool:
    """Where PDL is on: whether this device can run it (compute capability 9.0 or newer)."""
    on = _pdl_devices.get(device_index)
    if on is None:
        on = _pdl_devices[device_index] = torch.cuda.get_device_capability(device_index)[0] >= 9
    return on


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    """First statement of every kernel (after, at most, loads of tensors weights_ready vouches
    for): under programmatic dependent launch, wait until the previous kernel has finished and its
    writes are visible (so nothing above may read anything else, or write), then let the next
    kernel begin launching. Waiting first keeps the early launches one
    kernel deep: a kernel that let its successor launch before its own wait let a whole chain of
    kernels launch ahead, the GEMVs among them pulling their weights into L2 long before use (OPT's
    layers, with no cuBLAS call to break the chain, ran 10% slower that way). No code unless PDL."""
    if PDL:
        tl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1)
        tl.inline_asm_elementwise("griddepcontrol.launch_dependents; // $0", "=r", [], dtype=tl.int32,
                                  is_pure=False, pack=1)


def weights_ready(*tensors) -> bool:
    """Whether a kernel may read these tensors before its PDL wait (pdl_prologue), while the
    kernel before it may still run: only where none of this package's PDL kernels (the only ones
    that let the next kernel start early) can have written them just before. nn.Parameter
    (module weights) qualifies: no op here writes one. Anything else (an op's output passed as a
    weight) waits like x."""
    return all(t is None or isinstance(t, torch.nn.Parameter) for t in tensors)


# Compiled kernels (not the CPU interpreter, which has no inline assembly) hide each stock rounding
# from the compiler: see stock_round.
_OPAQUE = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") in ("", "0"))


@triton.jit
def stock_round(v, dtype: tl.constexpr):
    """v (fp32) rounded to dtype and back to fp32, as a stock op in dtype rounds its output, in a
    form the compiler cannot fuse away: a plain `.to(dtype).to(tl.float32)` is not enough, as LLVM
    narrows the fp32 product of two halves to a half multiply and contracts it with the add that
    follows into one half FMA, one rounding fewer than stock (norm_add_norm's residual add and
    RoPE's products did so: fma.rn.bf16 in their PTX). Compiled kernels pass the rounded value
    through an inline-asm move the compiler cannot see through."""
    r = v.to(dtype).to(tl.float32)
    if _OPAQUE:
        r = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [r], dtype=tl.float32, is_pure=True, pack=1)
    return r


def triton_can_run(device: torch.device) -> bool:
    """Whether the Triton kernels run on tensors of `device`: CUDA, or CPU under TRITON_INTERPRET=1
    (read at each call); elsewhere the ops run their plain-torch references."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on the host (triton.cdiv is a constexpr function: about 2 us a host call)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1), on the host (triton.next_power_of_2 costs about 2 us a call)."""
    return 1 << max(0, int(n) - 1).bit_length()


def triton_op(name: str, *, mutates_args):
    """torch.library.triton_op that also keeps a `.direct` entry to the implementation: ops.py
    calls it in plain eager inference, where the dispatcher's custom-op layers would add 20-300
    us of host time per call (see ops._run). Like triton_op's own backend it launches the kernels
    as they are: CUDA tensors through the LaunchCache; elsewhere (the CPU interpreter) with
    wrap_triton disabled, since each launch would otherwise go through the tracing higher-order
    op (about 350 us a call)."""

    def register(fn):
        op = torch.library.triton_op(name, mutates_args=mutates_args)(fn)
        if set_wrap_triton_enabled is None:
            op.direct = op
            return op

        def direct(*args):
            outer, _direct.on = getattr(_direct, "on", False), True
            try:
                if args[0].is_cuda:  # launch() takes the LaunchCache path: wrap_triton is never reached
                    return fn(*args)
                with set_wrap_triton_enabled(False):
                    return fn(*args)
            finally:
                _direct.on = outer

        op.direct = direct
        return op

    return register


def _spec(a):
    """What Triton specializes a kernel argument on (or finer): a tensor's dtype, device and 16-byte
    alignment; an int's width, ==1 and divisibility by 16; a float's type; any other value itself."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.get_device(), a.data_ptr() % 16 == 0
    if isinstance(a, bool) or a is None:
        return a
    if isinstance(a, int):
        return a == 1, a % 16 == 0, -(2**31) <= a < 2**31, a < 2**63
    if isinstance(a, float):
        return float
    return a


_Tensor = torch.Tensor


def _specs(args) -> tuple:
    """tuple(map(_spec, args)) with the common cases inline (no call per argument): the launch
    cache builds this key at every launch."""
    return tuple([(a.dtype, a.get_device(), not a.data_ptr() & 15) if isinstance(a, _Tensor)
                  else (a == 1, not a & 15, -2147483648 <= a < 2147483648, a < 9223372036854775808)
                  if type(a) is int else _spec(a) for a in args])


class LaunchCache:
    """Launches of @triton.jit kernels from the ops' direct (plain eager) path without
    JITFunction.run's per-call argument binding, specialization and cache-key hashing, which
    cost 30-40 us of host time a launch: the first launch of a specialization goes through
    Triton (compiling if needed) and keeps the CompiledKernel it returns, with the parameters
    after the positional ones (constexprs, defaults); later ones call that kernel straight away.
    The key (`_spec` of every argument, which includes the tensors' device, and the keyword
    arguments) is at least as fine as Triton's own, so a cached kernel is exactly the one Triton
    would pick. The caller runs on its tensors' device (ops._run sees to it)."""

    def __init__(self):
        self._kernels = {}

    @staticmethod
    def _full_args(fn, args, kwargs):
        """Every kernel parameter in signature order (what CompiledKernel's launcher takes),
        constexprs and defaults included, and the launch options (num_warps, ...) left out."""
        out = list(args)
        for p in fn.params[len(args):]:
            out.append(kwargs[p.name] if p.name in kwargs else p.default)
        return out

    def launch(self, fn, grid, *args, **kwargs):
        key = (id(fn), len(grid), _specs(args), tuple(kwargs.items()))
        hit = self._kernels.get(key)
        if hit is None:
            kernel = fn[grid](*args, **kwargs)
            # Triton >= 3.3 launchers take every parameter, constexprs too; with any other
            # signature (older Triton, the interpreter) every launch stays on Triton's path, as
            # it does for a constexpr passed positionally (its key holds _spec, not the value).
            signature = getattr(getattr(kernel, "src", None), "signature", None)
            if (signature is not None and len(signature) == len(fn.params)
                    and not any(p.is_constexpr for p in fn.params[:len(args)])):
                self._kernels[key] = (kernel, tuple(self._full_args(fn, args, kwargs)[len(args):]))
            return
        kernel, tail = hit
        kernel[grid if len(grid) == 3 else tuple(grid) + (1,) * (3 - len(grid))](*args, *tail)

    def clear(self):
        self._kernels.clear()


LAUNCHES = LaunchCache()


def launch(fn, grid, *args, **kwargs):
    """fn[grid](*args, **kwargs) for a kernel of an op implementation: through the LaunchCache on
    the direct path with CUDA tensors (with programmatic dependent launch where PDL is on),
    through torch.library.wrap_triton everywhere else (so torch.compile and triton_op's tracing
    see the launch). Every kernel takes a PDL constexpr and starts with pdl_prologue(PDL)."""
    if getattr(_direct, "on", False) and isinstance(args[0], torch.Tensor) and args[0].is_cuda:
        if PDL and _pdl_on(args[0].get_device()):
            kwargs["PDL"] = kwargs["launch_pdl"] = True
        return LAUNCHES.launch(fn, grid, *args, **kwargs)
    # every argument explicit: torch.compile's kernel wrapper does not fill in defaults
    return torch.library.wrap_triton(fn)[grid](*args, **kwargs, PDL=False)
