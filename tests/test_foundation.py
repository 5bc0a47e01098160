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
