"""Which access pattern streams a decode weight closest to the read bandwidth: read-only kernels
(scripts/read_patterns.cu) with the GEMV's tiling (16-row tiles, warps splitting K, a ring of
NB shared-memory slots per warp), filled either by the GEMV's own cp.async pattern ("frag":
8 rows x 64 bytes per instruction, `unroll` steps of 64 bytes per row and batch) or by one TMA
bulk copy per row and batch ("bulk": `seg` contiguous bytes of a row). Beside them, in the same
run: the read bandwidth (1 GiB reduction), cuBLAS F.linear at M = 1 and the package's
fused_linear on the same weights. GPU time from CUDA-graph replays over rotated weights.

    python scripts/read_patterns.py --json out.jsonl [--shapes "8b down 14336->4096,..."]

First checks on a small matrix that both kernels read every byte (XOR checksum).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.cpp_extension import load_inline

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))

from common import GraphTimer, copies_for, pct_of_read_bw, read_bandwidth  # noqa: E402

SHAPES = {  # name -> (K, N)
    "8b down 14336->4096": (14336, 4096),
    "8b gate_up 4096->28672": (4096, 28672),
    "8b qkv 4096->6144": (4096, 6144),
    "glm qkv 4096->4608": (4096, 4608),
    "1b down 8192->2048": (8192, 2048),
    "1b qkv 2048->3072": (2048, 3072),
}


DECL = "int64_t read_pattern(const at::Tensor& w, at::Tensor& out, int64_t kind, int64_t nb, int64_t warps, int64_t param);"


def build():
    return load_inline("read_patterns", cpp_sources=DECL, cuda_sources=(HERE / "read_patterns.cu").read_text(),
                       functions=["read_pattern"], extra_cuda_cflags=["-O3", "-arch=sm_90a"], verbose=False)


def checksum_ok(ext) -> None:
    """Both kernels fold every 32-bit word of W into their outputs exactly once."""
    w = torch.randint(-2**15, 2**15, (40, 1000), dtype=torch.int16).view(torch.bfloat16).cuda()
    want = np.bitwise_xor.reduce(w.view(torch.int32).cpu().numpy().ravel())
    for kind, nb, warps, param in ((0, 2, 4, 4), (0, 3, 2, 8), (1, 2, 4, 256), (1, 4, 1, 512), (1, 3, 8, 128)):
        out = torch.zeros((40 + 15) // 16 * 32 * warps, dtype=torch.int32, device="cuda")
        ext.read_pattern(w, out, kind, nb, warps, param)
        got = np.bitwise_xor.reduce(out.cpu().numpy())
        assert got == want, f"kind {kind} nb {nb} warps {warps} param {param}: checksum {got} != {want}"


def configs(K: int):
    for nb, warps, unroll in itertools.product((2, 3, 4), (1, 2, 4, 8, 16), (4, 8, 16)):
        if warps * nb * unroll * 1024 <= 200 * 1024 and K // warps >= 32 * unroll:
            yield "frag", 0, nb, warps, unroll
    for nb, warps, seg in itertools.product((2, 3, 4), (1, 2, 4, 8, 16), (256, 512, 1024, 2048)):
        if warps * nb * 16 * (seg + 64) <= 200 * 1024 and 2 * K // warps >= seg:
            yield "bulk", 1, nb, warps, seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    ext = build()
    checksum_ok(ext)
    from autoglm_kernels import ops

    bw = read_bandwidth()
    print(f"read bandwidth {bw / 1e12:.3f} TB/s")
    with open(args.json, "a") as f:
        for name in args.shapes.split(","):
            K, N = SHAPES[name]
            nbytes = N * K * 2
            ws = [torch.empty(N, K, device="cuda", dtype=torch.bfloat16).normal_() for _ in range(copies_for(nbytes))]
            x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
            rows = []

            def timed(label, fn, **extra):
                us = min(GraphTimer(fn, [(w,) for w in ws]).time_us() for _ in range(3))
                row = {"shape": name, "impl": label, "us": round(us, 2), "gbs": round(nbytes / us / 1e3, 1),
                       "pct_bw": pct_of_read_bw(nbytes, us, bw), **extra}
                rows.append(row)
                f.write(json.dumps(row) + "\n")

            timed("cublas", lambda w: torch.nn.functional.linear(x, w))
            timed("fused_linear", lambda w: ops.fused_linear(x, w, None, "none"))
            for label, kind, nb, warps, param in configs(K):
                out = torch.empty((N + 15) // 16 * 32 * warps, dtype=torch.int32, device="cuda")
                timed(label, lambda w: ext.read_pattern(w, out, kind, nb, warps, param), nb=nb, warps=warps,
                      param=param)
            del ws
            rows.sort(key=lambda r: r["us"])
            print(f"\n{name} ({nbytes / 2**20:.1f} MiB)")
            refs = [r for r in rows if r["impl"] in ("cublas", "fused_linear")]
            for r in refs + [r for r in rows if r not in refs][:8]:
                print(f"  {r['impl']:>12} nb={r.get('nb', '-')} warps={r.get('warps', '-')} param={r.get('param', '-')}"
                      f"  {r['us']:8.2f} us  {r['pct_bw']:5.1f}%")
            for label in ("frag", "bulk"):
                best = [r for r in rows if r["impl"] == label][:1]
                if best:
                    r = best[0]
                    print(f"  best {label}: nb={r['nb']} warps={r['warps']} param={r['param']} {r['pct_bw']}%")
            f.flush()


if __name__ == "__main__":
    main()
