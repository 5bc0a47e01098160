"""Host (CPU) cost of the eager paths: what bounds time to first token and eager decode.

Two parts, both on CUDA:
  ops     host microseconds per call of each op through its typed wrapper (ops.*), through
          torch.ops.autoglm.* (dispatcher, no checks) and, for the Triton ops, through the
          implementation's direct (plain eager) entry, beside the stock code it replaces; for
          fused_add_rms_norm also the kernel launch alone (outputs preallocated: `launch`) and
          Triton's CompiledKernel runner alone (`runner`), to split the host time by layer.
          Tiny decode-shaped inputs, so the GPU never holds the host back.
  prefill per model and mode (stock, graph-stock, patched): time to first token (a 128-token
          prompt) and its host time before, in and after the prefill forward; last (the profiler
          slows a process's later launches) the host syncs of the prefill (profiler count of aten::_local_scalar_dense),
          the GPU time and kernel count of the 1-token generate, and cProfile listings (--cprofile DIR).

    python bench/host_overhead.py --models llama3.2-1b,glm4-9b --json out.json --cprofile out/
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from autoglm_kernels import ops
from autoglm_kernels.cli.bench import (_setup, cprofile_listing, environment, host_timers, prompt_ids, script_models, script_parser,
                                       time_generate)


def host_us(fn, calls: int = 300) -> float:
    """Median over 5 rounds of the host microseconds per call of `fn` (launches only, no sync)."""
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    return round(statistics.median(rounds), 2)


def op_rows() -> list[dict]:
    from transformers.models.glm4.modeling_glm4 import apply_rotary_pos_emb
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from autoglm_kernels.triton import decode_attention as da
    from autoglm_kernels.triton import rmsnorm as rn
    from autoglm_kernels.triton import rope as rp

    dev, dt, H = "cuda", torch.bfloat16, 4096
    x, r = torch.randn(1, 1, H, device=dev, dtype=dt), torch.randn(1, 1, H, device=dev, dtype=dt)
    w = torch.ones(H, device=dev, dtype=dt)
    norm = LlamaRMSNorm(H).to(dev, dt)
    W = torch.randn(4608, H, device=dev, dtype=dt)
    Wg = torch.randn(2 * 2048, H, device=dev, dtype=dt)
    q, k = torch.randn(1, 1, 32, 128, device=dev, dtype=dt), torch.randn(1, 1, 2, 128, device=dev, dtype=dt)
    cos, sin = torch.randn(1, 1, 64, device=dev, dtype=dt), torch.randn(1, 1, 64, device=dev, dtype=dt)
    kc, vc = (torch.randn(1, 2, 256, 128, device=dev, dtype=dt) for _ in range(2))
    lens = torch.tensor([128], device=dev, dtype=torch.int32)
    counters = torch.zeros(64, device=dev, dtype=torch.int32)  # decode_attention's merge tickets
    sc = 128 ** -0.5

    out, new_r = torch.empty_like(x), torch.empty_like(x)
    from autoglm_kernels import triton as tk

    def launch_only():  # the op's kernel launch with its outputs preallocated (LaunchCache path)
        tk._direct.on = True
        try:
            rn._launch(rn._ADD_RMS, x, r, None, w, out, new_r, 1e-5)
        finally:
            tk._direct.on = False

    seen = []
    real_launch = tk.LAUNCHES.launch
    tk.LAUNCHES.launch = lambda fn, grid, *a, **kw: (seen.append((fn, grid, a, kw)), real_launch(fn, grid, *a, **kw))[1]
    launch_only()
    launch_only()
    tk.LAUNCHES.launch = real_launch
    fn, grid, a, kw = seen[-1]
    kernel, tail = tk.LAUNCHES._kernels[(id(fn), len(grid), tk._specs(a), tuple(kw.items()))]
    grid3 = tuple(grid) + (1,) * (3 - len(grid))

    def runner_only():  # Triton's CompiledKernel launcher alone
        kernel[grid3](*a, *tail)

    def stock_gated():
        g, u = torch.nn.functional.linear(x, Wg).chunk(2, dim=-1)
        return torch.nn.functional.silu(g) * u

    cases = {
        "rms_norm": dict(
            wrapper=lambda: ops.rms_norm(x, w, 1e-5), dispatcher=lambda: torch.ops.autoglm.rms_norm(x, w, 1e-5),
            impl=lambda: rn.rms_norm.direct(x, w, 1e-5), stock=lambda: norm(x)),
        "fused_add_rms_norm": dict(
            wrapper=lambda: ops.fused_add_rms_norm(x, r, w, 1e-5),
            dispatcher=lambda: torch.ops.autoglm.fused_add_rms_norm(x, r, w, 1e-5),
            impl=lambda: rn.fused_add_rms_norm.direct(x, r, w, 1e-5), launch=launch_only, runner=runner_only,
            stock=lambda: norm(x + r)),
        "fused_linear 4096->4608": dict(
            wrapper=lambda: ops.fused_linear(x, W), dispatcher=lambda: torch.ops.autoglm.fused_linear(x, W, None, "none"),
            stock=lambda: torch.nn.functional.linear(x, W)),
        "fused_linear gated 4096->2x2048": dict(
            wrapper=lambda: ops.fused_linear(x, Wg, None, "gated_silu"),
            dispatcher=lambda: torch.ops.autoglm.fused_linear(x, Wg, None, "gated_silu"), stock=stock_gated),
        "apply_rope_ (GLM interleaved)": dict(
            wrapper=lambda: ops.apply_rope_(q, k, cos, sin, interleaved=True),
            dispatcher=lambda: torch.ops.autoglm.rope(q, k, cos, sin, True, None),
            impl=lambda: rp.rope.direct(q, k, cos, sin, True, None),
            stock=lambda: apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)),
        "decode_attention (32/2 heads, 256 slots)": dict(
            wrapper=lambda: ops.decode_attention(q, kc, vc, lens, scale=sc, counters=counters),
            dispatcher=lambda: torch.ops.autoglm.decode_attention(q, kc, vc, lens, None, sc, 0, counters),
            impl=lambda: da.decode_attention.direct(q, kc, vc, lens, None, sc, 0, counters),
            stock=lambda: torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), kc[:, :, :128], vc[:, :, :128], scale=sc, enable_gqa=True)),
        "torch.add (reference point)": dict(stock=lambda: x + r),
    }
    rows = []
    with torch.inference_mode():
        for name, paths in cases.items():
            row = {"op": name, **{path: host_us(fn) for path, fn in paths.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def prefill_row(model, name: str, mode: str, repeats: int) -> dict:
    """Time to first token and where it goes on the host (no profiler runs before: once torch's
    profiler has traced CUDA in a process, kernel launches there cost more host time)."""
    ids = prompt_ids(model, 1, 128)
    undo = _setup(model, mode)
    try:
        for _ in range(2):
            time_generate(model, ids, 2)  # warm-up (Triton compiles, graph capture)
        ttft = statistics.median(time_generate(model, ids, 2)[1] for _ in range(repeats))
        row = {"model": name, "mode": mode, "ttft_ms": round(1e3 * ttft, 2)}
        spans = []
        for _ in range(repeats):
            marks: dict = {}
            with host_timers(model, "forward") as timers:
                time_generate(model, ids, 2, marks=marks)  # the prefill forward, then one decode step
            first = timers["forward"].first
            if first is not None and marks.get("first_token") is not None:
                spans.append((first[0] - marks["start"], first[1] - first[0], marks["first_token"] - first[1]))
        if spans:  # where the time to first token goes, on the host (medians)
            for i, key in enumerate(("before_prefill_ms", "prefill_forward_host_ms", "after_prefill_ms")):
                row[key] = round(1e3 * statistics.median(s[i] for s in spans), 2)
        print(json.dumps(row), flush=True)
        return row
    finally:
        undo()


def profile_row(model, name: str, mode: str, row: dict, cprofile_dir: Path | None) -> None:
    """Add the host syncs, GPU time and kernel count of a 1-token generate to `row` (torch
    profiler), and write a cProfile listing of one to cprofile_dir."""
    ids = prompt_ids(model, 1, 128)
    undo = _setup(model, mode)
    try:
        time_generate(model, ids, 1)
        from torch.profiler import ProfilerActivity, profile

        from autoglm_kernels.cli.profile import device_ops

        cuda = ids.is_cuda
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            time_generate(model, ids, 1)
        row["host_syncs"] = sum(1 for e in prof.events() if e.name == "aten::_local_scalar_dense")
        if cuda:  # GPU time of the whole 1-token generate: kernels run one at a time on one stream
            dev = device_ops(prof)
            row["gpu_ms"] = round(sum(us for _, us in dev.values()) / 1e3, 2)
            row["kernels"] = sum(n for n, _ in dev.values())
            top = sorted(dev.items(), key=lambda kv: -kv[1][1])[:6]
            row["top_kernels_us"] = {name[:60]: round(us, 1) for name, (_, us) in top}
        if cprofile_dir is not None:
            listing = cprofile_listing(lambda: time_generate(model, ids, 1))
            (cprofile_dir / f"cprofile_{name}_{mode}.txt").write_text(listing)
    finally:
        undo()


def main() -> None:
    p = script_parser(__doc__, modes="stock,graph-stock,patched", repeats=5)
    p.add_argument("--skip-ops", action="store_true", help="only the prefill part (--tiny implies it)")
    p.add_argument("--cprofile", metavar="DIR", help="write cProfile listings of each prefill there")
    p.add_argument("--no-profile", action="store_true", help="skip the torch-profiler and cProfile part")
    args = p.parse_args()
    cdir = Path(args.cprofile) if args.cprofile else None
    if cdir:
        cdir.mkdir(parents=True, exist_ok=True)
    out = {"environment": environment(), "ops_host_us": [] if args.skip_ops or args.tiny else op_rows(), "prefill": []}
    for name, model in script_models(args.models, args.tiny):
        rows = [prefill_row(model, name, mode, args.repeats) for mode in args.modes.split(",")]
        if not args.no_profile:  # last: the profiler slows the process's later launches
            for row in rows:
                profile_row(model, name, row["mode"], row, cdir)
                print(json.dumps(row), flush=True)
        out["prefill"] += rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
