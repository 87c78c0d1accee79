"""Figures: pure functions from results/tables to plotly Figures.

dcpviz.views.chunk_layout(result, fqn)   one tensor's chunks, coloured by writer rank
dcpviz.views.rank_volume(result)         bytes per rank, mean / max / imbalance
dcpviz.views.dedup(result)               who planned / who writes replicated items
dcpviz.views.read_layout(load, fqn, rank)  a target rank's box over the saved chunks it reads
dcpviz.views.read_volume(load)           bytes read per target rank (and deserialised)
dcpviz.views.resharding(load)            target rank x writer rank (or file) heatmap
dcpviz.views.plan_series(table)          periodic saves: plan-cache hits per rank, plan changes
dcpviz.views.diff_overview(diff)         which keys differ between two checkpoints, and how
dcpviz.views.diff_regions(diff, fqn)     which regions of one tensor differ
dcpviz.views.file_layout(save_or_ckpt)   which chunks sit in which file, by writer rank
dcpviz.views.stage_volume(save)          bytes per rank, one colour per pipeline stage
dcpviz.views.expert_volume(save)         bytes of the grouped expert tensors per expert shard

rank_volume, chunk_layout and resharding take facet="stage" (one panel, legend group or block per
pipeline stage); chunk_layout also facet="expert" (writers by the experts they hold, over ep).
"""

from dcpviz.views.dedup import dedup
from dcpviz.views.diff import diff_overview, diff_regions
from dcpviz.views.files import file_layout
from dcpviz.views.layout import chunk_layout
from dcpviz.views.reads import read_layout, read_volume, resharding
from dcpviz.views.series import plan_series
from dcpviz.views.stages import expert_volume as expert_volume
from dcpviz.views.stages import stage_volume as stage_volume
from dcpviz.views.volume import rank_volume

__all__ = [
    "chunk_layout",
    "dedup",
    "diff_overview",
    "diff_regions",
    "file_layout",
    "plan_series",
    "rank_volume",
    "read_layout",
    "read_volume",
    "resharding",
]
