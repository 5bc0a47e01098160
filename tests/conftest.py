"""Shared test setup.

- On a machine without CUDA, Triton kernels run through the Triton interpreter
  (TRITON_INTERPRET=1, set here before any Triton kernel is defined); the interpreter is
  exact for fp32/fp16 but not for bf16 tl.dot, so bf16 Triton tests are GPU-only.
- Tests marked `gpu` are skipped with a reason when no CUDA device is visible.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
