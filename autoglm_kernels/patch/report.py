"""PatchReport: what patch_model changed in one model, and what it left stock and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Row order of the printed table.
KINDS = ("decoder_layer", "attention", "rope", "rotary_emb", "mlp", "final_norm", "lm_head", "memory_pool")


@dataclass
class PatchReport:
    """Per module kind: how many modules got a fused forward, how many stayed stock, and why.

    `patched[kind]` counts patched modules; `stock[kind]` maps a reason to how many modules of
    that kind were left stock for it. `notes` holds model-wide remarks (e.g. an unsupported
    architecture). print(report) shows a table.
    """

    model_type: str
    model_class: str = ""
    device: str = ""
    dtype: str = ""
    patched: Counter = field(default_factory=Counter)
    stock: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def add_patched(self, kind: str, n: int = 1) -> None:
        self.patched[kind] += n

    def add_stock(self, kind: str, reason: str, n: int = 1) -> None:
        self.stock.setdefault(kind, Counter())[reason] += n

    @property
    def supported(self) -> bool:
        """True when anything at all was patched."""
        return sum(self.patched.values()) > 0

    def num_patched(self, kind: str) -> int:
        return self.patched.get(kind, 0)

    def num_stock(self, kind: str) -> int:
        return sum(self.stock.get(kind, {}).values())

    def reasons(self, kind: str | None = None) -> list[str]:
        """Every reason a module (of `kind`, or any) was left stock."""
        kinds = [kind] if kind else list(self.stock)
        return [r for k in kinds for r in self.stock.get(k, {})]

    def __str__(self) -> str:
        kinds = [k for k in KINDS if k in self.patched or k in self.stock]
        kinds += [k for k in list(self.patched) + list(self.stock) if k not in kinds]
        head = f"autoglm_kernels patch report: {self.model_class or 'model'} (model_type={self.model_type!r}"
        head += f", {self.device}, {self.dtype})" if self.device else ")"
        rows = [("module", "patched", "stock", "why stock")]
        for k in kinds:
            reasons = self.stock.get(k, {})
            why = "; ".join(f"{r} (x{n})" if n > 1 else r for r, n in reasons.items()) or "-"
            rows.append((k, str(self.patched.get(k, 0)), str(self.num_stock(k)), why))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [head]
        for i, r in enumerate(rows):
            lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
            if i == 0:
                lines.append("  " + "-" * (sum(widths) + 4 + 2 + len("why stock")))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__
