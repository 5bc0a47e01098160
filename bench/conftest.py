"""Benchmarks need a CUDA GPU; on a CPU-only machine every benchmark is skipped with that reason.

Each benchmark is parametrized over impl in (stock, fused) and grouped by op and shape so the
pair sits side by side; GPU time, GB/s, % of read bandwidth (measured once per session) and
TFLOP/s go to extra_info. bench/report.py pairs them into ratios.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `import common` from bench files

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if not HAS_CUDA:
        skip = pytest.mark.skip(reason="benchmarks need a CUDA GPU: torch.cuda.is_available() is False")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bandwidth():
    """Read bandwidth of this GPU in bytes/s, measured once in this run."""
    from common import read_bandwidth

    return read_bandwidth()
