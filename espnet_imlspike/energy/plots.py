"""Figures of the energy report: firing-rate distributions (paper Fig. 3) and
attention maps across depth (paper Fig. 4). PNG via matplotlib (Agg backend)."""

from pathlib import Path
from typing import Dict, List

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_firing_rates(layers: Dict, path: Path) -> None:
    """Per-neuron firing rates of every neuron layer, in depth order (Fig. 3).

    Args:
        layers: name -> LayerFiring (from FiringRateRecorder).
        path: PNG to write.
    """
    plt = _pyplot()
    names = list(layers)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, len(names) * 0.35), 8))
    rates = [layers[n].per_neuron_rate().numpy() for n in names]
    top.boxplot(rates, showfliers=False)
    top.set_ylabel("firing rate (spikes / neuron / timestep)")
    top.set_xticks(range(1, len(names) + 1))
    top.set_xticklabels([n.replace("encoders.", "") for n in names], rotation=90, fontsize=6)
    top.set_title("Per-neuron firing rate distribution by layer")
    dead = [float((r < 1e-3).mean()) for r in rates]
    bottom.bar(range(len(names)), dead)
    bottom.set_ylabel("fraction of silent neurons (rate < 0.001)")
    bottom.set_xticks(range(len(names)))
    bottom.set_xticklabels([n.replace("encoders.", "") for n in names], rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attention_maps(maps: Dict[str, torch.Tensor], path: Path, max_heads: int = 4) -> None:
    """Attention maps of the first utterance at shallow, middle and deep layers (Fig. 4)."""
    plt = _pyplot()
    names: List[str] = list(maps)
    if not names:
        return
    picked = sorted({0, len(names) // 2, len(names) - 1})
    heads = min(max_heads, maps[names[0]].size(1))
    fig, axes = plt.subplots(len(picked), heads, figsize=(3 * heads, 3 * len(picked)),
                             squeeze=False)
    for row, index in enumerate(picked):
        weights = maps[names[index]][0]
        for head in range(heads):
            ax = axes[row][head]
            ax.imshow(weights[head].float().numpy(), cmap="viridis", aspect="auto")
            ax.set_title(f"layer {index + 1}, head {head + 1}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
