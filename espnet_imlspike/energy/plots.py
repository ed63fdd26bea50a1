"""Figures of the energy report, drawn for several models side by side, at paper size.

* :func:`plot_firing_rates` (paper Fig. 3): one panel per model (firing mechanism);
  rows are the neuron layers in depth order, the x axis the neuron index, the colour the
  firing rate (one shared scale); silent neurons (rate < 0.001) are marked in red and
  each row's silent fraction is drawn beside it.
* :func:`plot_attention_maps` (paper Fig. 4): the first, middle and last attention
  layers of each model (rows) and its first heads (columns), one shared colour scale
  with a colorbar, query and key frames on the axes.
"""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

SILENT = 1e-3
WIDTH_IN = 7.2  # a two-column paper page


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7})
    return plt


def _as_models(models) -> List[Tuple[str, Dict]]:
    return [("model", models)] if isinstance(models, dict) else list(models)


def _row_labels(names: Sequence[str]) -> Tuple[List[int], List[str]]:
    """Ticks at the first row of each block ("block i"), or every row if not blocks."""
    ticks, labels, seen = [], [], set()
    for row, name in enumerate(names):
        parts = name.split(".")
        if parts[0] == "encoders" and len(parts) > 1 and parts[1].isdigit():
            if parts[1] not in seen:
                seen.add(parts[1])
                ticks.append(row)
                labels.append(f"block {int(parts[1]) + 1}")
        else:
            ticks.append(row)
            labels.append(name)
    return ticks, labels


def plot_firing_rates(models: Union[Dict, Sequence[Tuple[str, Dict]]], path: Path) -> None:
    """Per-neuron firing rates across depth, one panel per model (Fig. 3).

    Args:
        models: [(label, {neuron layer name: LayerFiring})], or one such dict.
        path: PNG to write.
    """
    plt = _pyplot()
    models = _as_models(models)
    grids, silent = [], []
    for _, layers in models:
        rates = [layers[n].per_neuron_rate().numpy() for n in layers]
        grid = np.full((len(rates), max(len(r) for r in rates)), np.nan)
        for row, r in enumerate(rates):
            grid[row, :len(r)] = r
        grids.append(grid)
        silent.append([float((r < SILENT).mean()) for r in rates])
    vmax = max(float(np.nanmax(g)) for g in grids) or 1.0
    rows = max(g.shape[0] for g in grids)
    height = min(9.0, 2.2 + 0.045 * rows)
    fig = plt.figure(figsize=(WIDTH_IN, height), dpi=300)
    outer = fig.add_gridspec(1, len(models), wspace=0.45, left=0.08, right=0.9,
                             top=1 - 0.55 / height, bottom=0.45 / height)
    cmap = plt.get_cmap("viridis").with_extremes(under="red", bad="#e6e6e6")
    image = None
    for index, ((label, layers), grid, dead) in enumerate(zip(models, grids, silent)):
        inner = outer[index].subgridspec(1, 2, width_ratios=(4, 1), wspace=0.08)
        ax, side = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=SILENT, vmax=vmax,
                          interpolation="nearest")
        ticks, labels = _row_labels(list(layers))
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels, fontsize=5 if len(ticks) > 12 else 6)
        ax.set_xlabel("neuron index")
        ax.set_title(f"({chr(97 + index)}) {label}: {float(np.mean(dead)):.0%} silent",
                     loc="left", fontsize=7)
        side.barh(np.arange(len(dead)), dead, color="red", height=0.8)
        side.set_ylim(len(dead) - 0.5, -0.5)
        side.set_xlim(0, 1)
        side.set_yticks([])
        side.set_xticks([0, 1])
        side.set_xlabel("silent\nfraction", fontsize=6)
    bar = fig.colorbar(image, cax=fig.add_axes([0.92, 0.2, 0.012, 0.6]), extend="min")
    bar.set_label("firing rate (spikes / neuron / timestep)", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle("Per-neuron firing rates across depth. Rows: the neuron layers of each block "
                 "in order; red: silent (rate < 0.001); grey: beyond the layer's width",
                 fontsize=7, y=1 - 0.12 / height)
    fig.savefig(path, dpi=300, bbox_inches="tight")
    plt.close(fig)


def picked_layers(names: Sequence[str]) -> List[int]:
    """Indices of the first, middle and last attention layers (paper: 1, 6, 12)."""
    return sorted({0, (len(names) - 1) // 2, len(names) - 1})


def plot_attention_maps(models: Union[Dict, Sequence[Tuple[str, Dict]]], path: Path,
                        max_heads: int = 4) -> None:
    """Attention maps of the first utterance, first/middle/last layer per model (Fig. 4).

    Args:
        models: [(label, {attention module name: weights (N, H, L, L)})], or one dict.
        path: PNG to write.
        max_heads: Heads shown per layer.
    """
    plt = _pyplot()
    models = [(label, maps) for label, maps in _as_models(models) if maps]
    if not models:
        return
    panels = []  # (model label, layer number, weights (H, L, L))
    for label, maps in models:
        names = list(maps)
        for index in picked_layers(names):
            panels.append((label, index + 1, maps[names[index]][0].float().numpy()))
    heads = min(max_heads, min(p[2].shape[0] for p in panels))
    values = np.concatenate([p[2][:heads].ravel() for p in panels])
    top = float(np.percentile(np.abs(values), 99.5)) or 1.0
    signed = bool((values < -1e-6 * top).any())
    cmap, vmin = ("RdBu_r", -top) if signed else ("viridis", 0.0)
    width = min(WIDTH_IN, 1.2 + 1.5 * heads)
    fig, axes = plt.subplots(len(panels), heads, squeeze=False, dpi=300,
                             figsize=(width, 0.4 + 1.55 * len(panels)))
    for row, (label, layer, weights) in enumerate(panels):
        for head in range(heads):
            ax = axes[row][head]
            image = ax.imshow(weights[head], cmap=cmap, vmin=vmin, vmax=top,
                              interpolation="nearest", aspect="equal")
            ax.set_title(f"layer {layer}, head {head + 1}", fontsize=6, pad=2)
            ax.tick_params(labelsize=5, length=2)
            if head == 0:
                ax.set_ylabel(f"{label}\nquery frame", fontsize=6)
            if row == len(panels) - 1:
                ax.set_xlabel("key frame", fontsize=6)
    fig.subplots_adjust(right=0.86, hspace=0.45, wspace=0.3)
    bar = fig.colorbar(image, cax=fig.add_axes([0.89, 0.15, 0.015, 0.7]),
                       extend="both" if signed else "max")
    bar.set_label("attention weight (one scale for all maps, clipped at the 99.5th "
                  "percentile of |w|)", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=300, bbox_inches="tight")
    plt.close(fig)

