"""cProfile of 32 eager patched decode steps (patch_model(cuda_graphs=False)) of a reference model:
where the host time of the eager path goes. python scripts/profile_eager_decode.py llama3.2-1b"""
import sys, torch
from autoglm_kernels import patch_model
from autoglm_kernels.cli.bench import cprofile_listing
from autoglm_kernels.demo_model import random_model
name = sys.argv[1]
m = random_model(name)
patch_model(m, cuda_graphs=False)
ids = torch.randint(3, 1000, (1, 128), device="cuda")
kw = dict(attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
with torch.inference_mode():
    m.generate(ids, **kw); torch.cuda.synchronize()
    listing = cprofile_listing(lambda: (m.generate(ids, **kw), torch.cuda.synchronize()), lines=35)
print(listing[:9000])
