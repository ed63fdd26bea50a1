"""Price one measured model: Eq. 16-17 (front excluded and included), the counted
accumulates beside the estimate (attention parts included), and the memory-aware
model of :mod:`.memory_model`; returns the report dict and its Markdown."""

from typing import Dict, List, Optional, Sequence, Tuple

from espnet_imlspike.energy.attention_parts import attention_parts, gap_text, split_measured
from espnet_imlspike.energy.flops import encoder_costs
from espnet_imlspike.energy.memory_model import (
    AccessCosts,
    memory_energy,
    neuron_stats,
    priceable,
    summary_rows,
    twin_bits,
)
from espnet_imlspike.energy.report import (
    EnergyConstants,
    markdown_layers,
    markdown_summary,
    model_energy,
)

SEMANTICS_NOTE = (
    "**Counting a multi-level spike.** A neuron's output s in {0..T} is the spike count "
    "of T binary steps. Eq. 17 (T x R_l x FLOPs) is count-weighted: s ACs per synapse, "
    "which equals the per-event count after binary expansion (s events of one AC each; "
    "what the spike-train execution counts). The memory-aware model separates the two: "
    "`spike_train` charges every binary event its own weight read and membrane "
    "read/write; `multi_level` is the layer's ceil(log2(T+1))-bit quantised twin "
    "(Yan et al., arXiv 2409.08290): one event per non-zero count, a multiply-accumulate "
    "per synapse, one weight read and one membrane read/write."
)


def in_front(cost) -> bool:
    return cost.name.startswith("embed.")


def price_model(encoder, recorder, lengths, fused_qk: bool = True,
                constants: EnergyConstants = EnergyConstants(),
                access: Optional[AccessCosts] = AccessCosts(),
                seconds: Optional[Sequence[float]] = None) -> Dict:
    """Eq. 16-17 and the memory model for the spiking encoder and its ANN twin of the
    same size, blocks only and with the convolutional front."""
    rates = {name: layer.rate for name, layer in recorder.layers.items()}
    timesteps = encoder.timesteps
    snn_costs = [encoder_costs(encoder, i, o, fused_qk=fused_qk) for i, o in lengths]
    ann_costs = [encoder_costs(encoder, i, o, ann=True) for i, o in lengths]

    def pick(costs, front: bool):
        return [[c for c in utt if front or not in_front(c)] for utt in costs]

    out = {}
    for key, front in (("blocks", False), ("with_front", True)):
        out[f"snn_{key}"] = model_energy(pick(snn_costs, front), rates, timesteps, constants)
        out[f"ann_{key}"] = model_energy(pick(ann_costs, front), {}, 1, constants)
    out["front_mj"] = out["ann_with_front"]["energy_mj"] - out["ann_blocks"]["energy_mj"]
    for layer in out["snn_blocks"]["layers"] + out["snn_with_front"]["layers"]:
        if layer["operation"] == "AC":
            layer["estimated_ac"] = timesteps * layer["rate"] * layer["flops"] * len(lengths)
    if access is not None and all(priceable(u) for u in snn_costs + ann_costs):
        stats = neuron_stats(recorder)
        multistep = any(l.multistep for l in recorder.layers.values())
        memory = {}
        for key, front in (("blocks", False), ("with_front", True)):
            runs = [("ann", pick(ann_costs, front)), ("spike_train", pick(snn_costs, front))]
            if not multistep:
                runs.append(("multi_level", pick(snn_costs, front)))
            for semantics, costs in runs:
                memory[f"{semantics}_{key}"] = memory_energy(costs, stats, semantics,
                                                             access, seconds)
        out["memory"] = memory
    return out


def model_entries(priced: Dict, parameters: int, timesteps: int, model_name: str,
                  include_front: bool) -> List[Dict]:
    headline = "with_front" if include_front else "blocks"
    entries = []
    for prefix, name, snn, steps in (("ann", "Transformer (ANN, same size)", False, 1),
                                     ("snn", model_name, True, timesteps)):
        entries.append({
            "name": name, "snn": snn, "parameters": parameters, "timesteps": steps,
            "energy_mj": priced[f"{prefix}_{headline}"]["energy_mj"],
            "energy_blocks_mj": priced[f"{prefix}_blocks"]["energy_mj"],
            "energy_with_front_mj": priced[f"{prefix}_with_front"]["energy_mj"],
            "layers": priced[f"{prefix}_{headline}"]["layers"],
        })
    return entries


def memory_section(priced: Dict, model_name: str, timesteps: int,
                   access: AccessCosts) -> Tuple[str, Dict]:
    memory = priced.get("memory")
    if not memory:
        return ("## Memory-aware energy\n\nNot available: a layer of this encoder does "
                "not describe its shape (fan-in, fan-out, buffers)."), {}
    names = {"ann": "Transformer (ANN, same size)", "spike_train": model_name,
             "multi_level": f"{model_name}: {twin_bits(timesteps)}-bit quantised twin"}
    rows = [(names[s], memory[f"{s}_blocks"], memory[f"{s}_with_front"])
            for s in ("ann", "spike_train", "multi_level") if f"{s}_blocks" in memory]
    text = "\n\n".join([
        "## Memory-aware energy (Lemaire et al., arXiv 2210.13107)",
        "Arithmetic, address computation and SRAM accesses (weights, membrane "
        "potentials and accumulators, IMLS threshold statistics, input/output messages), "
        f"mJ per utterance by part; add {access.e_add_pj} pJ, multiply "
        f"{access.e_mul_pj} pJ, SRAM pJ/byte {list(access.sram_pj_per_byte)} "
        f"(bytes, pJ) interpolated in the buffer size, {access.word_bytes}-byte words, "
        f"{access.fifo_words}-word spike FIFOs (Horowitz, 45 nm; as SpikingJelly 2.0's "
        "`estimate_lemaire_energy`). LayerNorm, residual additions and softmax are left "
        "out of both models, as in Eq. 16-17.",
        summary_rows(rows),
        SEMANTICS_NOTE,
    ])
    return text, memory


def build_report(
    encoder, recorder, lengths: List[Tuple[int, int]], parameters: int,
    constants: EnergyConstants = EnergyConstants(), fused_qk: bool = True,
    model_name: str = "iml_spikeformer", measured: Optional[Dict[str, Dict[str, int]]] = None,
    include_front: bool = False, seconds: Optional[Sequence[float]] = None,
    access: AccessCosts = AccessCosts(),
) -> Tuple[Dict, str]:
    """Price the recorded model and an ANN Transformer of the same sizes.

    Args:
        encoder: The spiking encoder that was measured.
        recorder: Its firing statistics (a FiringRateRecorder).
        lengths: (input frames, output frames) per utterance.
        parameters: Parameter count of the whole model (equal for the ANN baseline).
        constants: Energy per MAC / AC in pJ (Eq. 16-17).
        fused_qk: Count HD-RepSSA in its fused inference form.
        model_name: Name of the spiking model in the tables.
        measured: The deploy form's op counter (per layer), if it ran.
        include_front: Which convention ``energy_mj`` (the headline) follows; both are
            always reported, labelled.
        seconds: Audio seconds per utterance (for energy per second), if known.
        access: Costs of the memory-aware model.

    Returns:
        (report dict, Markdown text)
    """
    priced = price_model(encoder, recorder, lengths, fused_qk, constants, access, seconds)
    timesteps = encoder.timesteps
    models = model_entries(priced, parameters, timesteps, model_name, include_front)
    firing = {
        name: {"rate": layer.rate, "spikes": layer.spikes,
               "neuron_steps": layer.neuron_steps,
               "nonzero_fraction": layer.nonzero / max(1, layer.outputs),
               "silent_fraction": float((layer.per_neuron_rate() < 1e-3).double().mean())}
        for name, layer in recorder.layers.items()
    }
    report = {
        "constants_pj": {"mac": constants.e_mac_pj, "ac": constants.e_ac_pj},
        "units_note": "Energy per utterance in mJ; the paper's text says nJ per op but its "
                      "tables only agree with pJ, used here.",
        "attention_form": "fused W_QK (inference)" if fused_qk else "unfused (training)",
        "front_included": include_front,
        "front_energy_mj": priced["front_mj"],
        "utterances": len(lengths),
        "mean_input_frames": sum(i for i, _ in lengths) / len(lengths),
        "mean_encoder_frames": sum(o for _, o in lengths) / len(lengths),
        "models": models,
        "firing": firing,
        "activation_sparsity": recorder.sparsity_per_call(),
    }
    if seconds:
        report["audio_seconds"] = float(sum(seconds))
    blocks_layers = priced["snn_blocks"]["layers"]
    split = None
    if measured:
        counted = {name: kinds["ac"] for name, kinds in measured.items() if kinds.get("ac")}
        report["measured_ops"] = {name: dict(kinds) for name, kinds in measured.items()}
        split = split_measured(counted, attention_parts(encoder, recorder))
        report["measured_ac"] = split
        estimated = sum(l.get("estimated_ac", 0) for l in blocks_layers)
        report["accumulates"] = {"estimated": estimated,
                                 "measured": sum(v for k, v in split.items()
                                                 if not k.startswith("embed"))}
    memory_text, memory = memory_section(priced, model_name, timesteps, access)
    if memory:
        report["memory_model"] = {
            "costs": {"e_add_pj": access.e_add_pj, "e_mul_pj": access.e_mul_pj,
                      "sram_pj_per_byte": [list(p) for p in access.sram_pj_per_byte],
                      "word_bytes": access.word_bytes, "fifo_words": access.fifo_words},
            "twin_bits": twin_bits(timesteps), "results": memory,
            "counting_semantics": SEMANTICS_NOTE}
    headline = "blocks only" if not include_front else "with the front"
    text = "\n\n".join(filter(None, [
        "# Energy report",
        f"{len(lengths)} utterances, mean {report['mean_input_frames']:.0f} input frames "
        f"({report['mean_encoder_frames']:.0f} after subsampling)"
        + (f", {report['audio_seconds']:.1f} s of audio" if seconds else "")
        + f". Eq. 16-17 with E_MAC = {constants.e_mac_pj} pJ, E_AC = {constants.e_ac_pj} "
        f"pJ; attention counted in its {report['attention_form']} form. Energy per "
        f"utterance, encoder blocks only (convolutional front excluded) and with the front "
        f"(real-valued input: {priced['front_mj']:.4g} mJ of MACs in both models); the "
        f"headline energy_mj in energy.json is {headline}.",
        markdown_summary(models),
        f"## Per layer: {model_name} (encoder blocks)",
        markdown_layers({"layers": blocks_layers}, split),
        gap_text(blocks_layers, split) if split else "",
        memory_text,
    ])).rstrip() + "\n"
    return report, text
