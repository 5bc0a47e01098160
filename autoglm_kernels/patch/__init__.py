"""patch_model(model): run an already-loaded transformers model's unchanged generate/forward on the
package's fused kernels; unpatch_model(model) restores it. See patcher.py (how), archs.py (which
architectures and modules), layers.py (the fused forwards), report.py (what was patched and why not).
"""

from .archs import ARCHS, ArchSpec, spec_for
from .patcher import PatchState, patch_model, state_of, unpatch_model
from .report import PatchReport

__all__ = ["patch_model", "unpatch_model", "PatchReport", "PatchState", "state_of", "ARCHS", "ArchSpec", "spec_for"]
