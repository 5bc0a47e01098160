"""The package foundation: the extension loads, doctor tells the truth, input checks are clear.
(Each op's fake implementation is checked by torch.library.opcheck in that op's own tests.)"""

import json
import subprocess
import sys

import pytest
import torch

import autoglm_kernels
from autoglm_kernels import _native, ops


def test_extension_loads_and_reports_build():
    info = _native.build_info()
    assert info["loaded"], info["reason"]
    assert info["path"].endswith(".so")
    if info["cuda"]:
        assert info["archs"], "a CUDA build must record its arch list"


def test_doctor_tells_the_truth():
    out = subprocess.run([sys.executable, "-m", "autoglm_kernels", "doctor", "--json"], capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout)
    assert info["torch"] == torch.__version__
    assert info["autoglm_kernels"] == autoglm_kernels.__version__
    assert info["extension"]["cuda"] == _native.build_info()["cuda"]
    assert (info["gpu"] is None) == (not torch.cuda.is_available())
    assert info["kernels"], "doctor lists no kernels"
    for name, k in info["kernels"].items():
        assert k["available"] or k["reason"], f"{name}: unavailable without a reason"
    text = subprocess.run([sys.executable, "-m", "autoglm_kernels", "doctor"], capture_output=True, text=True,
                          check=True).stdout
    assert "_C: built with" in text and "kernels:" in text


def test_check_tensor_errors_are_clear():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        ops.check_tensor("x", [1, 2])
    with pytest.raises(TypeError, match="x has dtype float32; expected one of: float16, bfloat16"):
        ops.check_tensor("x", x, dtypes=(torch.float16, torch.bfloat16))
    with pytest.raises(ValueError, match=r"x must have 3 dims, got shape \(2, 3\)"):
        ops.check_tensor("x", x, dim=3)
    with pytest.raises(ValueError, match="must be contiguous"):
        ops.check_tensor("x", x.t(), contiguous=True)
    with pytest.raises(ValueError, match="tensors must share one device"):
        ops.check_same("device", a=x, b=torch.zeros(1, device="meta"))


def test_triton_ops_run_directly_only_in_plain_eager_inference(monkeypatch):
    """ops._run skips the dispatcher only for plain tensors with grad off and no tracing or
    modes; the direct call gives what the registered op gives."""
    from torch._library.triton import is_wrap_triton_enabled
    from torch._subclasses.fake_tensor import FakeTensorMode

    from autoglm_kernels.triton import rmsnorm

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the ops' plain-torch path: this is about dispatch
    calls = []
    direct = rmsnorm.rms_norm.direct
    monkeypatch.setattr(rmsnorm.rms_norm, "direct", lambda *a: calls.append(1) or direct(*a))
    wrapping = []  # wrap_triton must be off inside the direct call, as in triton_op's backend
    reference = rmsnorm.rms_norm_reference
    monkeypatch.setattr(rmsnorm, "rms_norm_reference",
                        lambda *a: wrapping.append(is_wrap_triton_enabled()) or reference(*a))
    x, w = torch.randn(3, 64), torch.rand(64)
    ref = torch.ops.autoglm.rms_norm(x, w, 1e-6)
    with torch.no_grad():
        out = ops.rms_norm(x, w, 1e-6)
    assert calls == [1] and torch.equal(out, ref) and wrapping == [False, False]
    ops.rms_norm(x, w, 1e-6)  # grad mode on: through the dispatcher (autograd sees the op)
    with torch.no_grad(), torch.device("cpu"):  # a torch function mode is active
        ops.rms_norm(x, w, 1e-6)
    with torch.no_grad(), FakeTensorMode() as mode:
        fake = ops.rms_norm(mode.from_tensor(x), mode.from_tensor(w), 1e-6)
    assert fake.shape == x.shape and calls == [1]
    compiled = torch.compile(lambda a, b: ops.rms_norm(a, b, 1e-6), backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, w), ref)
    assert calls == [1]


def test_launch_cache_reuses_a_kernel_only_for_the_same_specialization():
    """LaunchCache: the first launch of a specialization goes through Triton and keeps the
    compiled kernel; later ones call it with every parameter in signature order (constexprs and
    defaults filled in, launch options left out) and a 3-D grid. Another alignment, an int that
    becomes 1 or divisible by 16, or another constexpr is another entry; a compiled kernel whose
    launcher takes another signature, or a launch with a constexpr passed positionally, is never
    cached."""
    from types import SimpleNamespace

    from autoglm_kernels.triton import LaunchCache

    jit_calls, fast_calls = [], []

    class FakeJit:
        params = [SimpleNamespace(name=n, default=d, is_constexpr=c) for n, d, c in
                  (("X", None, False), ("n", None, False), ("BLOCK", None, True), ("FLAG", 3, True))]

        def __init__(self, signature_len=4):
            self.signature_len = signature_len

        def __getitem__(self, grid):
            def jit_run(*args, **kwargs):
                jit_calls.append((grid, args, kwargs))
                return Compiled(dict.fromkeys(range(self.signature_len)))
            return jit_run

    class Compiled:
        def __init__(self, signature):
            self.src = SimpleNamespace(signature=signature)

        def __getitem__(self, grid):
            return lambda *args: fast_calls.append((grid, args))

    cache, fn = LaunchCache(), FakeJit()
    buf = torch.zeros(64)
    x, x_odd = buf[:32], buf[1:33]  # 16-byte aligned, and not
    cache.launch(fn, (4,), x, 32, BLOCK=64, num_warps=4)
    cache.launch(fn, (5,), x, 48, BLOCK=64, num_warps=4)  # same specialization (48 % 16 == 0)
    assert len(jit_calls) == 1 and fast_calls == [((5, 1, 1), (x, 48, 64, 3))]
    for args, kw in [((x_odd, 32), dict(BLOCK=64)), ((x, 33), dict(BLOCK=64)), ((x, 1), dict(BLOCK=64)),
                     ((x, 32), dict(BLOCK=128)), ((x, 32), dict(BLOCK=64, FLAG=2))]:
        cache.launch(fn, (1, 2), *args, **kw)
    assert len(jit_calls) == 6 and len(fast_calls) == 1
    cache.launch(fn, (1, 2), x, 32, BLOCK=64, FLAG=2)
    assert fast_calls[-1] == ((1, 2, 1), (x, 32, 64, 2))
    other = FakeJit(signature_len=2)  # a launcher without the constexprs (older Triton)
    for _ in range(2):
        cache.launch(other, (1,), x, 32, BLOCK=64)
    assert len(jit_calls) == 8 and len(fast_calls) == 2
    for block in (64, 128):  # BLOCK passed positionally: never cached (the key would not hold its value)
        cache.launch(fn, (1,), x, 32, block)
    assert len(jit_calls) == 10 and len(fast_calls) == 2


def test_launch_cache_key_matches_spec():
    """The launch cache's inline key (_specs) equals _spec of every argument, for each kind of
    argument the kernels take and at the boundaries Triton specializes on."""
    from autoglm_kernels.triton import _spec, _specs

    buf = torch.zeros(64, dtype=torch.float16)
    values = [buf, buf[1:], buf[8:], torch.zeros(3, dtype=torch.int64), torch.nn.Parameter(torch.zeros(4)),
              0, 1, -1, 15, 16, 17, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, 2**63, True, False, None,
              0.5, 1e-5, "x", (1, 2)]
    assert _specs(values) == tuple(map(_spec, values))
    assert _specs([]) == ()


@pytest.mark.gpu
def test_launch_cache_gives_what_triton_gives():
    """Norm and RoPE launches through the LaunchCache (plain eager inference) on inputs whose
    specialization changes between calls (1, 16 and 17 rows; a misaligned view) match the
    references on every call, the cached ones included."""
    from autoglm_kernels.triton import LAUNCHES, rmsnorm

    torch.manual_seed(0)
    H = 4096
    w = torch.randn(H, device="cuda", dtype=torch.bfloat16)
    buf = torch.randn(17 * H + 1, device="cuda", dtype=torch.bfloat16)
    before = len(LAUNCHES._kernels)
    with torch.no_grad():
        for rows in (1, 16, 17, 1, 16, 17):
            for x in (buf[:rows * H].view(rows, H), buf[1:rows * H + 1].view(rows, H)):
                want = rmsnorm.rms_norm_reference(x, w, 1e-6)
                for _ in range(2):
                    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), want, rtol=1.6e-2, atol=1e-2)
    assert len(LAUNCHES._kernels) > before


@pytest.mark.gpu
def test_dependent_launches_match_the_dispatcher_path():
    """A chain of dependent kernels (norm -> GEMV -> norm -> ...) launched back to back on the
    direct path (on sm_90+, unless AUTOGLM_PDL=0, programmatic dependent launch: each kernel
    may launch before the one before it ends) and replayed from a CUDA graph gives bit for bit what
    the dispatcher path gives, on every replay: no kernel reads its input early."""
    from autoglm_kernels import triton as kernels

    torch.manual_seed(0)
    H = 2048
    ws = [torch.randn(H, H, device="cuda", dtype=torch.bfloat16) / 45 for _ in range(4)]
    g = torch.rand(H, device="cuda", dtype=torch.bfloat16) + 0.5

    def chain(x):
        for i in range(24):
            x = ops.fused_linear(ops.rms_norm(x, g, 1e-6), ws[i % 4], None, "silu")
        return x

    x0 = torch.randn(1, H, device="cuda", dtype=torch.bfloat16)
    want = chain(x0)  # grad mode on: the dispatcher path
    with torch.no_grad():
        assert torch.equal(chain(x0), want)
        static_x = x0.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain(static_x)
        for _ in range(10):
            out.zero_()
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, want)
    print(f"PDL on: {kernels.PDL and torch.cuda.get_device_capability()[0] >= 9}")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ops_run_on_the_device_of_their_tensors():
    """Tensors on GPU 1 while GPU 0 is current (a device_map model's second half): each op runs
    on GPU 1 and gives what it gives there when GPU 1 is current."""
    torch.manual_seed(0)
    dev = torch.device("cuda:1")
    x = torch.randn(3, 256, device=dev, dtype=torch.bfloat16)
    w = torch.randn(256, device=dev, dtype=torch.bfloat16)
    lin = torch.randn(512, 256, device=dev, dtype=torch.bfloat16) / 16
    q = torch.randn(1, 1, 8, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 64, 128, device=dev, dtype=torch.bfloat16)
    lens = torch.tensor([40], device=dev)

    def run():
        return [ops.rms_norm(x, w, 1e-6), ops.fused_linear(x, lin, None, "gated_silu"),
                ops.decode_attention(q, k, k, lens)]

    with torch.cuda.device(1):
        want = run()
    with torch.cuda.device(0):
        got = run()
    for g, r in zip(got, want):
        assert g.device == dev
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_attention_ops_compile_with_bool_masks(monkeypatch):
    """torch.compile traces the attention wrappers with a bool padding mask (they hand the kernels
    uint8: inductor cannot lower the bitcast view eager mode uses); results equal eager."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU: the plain-torch references behind the ops
    torch.manual_seed(0)
    k, v = torch.randn(1, 2, 10, 64), torch.randn(1, 2, 10, 64)
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, :3] = False
    for fn, q in ((lambda q, k, v, m: ops.decode_attention(q, k, v, torch.tensor([10]), kv_mask=m), torch.randn(1, 1, 4, 64)),
                  (lambda q, k, v, m: ops.prefill_attention(q, k, v, kv_mask=m), torch.randn(1, 10, 4, 64))):
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(q, k, v, mask), fn(q, k, v, mask), atol=1e-5, rtol=1e-5)
