"""Options every kind's ``localize`` receives (one object, so new variants add a field, not a parameter)."""
from __future__ import annotations

from dataclasses import dataclass

BOXFILTER = "boxfilter"  # banded MatMul or CumSum, chosen per run (subgraphs.MATMUL_MAX_SPAN)


@dataclass(frozen=True)
class RewriteOptions:
    box_filter: str = "auto"     # subgraphs.BOX_FILTERS

    @property
    def boxfilter_implementation(self) -> str:
        """The report's implementation name of a box-filter subgraph."""
        return BOXFILTER if self.box_filter == "auto" else f"{BOXFILTER}-{self.box_filter}"
