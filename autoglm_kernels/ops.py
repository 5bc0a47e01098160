"""The single Python face of every kernel.

Each op has: a typed wrapper that checks its inputs and raises a clear ValueError/TypeError
(what was wrong, what is expected) instead of crashing in a kernel; and a fake (meta)
implementation so it works under torch.compile and CUDA-graph capture. Native ops are
defined in csrc/ops.cpp (TORCH_LIBRARY); Triton ops are torch.library.triton_op's defined
in autoglm_kernels/triton/ and imported here; in plain eager inference the wrappers call their
implementations without the dispatcher (_run). Nothing else calls torch.ops.autoglm.* directly.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import torch

from . import _native

NATIVE_OK, NATIVE_WHY = _native.load()

# name -> (available on this machine, reason when not). Filled by each section; read by doctor.
KERNELS: dict[str, tuple[bool, str]] = {}


# ---------------------------------------------------------------------------------------------
# input checks shared by every wrapper
# ---------------------------------------------------------------------------------------------
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    dim: Optional[int | Iterable[int]] = None,
    contiguous: bool = False,
) -> None:
    """Raise a clear TypeError/ValueError when `t` is not a tensor of the expected dtype/rank/layout.
    (Every wrapper runs these checks at every call: the passing case does the least work.)"""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        want = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {str(t.dtype).replace('torch.', '')}; expected one of: {want}")
    if dim is not None and (t.dim() != dim if type(dim) is int else t.dim() not in dim):
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (got strides {t.stride()} for shape {tuple(t.shape)}); call .contiguous()")


def check_same(what: str, **tensors) -> None:
    """All given tensors (None skipped) share device (what='device') or dtype (what='dtype')."""
    first = None
    for v in tensors.values():
        if v is not None:
            if first is None:
                first = getattr(v, what)
            elif getattr(v, what) != first:
                break
    else:
        return
    items = [(k, getattr(v, what)) for k, v in tensors.items() if v is not None]
    listing = ", ".join(f"{k} on {v}" if what == "device" else f"{k}: {str(v).replace('torch.', '')}" for k, v in items)
    raise (ValueError if what == "device" else TypeError)(f"tensors must share one {what}; got {listing}")


_is_compiling = torch.compiler.is_compiling


def _run(op, *args):
    """Call Triton op `op` (a triton_op from autoglm_kernels/triton/): its implementation straight
    away in plain eager inference, skipping the dispatcher's custom-op layers (about 25 us of host
    time a call: a prefill makes four or five such calls per layer, and its time to first token
    is host-bound); through torch.ops everywhere else: torch.compile, fake and other tensor
    subclasses, dispatch and function modes, and autograd (grad mode on). Runs on the device of
    args[0] (a model split over GPUs by device_map calls ops for tensors off the current device)."""
    a0 = args[0]
    if a0.is_cuda and not _is_compiling() and a0.get_device() != torch._C._cuda_getDevice():
        with torch.cuda.device(a0.device):  # Triton launches on the current device, not on the tensors'
            return _run(op, *args)
    if (type(a0) is torch.Tensor and not torch.is_grad_enabled() and not _is_compiling()
            and not torch._C._is_torch_function_mode_enabled() and torch._C._len_torch_dispatch_stack() == 0):
        return op.direct(*args)
    return op(*args)


def _native_reason(device_type: str) -> tuple[bool, str]:
    if not NATIVE_OK:
        return False, NATIVE_WHY
    if device_type == "cuda" and not _native.build_info()["cuda"]:
        return False, "_C was built without CUDA (no toolkit at build time, or AUTOGLM_KERNELS_CPU_ONLY=1)"
    if device_type == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device visible"
    return True, ""


# ---------------------------------------------------------------------------------------------
# fused linear + activation (csrc/linear/)
# ---------------------------------------------------------------------------------------------
ACTIVATIONS = ("none", "relu", "gelu", "silu", "gated_silu")
LINEAR_GEMV_MAX_ROWS = 16  # rows of x up to which CUDA runs the handwritten GEMV (else cuBLAS + fused epilogue)

if NATIVE_OK:

    @torch.library.register_fake("autoglm::fused_linear")
    def _fused_linear_fake(x, weight, bias=None, activation="none", norm_weight=None, norm_eps=1e-6, residual=None):
        torch._check(weight.dim() == 2 and x.shape[-1] == weight.shape[1], lambda: "fused_linear: K mismatch")
        n = weight.shape[0] // 2 if activation == "gated_silu" else weight.shape[0]
        return x.new_empty((*x.shape[:-1], n))

    @torch.library.register_fake("autoglm::gated_mlp")
    def _gated_mlp_fake(x, gate_up, gate_up_bias, down, down_bias=None, norm_weight=None, norm_eps=1e-6,
                        residual=None):
        torch._check(gate_up.dim() == 2 and x.shape[-1] == gate_up.shape[1], lambda: "gated_mlp: K mismatch")
        torch._check(down.dim() == 2 and 2 * down.shape[1] == gate_up.shape[0], lambda: "gated_mlp: inner mismatch")
        return x.new_empty((*x.shape[:-1], down.shape[0]))


_FUSED_LINEAR_NATIVE = {dev: _native_reason(dev) for dev in ("cpu", "cuda")}
KERNELS["fused_linear (CUDA GEMV M<=16 / cuBLASLt epilogue)"] = _FUSED_LINEAR_NATIVE["cuda"]
KERNELS["fused_linear (CPU reference)"] = _FUSED_LINEAR_NATIVE["cpu"]
KERNELS["gated_mlp (CUDA: two GEMVs, silu-multiply fused)"] = _FUSED_LINEAR_NATIVE["cuda"]


def stock_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    """The stock ops a model applies to a linear's output y for `activation` (GLM-4's chunk + silu +
    mul for gated_silu): what fused_linear's epilogue computes, unfused."""
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        return torch.nn.functional.gelu(y, approximate="tanh")
    if activation == "silu":
        return torch.nn.functional.silu(y)
    if activation == "gated_silu":
        gate, up = y.chunk(2, dim=-1)
        return torch.nn.functional.silu(gate) * up
    return y


def _fused_linear_torch(x, weight, bias, activation: str) -> torch.Tensor:
    """Plain-torch fused_linear (fp32 compute), used only where _C cannot run on x's device."""
    y = torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return stock_activation(y, activation).to(x.dtype)


def _check_prologue(op: str, x, norm_weight, norm_eps, residual, out_shape) -> None:
    """The optional norm weight [K] and residual (the output's shape) of fused_linear / gated_mlp."""
    if norm_weight is not None:
        check_tensor("norm_weight", norm_weight, dtypes=FLOAT_DTYPES, dim=1)
        if norm_weight.shape[0] != x.shape[-1]:
            raise ValueError(f"{op}: norm_weight must be [K] = [{x.shape[-1]}], got {tuple(norm_weight.shape)}")
        if not (isinstance(norm_eps, (int, float)) and norm_eps > 0):
            raise ValueError(f"{op}: norm_eps must be a number > 0, got {norm_eps!r}")
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES)
        if tuple(residual.shape) != tuple(out_shape):
            raise ValueError(f"{op}: residual must have the output's shape {tuple(out_shape)}, got {tuple(residual.shape)}")
    check_same("device", x=x, norm_weight=norm_weight, residual=residual)
    check_same("dtype", x=x, norm_weight=norm_weight, residual=residual)


def _with_prologue(fn, x, norm_weight, norm_eps, residual):
    """fn(x) with x through the RMSNorm first (transformers' math, as the GEMV prologue computes
    it: norm_weight has x's dtype) and the residual added after (plain torch)."""
    y = fn(x if norm_weight is None else _rmsnorm.rms_norm_reference(x, norm_weight, norm_eps))
    return y if residual is None else y + residual


def _check_weight(op: str, x, weight, bias, name: str = "weight", bias_name: str = "bias") -> None:
    """A projection's weight [N, K] (contiguous) and bias [N] against x's device and dtype; the
    caller checks K."""
    check_tensor(name, weight, dtypes=FLOAT_DTYPES, dim=2)
    if bias is not None:
        check_tensor(bias_name, bias, dtypes=FLOAT_DTYPES, dim=1)
    check_same("device", **{"x": x, name: weight, bias_name: bias})
    check_same("dtype", **{"x": x, name: weight, bias_name: bias})
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{op}: {bias_name} must be [N] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not weight.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (got strides {weight.stride()} for shape "
                         f"{tuple(weight.shape)}); call .contiguous() once at load time")


def _check_linear(x, weight, bias, activation: str) -> None:
    """fused_linear's input checks (clear errors instead of a failure in a kernel)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"fused_linear: unknown activation {activation!r}; expected one of: {', '.join(ACTIVATIONS)}")
    _check_weight("fused_linear", x, weight, bias)
    if x.dim() < 1:
        raise ValueError("fused_linear: x must have at least 1 dim [..., K], got a 0-d tensor")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"fused_linear: x has K={x.shape[-1]} (last dim of {tuple(x.shape)}) "
                         f"but weight is [N, K] = {tuple(weight.shape)}")
    if activation == "gated_silu" and N % 2:
        raise ValueError(f"fused_linear: gated_silu needs weight = [gate; up] with an even N, got N={N}")


def fused_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, activation: str = "none",
    norm_weight: Optional[torch.Tensor] = None, norm_eps: float = 1e-6, residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """y = act(x @ weight^T + bias), with the activation fused into the matmul's epilogue.

    x: [..., K]; weight: [N, K] contiguous (nn.Linear layout); bias: [N] or None; all one dtype
    (bf16/fp16 on CUDA, fp32 accumulate; any float dtype on CPU, computed in fp32).
    activation: none | relu | gelu (tanh approximation) | silu | gated_silu. gated_silu: weight
    is [gate; up] stacked along N (gate first, like GLM4's gate_up_proj) and
    y = silu(x @ Wg^T + bg) * (x @ Wu^T + bu), of width N/2.
    Returns [..., N] (gated_silu: [..., N/2]). On CUDA, up to 16 rows of x run a handwritten
    weight-streaming GEMV (decode); more rows run cuBLAS with the epilogue fused where it can be.
    norm_weight ([K]): x goes through transformers' RMSNorm (norm_eps) first; residual (the
    output's shape): added to the output, rounded as `residual + out`. The GEMV does both inside
    its one kernel (a decoder layer's norm and residual-add kernels are gone; the normed rows
    are staged in shared memory, up to 64 KiB of them), with the stock rounding. Elsewhere (CPU,
    cuBLAS paths, more rows) they are the stock ops around the matmul (see fuses_prologue).
    """
    _check_linear(x, weight, bias, activation)
    if norm_weight is not None or residual is not None:
        n = weight.shape[0] // 2 if activation == "gated_silu" else weight.shape[0]
        _check_prologue("fused_linear", x, norm_weight, norm_eps, residual, (*x.shape[:-1], n))
    if _FUSED_LINEAR_NATIVE.get(x.device.type, (False, ""))[0]:
        return torch.ops.autoglm.fused_linear.default(x.contiguous(), weight, bias, activation, norm_weight,
                                                      float(norm_eps), residual)
    return _with_prologue(lambda v: _fused_linear_torch(v, weight, bias, activation), x, norm_weight, norm_eps,
                          residual)


def gated_mlp(
    x: torch.Tensor, gate_up: torch.Tensor, gate_up_bias: Optional[torch.Tensor], down: torch.Tensor,
    down_bias: Optional[torch.Tensor] = None, norm_weight: Optional[torch.Tensor] = None, norm_eps: float = 1e-6,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The gated MLP down(silu(gate) * up), [gate; up] = x @ gate_up^T + gate_up_bias.

    x: [..., K]; gate_up: [2I, K] (gate rows first, like GLM4's gate_up_proj); down: [N, I];
    biases [2I] / [N] or None; one dtype. Returns [..., N]. The hidden activation is rounded to
    x's dtype between the projections, as in the stock MLP. On CUDA at decode (<= 16 rows) it is
    two kernels where both weights take the GEMV (the gated GEMV, silu-multiply in its epilogue,
    then the down GEMV); a gate_up too big for the GEMV runs cuBLAS + the silu_mul kernel.
    norm_weight / residual as in fused_linear: the RMSNorm before gate_up, the residual added
    after down.
    """
    _check_linear(x, gate_up, gate_up_bias, "gated_silu")
    _check_weight("gated_mlp", x, down, down_bias, "down", "down_bias")
    inner = gate_up.shape[0] // 2
    if down.shape[1] != inner:
        raise ValueError(f"gated_mlp: gate_up {tuple(gate_up.shape)} gives {inner} features but down is "
                         f"{tuple(down.shape)}; expected [N, {inner}]")
    if norm_weight is not None or residual is not None:
        _check_prologue("gated_mlp", x, norm_weight, norm_eps, residual, (*x.shape[:-1], down.shape[0]))
    if _FUSED_LINEAR_NATIVE.get(x.device.type, (False, ""))[0]:
        return torch.ops.autoglm.gated_mlp.default(x.contiguous(), gate_up, gate_up_bias, down, down_bias, norm_weight,
                                                   float(norm_eps), residual)

    def mlp(v):
        return _fused_linear_torch(_fused_linear_torch(v, gate_up, gate_up_bias, "gated_silu"), down, down_bias, "none")

    return _with_prologue(mlp, x, norm_weight, norm_eps, residual)


def fuses_prologue(weight: torch.Tensor, rows: int = 1) -> bool:
    """Whether fused_linear / gated_mlp on `weight` with `rows` rows of input compute a norm
    prologue and a residual add inside their own kernel (CUDA: the decode GEMV takes the weight;
    CPU: always, one reference op) rather than as separate ops around cuBLAS."""
    if not _FUSED_LINEAR_NATIVE.get(weight.device.type, (False, ""))[0]:
        return False
    return bool(torch.ops.autoglm.fuses_prologue.default(weight, int(rows)))


# ---------------------------------------------------------------------------------------------
# attention: split-KV decode and flash prefill (triton/decode_attention.py, triton/prefill_attention.py)
# ---------------------------------------------------------------------------------------------
from .triton import decode_attention as _decode_attn  # noqa: E402  (defines autoglm::decode_attention)
from .triton import prefill_attention as _prefill_attn  # noqa: E402  (defines autoglm::prefill_attention)

ATTENTION_HEAD_DIMS = (64, 128)
DECODE_MAX_QUERIES = 16
MASK_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64)


@torch.library.register_fake("autoglm::decode_attention")
def _decode_attention_fake(q, k_cache, v_cache, kv_lens, kv_mask, scale, num_splits, counters):
    return q.new_empty(q.shape)


@torch.library.register_fake("autoglm::prefill_attention")
def _prefill_attention_fake(q, k, v, kv_mask, scale, causal):
    return q.new_empty(q.shape)


def _mask_for_kernel(kv_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """kv_mask with a contiguous last dim; a bool mask as uint8 under torch.compile (a cast: inductor
    cannot lower the bitcast view the kernels take of a bool mask in eager mode)."""
    if kv_mask is None:
        return None
    if kv_mask.stride(-1) != 1:
        kv_mask = kv_mask.contiguous()
    if kv_mask.dtype == torch.bool and torch.compiler.is_compiling():
        kv_mask = kv_mask.to(torch.uint8)
    return kv_mask


def _check_attention(q, k, v, kv_mask, *, k_name: str, v_name: str):
    """Shared checks of q [B, Sq, Hq, D], k/v [B, Hk, L, D] and kv_mask [B, M]; returns (B, Sq, Hq, Hk, L, D)."""
    check_tensor("q", q, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor(k_name, k, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor(v_name, v, dtypes=FLOAT_DTYPES, dim=4)
    check_same("device", q=q, **{k_name: k, v_name: v})
    check_same("dtype", q=q, **{k_name: k, v_name: v})
    if q.device.type == "cuda" and q.dtype == torch.float32:
        raise TypeError("attention on CUDA takes bfloat16 or float16 (float32 is for CPU tests only); cast q/k/v")
    B, Sq, Hq, D = q.shape
    if D not in ATTENTION_HEAD_DIMS:
        raise ValueError(f"head_dim (q.shape[-1]) is {D}; supported: {', '.join(map(str, ATTENTION_HEAD_DIMS))}")
    if k.shape != v.shape:
        raise ValueError(f"{k_name} and {v_name} must have one shape; got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Hk, L, Dk = k.shape
    if Bk != B or Dk != D:
        raise ValueError(f"{k_name} must be [B={B}, Hk, L, D={D}] to match q [B, Sq, Hq, D] = {tuple(q.shape)}; "
                         f"got {tuple(k.shape)}")
    if min(B, Sq, Hq, Hk, L) < 1:
        raise ValueError(f"empty attention input: q {tuple(q.shape)}, {k_name} {tuple(k.shape)}")
    if Hq % Hk:
        raise ValueError(f"query heads ({Hq}) must be a multiple of KV heads ({Hk}) for grouped-query attention")
    for name, t in (("q", q), (k_name, k), (v_name, v)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}")
    if kv_mask is not None:
        check_tensor("kv_mask", kv_mask, dtypes=MASK_DTYPES, dim=2)
        check_same("device", q=q, kv_mask=kv_mask)
        if kv_mask.shape[0] != B:
            raise ValueError(f"kv_mask must be [B={B}, keys]; got {tuple(kv_mask.shape)}")
    return B, Sq, Hq, Hk, L, D


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_lens: torch.Tensor,
    kv_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    *,
    num_splits: Optional[int] = None,
    counters: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention of Sq (1..16) new query tokens over a KV cache, split-KV (flash-decoding).

    q [B, Sq, Hq, D] (last dim contiguous), k_cache/v_cache [B, Hk, C, D] (C = capacity),
    kv_lens [B] or [1] int32/int64 on q's device: valid cache positions including the Sq new
    tokens (its last Sq); query i sees keys j < kv_len - Sq + i + 1 not excluded by kv_mask
    [B, >= kv_len] (0 = padding; positions past its width count as valid). kv_lens is only read
    on the device (CUDA-graph capturable; values above C are clamped to C). scale defaults to
    D**-0.5. num_splits: most KV splits per (sequence, KV head); None = from C and the SM count.
    counters: a zeroed int32 workspace on q's device of at least
    `decode_attention_counters(q, k_cache)` elements, for the splits' in-kernel merge; the call
    leaves it zeroed, so a caller keeps one (e.g. per model) for every call, one call at a time;
    None allocates a zeroed one per call (one more small kernel; inside a CUDA graph capture, a
    memset per replay).
    Returns [B, Sq, Hq, D] contiguous in q's dtype; a query with no visible key gives zeros.
    """
    B, Sq, Hq, Hk, C, D = _check_attention(q, k_cache, v_cache, kv_mask, k_name="k_cache", v_name="v_cache")
    if Sq > DECODE_MAX_QUERIES:
        raise ValueError(f"decode_attention takes 1..{DECODE_MAX_QUERIES} query tokens, got Sq={Sq}; "
                         "use prefill_attention for longer chunks")
    check_tensor("kv_lens", kv_lens, dtypes=(torch.int32, torch.int64), dim=1)
    check_same("device", q=q, kv_lens=kv_lens)
    if kv_lens.shape[0] not in (1, B):
        raise ValueError(f"kv_lens must be [B={B}] or [1] (broadcast); got shape {tuple(kv_lens.shape)}")
    kv_mask = _mask_for_kernel(kv_mask)
    if num_splits is not None and (not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")
    scale = D**-0.5 if scale is None else float(scale)
    need = decode_attention_counters(q, k_cache)
    if counters is None:
        counters = torch.zeros(need, dtype=torch.int32, device=q.device)
    else:
        check_tensor("counters", counters, dtypes=(torch.int32,), dim=1)
        check_same("device", q=q, counters=counters)
        if counters.numel() < need or counters.stride(0) != 1:
            raise ValueError(f"counters must be a contiguous int32 [>= {need}] (one per sequence x KV head x "
                             f"block of query rows); got shape {tuple(counters.shape)}, stride {counters.stride()}")
    return _run(_decode_attn.decode_attention, q, k_cache, v_cache, kv_lens, kv_mask, scale, num_splits or 0,
                counters)


def decode_attention_counters(q: torch.Tensor, k_cache: torch.Tensor) -> int:
    """Elements of the `counters` workspace decode_attention takes for q [B, Sq, Hq, D] and
    k_cache [B, Hk, C, D]."""
    return _decode_attn.programs_per_split(q, k_cache)


# Dispatch policy of prefill_attention(impl="auto") on CUDA: torch SDPA (its flash backend) where
# it applies exactly -- no kv_mask, and either non-causal or S == L (SDPA's is_causal is top-left
# aligned, so a KV prefix needs our bottom-right kernel) -- and the prompt has at least this many
# tokens; the Triton kernel otherwise (left-padded batches, chunked prefill over a cache prefix).
# Set from bench/bench_prefill_attention.py and scripts/prefill_sweep.py: on the H100 SDPA leads
# at 2048-8192 tokens (the kernel 0.91-0.92x / 0.83x of it); at 512 the two are level and at 1024
# the kernel leads by 11%, a few microseconds per layer, so every length stays on SDPA.
PREFILL_SDPA_MIN_TOKENS = 1


def _prefill_sdpa(q, k, v, scale: float, causal: bool) -> torch.Tensor:
    """Torch SDPA on our layouts: q [B, S, Hq, D] -> [B, Hq, S, D] view; output back to [B, S, Hq, D]."""
    gqa = {"enable_gqa": True} if q.shape[2] != k.shape[1] else {}
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = sdpa(q.transpose(1, 2), k, v, is_causal=causal, scale=scale, **gqa)
    return out.transpose(1, 2).contiguous()


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    causal: bool = True,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """Flash attention of a prompt: q [B, S, Hq, D] (last dim contiguous) over k/v [B, Hk, L, D], L >= S.

    The queries are the last S of the L positions; with causal, query i sees keys j <= L - S + i
    (bottom-right). kv_mask [B, >= L] (0 = padding key, e.g. left-padded prompts; first L read).
    GQA (Hq % Hk == 0) without repeating K/V. scale defaults to D**-0.5. A query that sees no key
    gives zeros, never NaN. Returns [B, S, Hq, D] contiguous in q's dtype.
    impl: "triton" (our kernel), "sdpa" (torch SDPA; only without kv_mask and with S == L or
    causal=False), "auto" (see PREFILL_SDPA_MIN_TOKENS above).
    """
    B, S, Hq, Hk, L, D = _check_attention(q, k, v, kv_mask, k_name="k", v_name="v")
    if L < S:
        raise ValueError(f"k/v hold L={L} positions but q has S={S} queries; need L >= S (queries are the last S)")
    if kv_mask is not None and kv_mask.shape[1] < L:
        raise ValueError(f"kv_mask must cover all L={L} keys: [B={B}, >= {L}]; got {tuple(kv_mask.shape)}")
    kv_mask = _mask_for_kernel(kv_mask)
    if impl not in ("auto", "triton", "sdpa"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'sdpa', got {impl!r}")
    scale = D**-0.5 if scale is None else float(scale)
    sdpa_exact = kv_mask is None and (not causal or S == L)
    if impl == "sdpa" and not sdpa_exact:
        raise ValueError("impl='sdpa' needs kv_mask=None and S == L (or causal=False); use impl='triton' or 'auto'")
    if impl == "sdpa" or (impl == "auto" and sdpa_exact and q.device.type == "cuda" and S >= PREFILL_SDPA_MIN_TOKENS):
        return _prefill_sdpa(q, k, v, scale, causal)
    return _run(_prefill_attn.prefill_attention, q, k, v, kv_mask, scale, bool(causal))


_ATTN_WHY = "" if torch.cuda.is_available() else (
    "no CUDA device: runs a plain-torch reference (the Triton kernel runs on CPU only under TRITON_INTERPRET=1)")
KERNELS["decode_attention"] = (torch.cuda.is_available(), _ATTN_WHY)
KERNELS["prefill_attention"] = (torch.cuda.is_available(), _ATTN_WHY)


# ---------------------------------------------------------------------------------------------
# norms: RMSNorm, residual-add + RMSNorm, GLM-4 norm-add-norm, LayerNorm (triton/rmsnorm.py, triton/layernorm.py)
# ---------------------------------------------------------------------------------------------
from .triton import layernorm as _layernorm  # noqa: E402  (defines autoglm::layer_norm, autoglm::fused_add_layer_norm)
from .triton import rmsnorm as _rmsnorm  # noqa: E402  (defines autoglm::rms_norm, fused_add_rms_norm, norm_add_norm)

NORM_MAX_HIDDEN = _rmsnorm.MAX_HIDDEN


@torch.library.register_fake("autoglm::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype))


@torch.library.register_fake("autoglm::fused_add_rms_norm")
def _fused_add_rms_norm_fake(x, residual, weight, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype)), x.new_empty(x.shape)


@torch.library.register_fake("autoglm::norm_add_norm")
def _norm_add_norm_fake(x, residual, weight1, weight2, eps):
    return x.new_empty(x.shape, dtype=torch.promote_types(weight2.dtype, x.dtype)), x.new_empty(x.shape)


@torch.library.register_fake("autoglm::layer_norm")
def _layer_norm_fake(x, weight, bias, eps):
    return x.new_empty(x.shape)


@torch.library.register_fake("autoglm::fused_add_layer_norm")
def _fused_add_layer_norm_fake(x, residual, weight, bias, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _check_norm(x, residual=None, eps=0.0, **params) -> float:
    """x [..., H] (last dim contiguous), residual like x, each param [H] (None skipped); returns eps as float."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have at least 1 dim [..., hidden]; got a 0-dim tensor")
    H = x.shape[-1]
    if not 1 <= H <= NORM_MAX_HIDDEN:
        raise ValueError(f"hidden size (x.shape[-1]) is {H}; supported: 1..{NORM_MAX_HIDDEN}")
    if x.stride(-1) != 1 and H > 1:
        raise ValueError(f"x must have a contiguous last dim (stride 1), got strides {x.stride()}; rows may be strided")
    if residual is not None:
        check_tensor("residual", residual, dtypes=FLOAT_DTYPES)
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        check_same("dtype", x=x, residual=residual)
        if residual.stride(-1) != 1 and H > 1:
            raise ValueError(f"residual must have a contiguous last dim (stride 1), got strides {residual.stride()}")
    for name, p in params.items():
        if p is None:
            continue
        check_tensor(name, p, dtypes=FLOAT_DTYPES, dim=1, contiguous=True)
        if p.shape[0] != H:
            raise ValueError(f"{name} must be [{H}] (x's last dim), got shape {tuple(p.shape)}")
    check_same("device", x=x, residual=residual, **params)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite float >= 0, got {eps!r}")
    return float(eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm / Glm4RMSNorm / Qwen3RMSNorm (incl. per-head q_norm/k_norm on [B, S, heads, D]).

    x [..., H]: any leading dims, rows may be strided, last dim contiguous. weight [H].
    Returns weight * (x * rsqrt(mean(x^2) + eps)).to(x.dtype) (statistics in fp32), contiguous,
    dtype promote(weight.dtype, x.dtype) as the module gives. One kernel launch.
    """
    eps = _check_norm(x, eps=eps, weight=weight)
    return _run(_rmsnorm.rms_norm, x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual (x.dtype); out = rms_norm(new_residual, weight). One launch.

    x, residual [..., H] of one shape and dtype. Returns (out, new_residual), both contiguous.
    """
    eps = _check_norm(x, residual, eps, weight=weight)
    return _run(_rmsnorm.fused_add_rms_norm, x, residual, weight, eps)


def norm_add_norm(
    x: torch.Tensor, residual: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLM-4's sandwich norms in one launch: new_residual = residual + rms_norm(x, weight1);
    out = rms_norm(new_residual, weight2). Intermediates are rounded to x.dtype as stock does.

    x, residual [..., H] of one shape and dtype; weight1 [H] of x's dtype; weight2 [H].
    Returns (out, new_residual), both contiguous.
    """
    eps = _check_norm(x, residual, eps, weight1=weight1, weight2=weight2)
    if weight1.dtype != x.dtype:
        raise TypeError(f"norm_add_norm needs weight1 in x's dtype ({str(x.dtype).replace('torch.', '')}), "
                        f"got {str(weight1.dtype).replace('torch.', '')}; cast it or use rms_norm + add")
    return _run(_rmsnorm.norm_add_norm, x, residual, weight1, weight2, eps)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """nn.LayerNorm over the last dim (OPT): fp32 statistics and math, output x.dtype, contiguous.

    x [..., H] (rows may be strided, last dim contiguous), weight [H], bias [H] or None. One launch.
    """
    eps = _check_norm(x, eps=eps, weight=weight, bias=bias)
    return _run(_layernorm.layer_norm, x, weight, bias, eps)


def fused_add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual (x.dtype); out = layer_norm(new_residual, weight, bias). One launch.

    Returns (out, new_residual), both contiguous, x.dtype.
    """
    eps = _check_norm(x, residual, eps, weight=weight, bias=bias)
    return _run(_layernorm.fused_add_layer_norm, x, residual, weight, bias, eps)


def _norm_rope_kernel_state() -> tuple[bool, str]:
    if torch.cuda.is_available():
        return True, ""
    return False, "no CUDA device visible: plain-torch fallback (Triton interpreter on CPU under TRITON_INTERPRET=1)"


for _name in ("rms_norm", "fused_add_rms_norm", "norm_add_norm", "layer_norm", "fused_add_layer_norm"):
    KERNELS[_name] = _norm_rope_kernel_state()


# ---------------------------------------------------------------------------------------------
# rope: rotary embedding of q and k in place, one launch (triton/rope.py)
# ---------------------------------------------------------------------------------------------
from .triton import rope as _rope  # noqa: E402  (defines autoglm::rope, autoglm::rope_append_kv, autoglm::append_kv)


@torch.library.register_fake("autoglm::rope")
def _rope_fake(q, k, cos, sin, interleaved, mrope_section):
    return None


@torch.library.register_fake("autoglm::rope_append_kv")
def _rope_append_kv_fake(q, k, v, cos, sin, k_cache, v_cache, cache_len, interleaved, mrope_section):
    return None


@torch.library.register_fake("autoglm::append_kv")
def _append_kv_fake(k, v, k_cache, v_cache, cache_len):
    return None


@torch.library.register_fake("autoglm::rope_tables")
def _rope_tables_fake(inv_freq, position_ids, scaling, dtype):
    shape = (*position_ids.shape, 2 * inv_freq.shape[0])
    return position_ids.new_empty(shape, dtype=dtype), position_ids.new_empty(shape, dtype=dtype)


def rope_tables(inv_freq: torch.Tensor, position_ids: torch.Tensor, scaling: float,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [B, S, 2F] of a standard rotary embedding module (transformers' Llama, Qwen and
    GLM-4 `*RotaryEmbedding`: cat(f, f).cos() * scaling with f = position * inv_freq in fp32,
    cast to dtype) in one launch. inv_freq [F] float; position_ids [B, S] integer, on its device.
    The module's own values: its fp32 products are exact and cos/sin are libdevice's, as in
    torch's kernels. No host sync: graph-capturable."""
    check_tensor("inv_freq", inv_freq, dtypes=FLOAT_DTYPES, dim=1)
    check_tensor("position_ids", position_ids, dtypes=(torch.int64, torch.int32), dim=2)
    check_same("device", inv_freq=inv_freq, position_ids=position_ids)
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise TypeError(f"rope_tables: dtype must be one of {', '.join(map(str, FLOAT_DTYPES))}, got {dtype!r}")
    return _run(_rope.rope_tables, inv_freq, position_ids, float(scaling), dtype)


def _check_rope(q, k, cos, sin, interleaved, mrope_section) -> Optional[list[int]]:
    """Validate apply_rope_/rope_append_kv_ arguments; returns mrope_section as a list (or None)."""
    check_tensor("q", q, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor("k", k, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor("cos", cos, dtypes=FLOAT_DTYPES, dim=(3, 4))
    check_tensor("sin", sin, dtypes=FLOAT_DTYPES, dim=(3, 4))
    check_same("device", q=q, k=k, cos=cos, sin=sin)
    check_same("dtype", q=q, k=k)
    check_same("dtype", cos=cos, sin=sin)
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved must be a bool, got {type(interleaved).__name__}")
    B, S, Hq, D = q.shape
    if k.shape[:2] != q.shape[:2]:
        raise ValueError(f"q and k must share batch and sequence dims [B, S, heads, D]; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if k.shape[3] != D:
        raise ValueError(f"q and k must share head_dim; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    for name, t in (("q", q), ("k", k)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}")
    if q is k:  # (no data_ptr() check: it would break torch.compile tracing)
        raise ValueError("q and k are the same tensor; they must be different (non-overlapping) heads")
    return _check_rope_tables(B, S, D, cos, sin, interleaved, mrope_section)


def _check_rope_tables(B: int, S: int, D: int, cos, sin, interleaved, mrope_section) -> Optional[list[int]]:
    """cos/sin (already checked as tensors) for B sequences of S tokens with head_dim D; returns
    mrope_section as a list (or None)."""
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have one shape; got {tuple(cos.shape)} and {tuple(sin.shape)}")
    R = cos.shape[-1]
    if R < 2 or R % 2 or R > D:
        raise ValueError(f"rotary dim R = cos.shape[-1] = {R} is not supported: it must be even, >= 2 and "
                         f"<= head_dim D = {D}")
    if cos.shape[-2] != S or cos.shape[-3] not in (1, B):
        raise ValueError(f"cos/sin must be [B={B} or 1, S={S}, R] (optionally with a leading 3 for mrope); "
                         f"got {tuple(cos.shape)}")
    if cos.dim() == 4 and (mrope_section is None or cos.shape[0] != 3):
        raise ValueError(f"4-D cos/sin {tuple(cos.shape)} are the multimodal [3, B, S, R] form: they need "
                         "cos.shape[0] == 3 and mrope_section")
    if mrope_section is not None:
        sec = list(mrope_section)
        if len(sec) != 3 or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in sec) or sum(sec) != R // 2:
            raise ValueError(f"mrope_section must be 3 non-negative ints summing to R/2 = {R // 2} "
                             f"(t, h, w frequencies), got {mrope_section!r}")
        if cos.dim() == 3 and not interleaved:
            raise ValueError("mrope_section with 3-D cos means GLM-4.1V's merged interleaved layout; "
                             "pass interleaved=True (or the 4-D [3, B, S, R] cos/sin)")
        mrope_section = sec
    return mrope_section


def apply_rope_(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    interleaved: bool,
    mrope_section: Optional[list[int]] = None,
) -> None:
    """Rotate q [B, S, Hq, D] and k [B, S, Hk, D] in place, both in one launch.

    q, k: any strides with a contiguous last dim (views into a fused qkv output are fine).
    cos, sin: exactly what the model's rotary embedding module returns, [B or 1, S, R] with an
    even rotary dim R <= D: the first R dims of each head rotate, the rest pass through untouched.
    interleaved=False: Llama's rotate_half (pairs (i, i+R/2)). interleaved=True: GLM-4's form
    (pairs (2i, 2i+1) with cos[..., i]). mrope_section (GLM-4.1V, e.g. [8, 12, 12], summing to
    R/2): with interleaved=True and 3-D cos it marks transformers 5.x's merged, pair-duplicated
    cos/sin (pair i uses cos[..., 2i]); with 4-D cos [3, B or 1, S, R] (transformers 4.x) the
    kernel picks position stream t/h/w per frequency itself. No host sync: graph-capturable.
    """
    mrope_section = _check_rope(q, k, cos, sin, interleaved, mrope_section)
    _run(_rope.rope, q, k, cos, sin, interleaved, mrope_section)


def rope_append_kv_(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_len: torch.Tensor,
    *,
    interleaved: bool,
    mrope_section: Optional[list[int]] = None,
) -> None:
    """apply_rope_ and a static-cache append in one launch: RoPE + KV update of a prefill or decode step.

    q [B, S, Hq, D] rotates in place (as apply_rope_); k, v [B, S, Hk, D] are not modified: the
    rotated k and v go to k_cache/v_cache [B, Hk, C, D] (transformers' StaticLayer keys/values)
    at slots cache_len + [0, S), and cache_len (a 1-element integer device tensor, StaticLayer's
    cumulative_length) advances by S. Slots >= C are skipped (the caller sizes the cache).
    """
    mrope_section = _check_rope(q, k, cos, sin, interleaved, mrope_section)
    _check_append(k, v, k_cache, v_cache, cache_len, q=q)
    _run(_rope.rope_append_kv, q, k, v, cos, sin, k_cache, v_cache, cache_len, interleaved, mrope_section)


def append_kv_(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               cache_len: torch.Tensor) -> None:
    """Static-cache append for a model without RoPE (OPT): k, v [B, S, Hk, D] go to k_cache /
    v_cache [B, Hk, C, D] at slots cache_len + [0, S), and cache_len advances by S; slots >= C
    are skipped. What transformers' StaticLayer.update does, in two launches instead of five."""
    check_tensor("k", k, dtypes=FLOAT_DTYPES, dim=4)
    if k.stride(-1) != 1:
        raise ValueError(f"k must have a contiguous last dim (stride 1), got strides {k.stride()}")
    _check_append(k, v, k_cache, v_cache, cache_len)
    _run(_rope.append_kv, k, v, k_cache, v_cache, cache_len)


def _check_append(k, v, k_cache, v_cache, cache_len, q=None) -> None:
    """The append arguments of rope_append_kv_ / append_kv_ (k already checked)."""
    B, S, Hk, D = k.shape
    check_tensor("v", v, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor("k_cache", k_cache, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor("v_cache", v_cache, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor("cache_len", cache_len, dtypes=(torch.int32, torch.int64))
    check_same("device", q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, cache_len=cache_len)
    check_same("dtype", k=k, v=v, k_cache=k_cache, v_cache=v_cache)
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape [B, S, Hk, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.shape[0] != B or t.shape[1] != Hk or t.shape[3] != D:
            raise ValueError(f"{name} must be [B={B}, Hk={Hk}, capacity, D={D}]; got {tuple(t.shape)}")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache and v_cache must have one shape; got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    for name, t in (("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last dim (stride 1), got strides {t.stride()}")
    if cache_len.numel() != 1:
        raise ValueError(f"cache_len must hold one count (the cache's valid length); got shape {tuple(cache_len.shape)}")


KERNELS["apply_rope_"] = _norm_rope_kernel_state()
KERNELS["rope_append_kv_"] = _norm_rope_kernel_state()
KERNELS["append_kv_"] = _norm_rope_kernel_state()


# ---------------------------------------------------------------------------------------------
# qkv_rope_append: the decode qkv projection with RoPE and the cache append in its epilogue
# (csrc/linear/fused_linear.cu; the composition of fused_linear + apply_rope_ + append_kv_ elsewhere)
# ---------------------------------------------------------------------------------------------
def _qkv_rope_append_composed(x, weight, bias, norm_weight, norm_eps, cos, sin, rope_layout, k_cache, v_cache,
                              cache_len, num_q_heads):
    """What the fused op computes, as the separate ops: the reference (CPU) and the fallback."""
    qkv = fused_linear(x, weight, bias, norm_weight=norm_weight, norm_eps=norm_eps)
    B, S = x.shape[:2]
    hk, D = k_cache.shape[1], k_cache.shape[3]
    q, k, v = qkv.view(B, S, num_q_heads + 2 * hk, D).split((num_q_heads, hk, hk), dim=2)
    if cos is not None:
        R = cos.shape[-1]  # layout 2 is the 3-D pair-duplicated (mrope) form: any section summing to R/2
        apply_rope_(q, k, cos, sin, interleaved=rope_layout != _rope.LAYOUT_HALF,
                    mrope_section=[R // 2, 0, 0] if rope_layout == _rope.LAYOUT_PAIRS else None)
    append_kv_(k, v, k_cache, v_cache, cache_len)
    return qkv


if NATIVE_OK:

    @torch.library.register_fake("autoglm::qkv_rope_append")
    def _qkv_rope_append_fake(x, weight, bias, norm_weight, norm_eps, cos, sin, rope_layout, k_cache, v_cache,
                              cache_len, ticket, num_q_heads):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_kernel("autoglm::qkv_rope_append", "cpu")
    def _qkv_rope_append_cpu(x, weight, bias, norm_weight, norm_eps, cos, sin, rope_layout, k_cache, v_cache,
                             cache_len, ticket, num_q_heads):
        return _qkv_rope_append_composed(x, weight, bias, norm_weight, norm_eps, cos, sin, rope_layout, k_cache,
                                         v_cache, cache_len, num_q_heads)


# AUTOGLM_QKV_ROPE=0 turns the fused kernel off (the separate ops run): an A/B knob for benchmarks.
_QKV_ROPE_ON = os.environ.get("AUTOGLM_QKV_ROPE", "1") != "0"


def qkv_rope_fused(x: torch.Tensor, weight: torch.Tensor, cos: Optional[torch.Tensor], head_dim: int) -> bool:
    """Whether qkv_rope_append_ runs as the one fused kernel for these arguments (CUDA: a decode
    token per sequence, a weight the GEMV takes, 3-D cos/sin of x's dtype, head_dim a multiple of
    16), rather than as fused_linear, apply_rope_ and append_kv_."""
    if not _QKV_ROPE_ON or x.device.type != "cuda" or not _FUSED_LINEAR_NATIVE["cuda"][0]:
        return False
    return (x.dim() == 3 and x.shape[1] == 1 and head_dim % 16 == 0
            and (cos is None or (cos.dim() == 3 and cos.dtype == x.dtype)) and fuses_prologue(weight, x.shape[0]))


def qkv_rope_append_(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor], k_cache: torch.Tensor, v_cache: torch.Tensor, cache_len: torch.Tensor, *,
    num_q_heads: int, interleaved: bool = False, mrope_section: Optional[list[int]] = None,
    norm_weight: Optional[torch.Tensor] = None, norm_eps: float = 1e-6,
) -> torch.Tensor:
    """A decode step's attention input in one launch: qkv = norm?(x) @ weight^T + bias, RoPE on
    its q and k heads, k and v appended to a static cache.

    x [B, S, K]; weight [(Hq + 2 Hk) * D, K] with rows [q heads; k heads; v heads] (the attention's
    stacked projections), Hq = num_q_heads, Hk and D from k_cache / v_cache [B, Hk, C, D]
    (transformers' StaticLayer keys/values). cos/sin as apply_rope_ takes them (None: no RoPE, as
    for OPT; interleaved and mrope_section as there). k and v go to the caches at slots cache_len
    + [0, S) and cache_len advances by S, as rope_append_kv_. Returns qkv [B, S, N] with q and k
    rotated. On CUDA with S = 1 and a weight the decode GEMV takes (qkv_rope_fused) it is one
    kernel: the GEMV with the rotation and the cache writes in its epilogue; otherwise the
    separate ops. No host sync either way on CUDA: graph-capturable.
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES, dim=3)
    check_tensor("k_cache", k_cache, dtypes=FLOAT_DTYPES, dim=4)
    if isinstance(num_q_heads, bool) or not isinstance(num_q_heads, int) or num_q_heads < 1:
        raise ValueError(f"num_q_heads must be a positive int, got {num_q_heads!r}")
    if (cos is None) != (sin is None):
        raise ValueError("pass both cos and sin, or neither (no RoPE)")
    hk, D = k_cache.shape[1], k_cache.shape[3]
    if weight.dim() != 2 or weight.shape[0] != (num_q_heads + 2 * hk) * D:
        raise ValueError(f"weight must be [(Hq + 2 Hk) * D, K] = [{(num_q_heads + 2 * hk) * D}, K] for "
                         f"{num_q_heads} q heads and k_cache {tuple(k_cache.shape)}; got {tuple(weight.shape)}")
    B, S = x.shape[:2]
    check_tensor("v_cache", v_cache, dtypes=FLOAT_DTYPES, dim=4)
    check_tensor("cache_len", cache_len, dtypes=(torch.int32, torch.int64))
    check_same("device", x=x, weight=weight, k_cache=k_cache, v_cache=v_cache, cache_len=cache_len, cos=cos, sin=sin)
    check_same("dtype", x=x, weight=weight, k_cache=k_cache, v_cache=v_cache)
    if k_cache.shape[0] != B or v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache and v_cache must both be [B={B}, Hk, capacity, D]; got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    if cache_len.numel() != 1:
        raise ValueError(f"cache_len must hold one count (the cache's valid length); got shape {tuple(cache_len.shape)}")
    _check_linear(x, weight, bias, "none")
    layout = _rope.LAYOUT_HALF
    if cos is not None:
        check_tensor("cos", cos, dtypes=FLOAT_DTYPES, dim=(3, 4))
        check_tensor("sin", sin, dtypes=FLOAT_DTYPES, dim=(3, 4))
        check_same("dtype", cos=cos, sin=sin)
        if not isinstance(interleaved, bool):
            raise TypeError(f"interleaved must be a bool, got {type(interleaved).__name__}")
        mrope_section = _check_rope_tables(B, S, D, cos, sin, interleaved, mrope_section)
        layout = _rope.cos_layout(interleaved, mrope_section, cos.dim())
    if qkv_rope_fused(x, weight, cos, D):
        return torch.ops.autoglm.qkv_rope_append.default(
            x, weight, bias, norm_weight, float(norm_eps), cos, sin, layout, k_cache, v_cache, cache_len,
            _rope.ticket_of(cache_len), num_q_heads)
    if _FUSED_LINEAR_NATIVE.get(x.device.type, (False, ""))[0] and x.device.type == "cpu" and x.shape[1] == 1:
        return torch.ops.autoglm.qkv_rope_append.default(  # the CPU kernel: the composition, through the op
            x, weight, bias, norm_weight, float(norm_eps), cos, sin, layout, k_cache, v_cache, cache_len,
            _rope.ticket_of(cache_len), num_q_heads)
    return _qkv_rope_append_composed(x, weight, bias, norm_weight, norm_eps, cos, sin, layout, k_cache, v_cache,
                                      cache_len, num_q_heads)


KERNELS["qkv_rope_append_ (CUDA: the decode qkv GEMV with RoPE + cache append)"] = _FUSED_LINEAR_NATIVE["cuda"]


# ---------------------------------------------------------------------------------------------
# an output projection + residual + the RMSNorm after it (csrc/linear/): one launch at decode
# ---------------------------------------------------------------------------------------------
if NATIVE_OK:

    @torch.library.register_fake("autoglm::linear_add_rms_norm")
    def _linear_add_rms_norm_fake(x, weight, bias, residual, norm_weight, norm_eps, ticket):
        shape = (*x.shape[:-1], weight.shape[0])
        return x.new_empty(shape), x.new_empty(shape)


# AUTOGLM_LINEAR_NORM=0: the patched decode step runs o_proj + residual and the post-attention
# norm as two kernels again (an A/B knob for benchmarks).
_LINEAR_NORM_ON = os.environ.get("AUTOGLM_LINEAR_NORM", "1") != "0"
_TICKETS: dict = {}  # device -> the int32 ticket linear_add_rms_norm uses when the caller passes none


def linear_norm_fused(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor) -> bool:
    """Whether linear_add_rms_norm computes the norm inside the projection's kernel for these
    arguments (the decode GEMV takes the weight; norm weight of x's dtype), so that calling it
    saves a launch over fused_linear(residual=...) followed by rms_norm."""
    return (_LINEAR_NORM_ON and norm_weight.dtype == x.dtype and weight.shape[0] % 8 == 0
            and _FUSED_LINEAR_NATIVE.get(x.device.type, (False, ""))[0]
            and fuses_prologue(weight, x.numel() // max(x.shape[-1], 1)))


def linear_add_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor,
    norm_weight: torch.Tensor, norm_eps: float = 1e-6, *, ticket: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, RMSNorm(h)) with h = x @ weight^T + bias + residual: a pre-norm decoder layer's o_proj,
    residual add and post-attention norm.

    x [..., K]; weight [N, K]; residual [..., N]; norm_weight [N]; one dtype. The norm is
    transformers' RMSNorm (fp32 statistics, rounded as LlamaRMSNorm rounds). On CUDA with <= 16
    rows and a weight the decode GEMV takes (linear_norm_fused) it is one kernel: the last block
    of the GEMV to finish normalizes h. ticket: an int32 [1] on x's device that is zero between
    calls (the kernel leaves it so); default one per device, so calls on one device must not
    overlap on different streams (pass a ticket each for that). No host sync: graph-capturable.
    """
    _check_linear(x, weight, bias, "none")
    if residual is None:
        raise ValueError("linear_add_rms_norm: residual is required (the tensor the projection's output is added to)")
    _check_prologue("linear_add_rms_norm", x, None, norm_eps, residual, (*x.shape[:-1], weight.shape[0]))
    check_tensor("norm_weight", norm_weight, dtypes=FLOAT_DTYPES, dim=1)
    if norm_weight.shape[0] != weight.shape[0]:
        raise ValueError(f"linear_add_rms_norm: norm_weight must be [N] = [{weight.shape[0]}] (the projection's "
                         f"output features), got {tuple(norm_weight.shape)}")
    if not (isinstance(norm_eps, (int, float)) and norm_eps > 0):
        raise ValueError(f"linear_add_rms_norm: norm_eps must be a number > 0, got {norm_eps!r}")
    check_same("device", x=x, norm_weight=norm_weight)
    check_same("dtype", x=x, norm_weight=norm_weight)
    if not _FUSED_LINEAR_NATIVE.get(x.device.type, (False, ""))[0]:
        h = fused_linear(x, weight, bias, residual=residual)
        return h, _rmsnorm.rms_norm_reference(h, norm_weight, norm_eps)
    if ticket is None:
        ticket = _TICKETS.get(x.device)
        if ticket is None:
            ticket = _TICKETS[x.device] = torch.zeros(1, dtype=torch.int32, device=x.device)
    else:
        check_tensor("ticket", ticket, dtypes=(torch.int32,))
    return torch.ops.autoglm.linear_add_rms_norm.default(x.contiguous(), weight, bias, residual, norm_weight,
                                                         float(norm_eps), ticket)


KERNELS["linear_add_rms_norm (CUDA: the decode GEMV with the residual and the next RMSNorm)"] = \
    _FUSED_LINEAR_NATIVE["cuda"]


# ---------------------------------------------------------------------------------------------
# memory pool (csrc/pool/): availability only; the allocator's Python face is memory.py
# ---------------------------------------------------------------------------------------------
KERNELS["memory_pool"] = (
    _native_reason("cuda") if hasattr(torch.cuda, "use_mem_pool") and hasattr(torch.cuda, "MemPool")
    else (False, "this torch lacks torch.cuda.MemPool / use_mem_pool (needs torch >= 2.6)")
)
