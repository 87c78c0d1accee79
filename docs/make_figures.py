"""Render the README's figures to PNG (kaleido drives the system Chromium).

    .venv/bin/python docs/make_figures.py
"""

from __future__ import annotations

from pathlib import Path

from torch.distributed.checkpoint import DefaultSavePlanner

import dcpviz
import dcpviz.views as V

OUT = Path(__file__).parent / "img"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    hsdp_sc = dcpviz.Scenario(model="mlp", world_size=8, mesh=(2, 4), recipe="hsdp")
    hsdp = dcpviz.simulate_save(hsdp_sc)
    lowest = dcpviz.simulate_save(hsdp_sc, planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True))
    strided = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="tp+fsdp"))
    llama_hsdp = dcpviz.simulate_save(dcpviz.Scenario(model="llama-tiny", world_size=8, mesh=(2, 4), recipe="hsdp"))
    figures = {
        "layout_hsdp_2d.png": V.chunk_layout(llama_hsdp, "layers.0.attention.wq.weight"),
        "layout_tp_fsdp_strided.png": V.chunk_layout(strided, "layers.0.attention.wq.weight"),
        "layout_empty_shard_bias.png": V.chunk_layout(hsdp, "fc2.bias"),
        "layout_scalar.png": V.chunk_layout(hsdp, "progress.step"),
        "volume_compare.png": V.rank_volume(hsdp, compare=lowest, names=("default dedup", "dedup_save_to_lowest_rank")),
        "volume_by_module.png": V.rank_volume(strided, by="module"),
        "dedup_overview.png": V.dedup(llama_hsdp),
        "dedup_detail.png": V.dedup(hsdp, fqn="fc1.weight"),
    }
    for name, fig in figures.items():
        fig.write_image(OUT / name, width=820, scale=1)
        print("wrote", OUT / name)


if __name__ == "__main__":
    main()
