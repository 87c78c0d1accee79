"""Figures: pure functions from results/tables to plotly Figures.

    dcpviz.views.chunk_layout(result, fqn)   one tensor's chunks, coloured by writer rank
    dcpviz.views.rank_volume(result)         bytes per rank, mean / max / imbalance
    dcpviz.views.dedup(result)               who planned / who writes replicated items
"""

from .dedup import dedup
from .layout import chunk_layout
from .volume import rank_volume

__all__ = ["chunk_layout", "dedup", "rank_volume"]
