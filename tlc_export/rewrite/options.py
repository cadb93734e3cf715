"""Options every kind's ``localize`` receives (one object, so new variants add a field, not a parameter)."""
from __future__ import annotations

from dataclasses import dataclass, field

BOXFILTER = "boxfilter"  # banded MatMul or CumSum, chosen per run (subgraphs.MATMUL_MAX_SPAN)
FAST_BOXFILTER = "fast-boxfilter"  # the same on a subsampled map (rewrite.fast)


@dataclass(frozen=True)
class RewriteOptions:
    box_filter: str = "auto"     # subgraphs.BOX_FILTERS
    # fast mode (official fast_imp): op name -> its subsampling cap (max_r1, max_r2); ops absent are exact
    max_r: dict[str, tuple[int, int]] = field(default_factory=dict)

    def fast_cap(self, op_name: str) -> tuple[int, int] | None:
        """The fast-mode cap of an op, or None when it is rewritten in exact TLC."""
        return self.max_r.get(op_name)

    def implementation(self, op_name: str) -> str:
        """The report's implementation name of a local-mean subgraph of op ``op_name``."""
        if self.fast_cap(op_name) is None:
            return self.boxfilter_implementation
        return FAST_BOXFILTER if self.box_filter == "auto" else f"{FAST_BOXFILTER}-{self.box_filter}"

    @property
    def boxfilter_implementation(self) -> str:
        """The report's implementation name of a box-filter subgraph."""
        return BOXFILTER if self.box_filter == "auto" else f"{BOXFILTER}-{self.box_filter}"
