"""Energy per utterance from firing rates and FLOPs (paper Eq. 16-17), and its tables.

``E_ANN = FLOPs x E_MAC`` for every layer of the ANN Transformer; for the spiking model
``E_SNN = T x R_l x FLOPs x E_AC`` for a layer fed by the spikes of neuron layer l, and
``FLOPs x E_MAC`` for a layer whose input is real-valued. The constants default to
4.6 pJ per MAC and 0.9 pJ per AC, the usual 45 nm figures: the paper's text says nJ,
but its tables (e.g. 10.39 mJ for the 30.35M Transformer on AiShell) only agree with pJ.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from espnet_imlspike.energy.ops import LayerCost
from espnet_imlspike.errors import InputError

PJ_PER_MJ = 1e9


@dataclass
class EnergyConstants:
    """Energy per operation in picojoules."""

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9


def layer_energy_pj(
    cost: LayerCost, rates: Dict[str, float], timesteps: int, constants: EnergyConstants
) -> float:
    """Energy of one layer for one utterance (pJ)."""
    if cost.source is None:
        return cost.flops * constants.e_mac_pj
    if cost.source not in rates:
        raise KeyError(f"no firing rate recorded for {cost.source} (feeds {cost.name})")
    return timesteps * rates[cost.source] * cost.flops * constants.e_ac_pj


def model_energy(
    utterance_costs: Sequence[List[LayerCost]],
    rates: Dict[str, float],
    timesteps: int,
    constants: EnergyConstants,
) -> Dict:
    """Mean energy per utterance, in total and per layer.

    Args:
        utterance_costs: For each utterance, its layer costs (same layers each time).
        rates: Firing rate R_l per neuron layer name (empty for an ANN).
        timesteps: T (1 for an ANN).
        constants: Energy per operation.

    Returns:
        {"energy_mj": mean total, "layers": [{name, flops, source, rate, energy_mj}]}
    """
    if not utterance_costs:
        raise InputError("no utterances to report on")
    count = len(utterance_costs)
    layers = []
    for index, first in enumerate(utterance_costs[0]):
        flops = sum(costs[index].flops for costs in utterance_costs) / count
        energy = sum(
            layer_energy_pj(costs[index], rates, timesteps, constants)
            for costs in utterance_costs
        ) / count
        layers.append(
            {
                "name": first.name,
                "flops": flops,
                "source": first.source,
                "rate": rates.get(first.source) if first.source else None,
                "operation": "MAC" if first.source is None else "AC",
                "energy_mj": energy / PJ_PER_MJ,
            }
        )
    return {"energy_mj": sum(l["energy_mj"] for l in layers), "layers": layers}


def markdown_summary(models: List[Dict], baseline: Optional[Dict] = None) -> str:
    """The paper's Table I-IV layout with the energy twice, labelled: encoder blocks only
    (the convolutional front excluded, the paper's apparent convention) and with the
    front included; savings relative to ``baseline`` (default: the first model)."""
    baseline = baseline or models[0]
    lines = [
        "| Model | SNN | Parameters | Timestep | Energy, blocks only (mJ) | "
        "Saving, blocks only | Energy, with conv front (mJ) | Saving, with conv front |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def saving(model, key):
        return f"x{baseline[key] / model[key]:.2f}" if model[key] else "inf"

    for m in models:
        lines.append(
            f"| {m['name']} | {'yes' if m['snn'] else 'no'} | "
            f"{m['parameters'] / 1e6:.2f}M | {m['timesteps']} | "
            f"{m['energy_blocks_mj']:.4g} | {saving(m, 'energy_blocks_mj')} | "
            f"{m['energy_with_front_mj']:.4g} | {saving(m, 'energy_with_front_mj')} |"
        )
    return "\n".join(lines)


def markdown_layers(model: Dict, measured: Optional[Dict[str, int]] = None) -> str:
    """Per-layer table; ``measured`` adds the deploy form's counted accumulates."""
    head = "| Layer | Op | FLOPs | Input rate R_l | Energy (mJ) |"
    rule = "|---|---|---|---|---|"
    if measured is not None:
        head += " Estimated ACs (all utterances) | Counted ACs (spike trains) |"
        rule += "---|---|"
    lines = [head, rule]
    for layer in model["layers"]:
        rate = "" if layer["rate"] is None else f"{layer['rate']:.4f}"
        row = (
            f"| {layer['name']} | {layer['operation']} | {layer['flops']:.4g} | {rate} | "
            f"{layer['energy_mj']:.4g} |"
        )
        if measured is not None:
            estimate = layer.get("estimated_ac")
            got = measured.get(layer["name"])
            row += f" {'' if estimate is None else f'{estimate:.6g}'} |"
            row += f" {'' if got is None else got} |"
        lines.append(row)
        bias = f"{layer['name'][:-len('.x_wqk')]}.bias_terms"
        if measured is not None and layer["name"].endswith(".x_wqk") and bias in measured:
            lines.append(f"| {bias} (2H per input spike) | AC | | | | 0 (not in FLOPs) | "
                         f"{measured[bias]} |")
    return "\n".join(lines)


def write_report(report: Dict, output_dir: Path, markdown: str) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "energy.json").write_text(json.dumps(report, indent=2))
    (output_dir / "energy.md").write_text(markdown)
