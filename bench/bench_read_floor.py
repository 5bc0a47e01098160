"""How close to the read bandwidth a plain read of N bytes gets, at the sizes the kernels stream.

"% of read bandwidth" everywhere divides by the rate of a 1 GiB read-only sum. A read of 8-50 MB
cannot reach that rate: ramp-up, the last wave and the launch boundary are a larger share of its
time. This times that same read-only sum (common.read_only_sum: `torch.sum(x, dtype=float32)`)
over buffers of the sizes the decode kernels read, rotated past the L2 like every benchmark, so
each kernel's % of read bandwidth can be set beside what the defining read reaches at its size.
It is not a ceiling: about 7 us of every sum is fixed cost, and the GEMV, which starts its loads
under PDL before the previous kernel ends, beats it at every size up to 48 MiB.

  decode attention K+V, batch 1, d 128: GLM-4 (2 KV heads) 8k tokens 8 MiB, 32k 32 MiB;
      Llama-3.1-8B (8 KV heads) 1k 4 MiB, 8k 32 MiB, 32k 128 MiB
  GEMV weights (bf16): 1B o_proj 2048x2048 8 MiB, 1B qkv 2048x3072 12 MiB, 1B down 8192x2048
      32 MiB, GLM-4 qkv 4608x4096 36 MiB, 8B qkv 6144x4096 48 MiB, 8B down 4096x14336 112 MiB
"""

import pytest

SIZES_MIB = (4, 8, 12, 32, 36, 48, 112, 128, 1024)


@pytest.mark.parametrize("mib", SIZES_MIB, ids=[f"{m}MiB" for m in SIZES_MIB])
def test_read_floor(benchmark, bandwidth, mib):
    from common import copies_for, read_only_sum, record

    nbytes = mib * 2**20
    benchmark.group = f"read-only sum {mib} MiB"
    timer = read_only_sum(nbytes, copies_for(nbytes))
    record(benchmark, timer, impl="read_only_sum", bandwidth=bandwidth, bytes_moved=nbytes, mib=mib)
