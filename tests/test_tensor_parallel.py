"""patch_model on a tensor-parallel model (transformers tp_plan="auto", 2 CPU processes, gloo).

The fused paths stack q/k/v and gate/up rows of whole weights; on DTensor shards that would give
wrong answers, so a TP model must stay stock with a clear reason (and `strict=True` must raise).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed")


def test_tp_plan_model_stays_stock_with_a_reason(tmp_path):
    from autoglm_kernels.demo_model import build_checkpoint

    ckpt = build_checkpoint(tmp_path / "ckpt", "llama", tiny=True)
    out = tmp_path / "result"
    worker = Path(__file__).with_name("tp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(worker), str(ckpt), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads(Path(f"{out}.{rank}.json").read_text())
        assert r["sharded"] == "DTensor", r  # transformers really sharded the weights
        assert not r["patched_anything"], r["report"]
        assert "tensor-parallel (tp_plan) weights are not supported yet" in r["report"]
        assert r["same_tokens"], r
