"""The energy-report stage: run a trained model over utterances, record firing rates,
count FLOPs per utterance, price them, and write JSON, Markdown and PNG outputs."""

from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

from espnet_imlspike.energy.flops import encoder_costs
from espnet_imlspike.errors import InputError
from espnet_imlspike.energy.hooks import FiringRateRecorder
from espnet_imlspike.energy.report import (
    EnergyConstants,
    markdown_layers,
    markdown_summary,
    model_energy,
    write_report,
)

Utterance = Tuple[str, torch.Tensor]  # key, waveform or features (samples, ...)


class Measurement(NamedTuple):
    recorder: FiringRateRecorder
    lengths: List[Tuple[int, int]]  # (encoder input frames, output frames) per utterance
    skipped: List[str]  # utterances too short for the encoder's subsampling


def measure(
    model: torch.nn.Module,
    encoder: torch.nn.Module,
    utterances: Iterable[Utterance],
    run: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], None],
    progress: bool = True,
    total: Optional[int] = None,
) -> Measurement:
    """Run ``run(model, x, lengths)`` per utterance with hooks on ``encoder``.

    An utterance too short for the subsampling (ESPnet's ``TooShortUttError``, which
    ``asr_inference`` turns into an empty hypothesis) is skipped and listed.
    """
    from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError
    from tqdm import tqdm

    lengths: List[Tuple[int, int]] = []

    def frames_hook(module, inputs, output):
        # ASR encoders: (xs, ilens) -> (out, olens, None); SPK: xs -> (B, C, L')
        in_frames = inputs[0].size(1)
        out_frames = int(output[1][0]) if isinstance(output, tuple) else output.size(-1)
        lengths.append((in_frames, out_frames))

    recorder = FiringRateRecorder(encoder, attention_maps=True)
    handle = encoder.register_forward_hook(frames_hook)
    model.eval()
    skipped: List[str] = []
    try:
        with recorder, torch.no_grad():
            for key, x in tqdm(utterances, total=total, disable=not progress,
                               desc="energy report", unit="utt"):
                x = x.unsqueeze(0)
                try:
                    run(model, x, torch.tensor([x.size(1)]))
                except TooShortUttError:
                    skipped.append(key)
    finally:
        handle.remove()
    if not lengths:
        raise InputError(
            "no utterances to report on ("
            + (f"all {len(skipped)} too short for the subsampling)" if skipped
               else "empty data set)")
        )
    return Measurement(recorder, lengths, skipped)


def build_report(
    encoder: torch.nn.Module,
    recorder: FiringRateRecorder,
    lengths: List[Tuple[int, int]],
    parameters: int,
    constants: EnergyConstants = EnergyConstants(),
    fused_qk: bool = True,
    model_name: str = "iml_spikeformer",
    measured: Optional[Dict[str, Dict[str, int]]] = None,
    include_front: bool = False,
) -> Tuple[Dict, str]:
    """Price the recorded model and an ANN Transformer of the same sizes.

    Args:
        encoder: The spiking encoder that was measured.
        recorder: Its firing statistics.
        lengths: (input frames, output frames) per utterance.
        parameters: Parameter count of the whole model (equal for the ANN baseline).
        constants: Energy per MAC / AC in pJ.
        fused_qk: Count HD-RepSSA in its fused inference form.
        model_name: Name of the spiking model in the tables.
        measured: The deploy form's op counter (per layer), if it ran.
        include_front: Count the convolutional subsampling front (MACs in both models)
            in the totals. Off by default: the paper's tables only work out without it
            (see README); its energy is always reported separately.

    Returns:
        (report dict, Markdown text)
    """
    rates = {name: layer.rate for name, layer in recorder.layers.items()}
    timesteps = encoder.timesteps

    def costs(ann: bool, keep):
        return [[c for c in encoder_costs(encoder, i, o, ann=ann, fused_qk=fused_qk) if keep(c)]
                for i, o in lengths]

    def in_front(cost):
        return cost.name.startswith("embed.")

    def counted(cost):
        return include_front or not in_front(cost)

    # The convolutional front sees real-valued features: identical MACs in both models.
    front_energy = model_energy(costs(True, in_front), {}, 1, constants)["energy_mj"]
    snn = model_energy(costs(False, counted), rates, timesteps, constants)
    ann = model_energy(costs(True, counted), {}, 1, constants)
    for layer in snn["layers"]:
        if layer["operation"] == "AC":
            layer["estimated_ac"] = timesteps * layer["rate"] * layer["flops"] * len(lengths)
    models = [
        {"name": "Transformer (ANN, same size)", "snn": False, "parameters": parameters,
         "timesteps": 1, **ann},
        {"name": model_name, "snn": True, "parameters": parameters,
         "timesteps": timesteps, **snn},
    ]
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
        "front_energy_mj": front_energy,
        "utterances": len(lengths),
        "mean_input_frames": sum(i for i, _ in lengths) / len(lengths),
        "mean_encoder_frames": sum(o for _, o in lengths) / len(lengths),
        "models": models,
        "firing": firing,
    }
    measured_ac = None
    if measured:
        measured_ac = {name: kinds.get("ac", 0) for name, kinds in measured.items()
                       if kinds.get("ac")}
        report["measured_ops"] = {name: dict(kinds) for name, kinds in measured.items()}
    totals = ""
    if measured_ac:
        estimated = sum(l.get("estimated_ac", 0) for l in snn["layers"])
        counted = sum(measured_ac.values())
        report["accumulates"] = {"estimated": estimated, "measured": counted}
        totals = (f"Accumulates over all utterances: estimated from rates "
                  f"(T x R_l x FLOPs) {estimated:.6g}, counted in spike-train execution "
                  f"{counted} (the count also includes the fused bias terms, 2H per input "
                  "spike, which FLOPs leave out).")
    text = "\n\n".join([
        "# Energy report",
        f"{len(lengths)} utterances, mean {report['mean_input_frames']:.0f} input frames "
        f"({report['mean_encoder_frames']:.0f} after subsampling); encoder "
        f"{'with' if include_front else 'blocks, without'} the convolutional front "
        f"(front: {front_energy:.4g} mJ of MACs in both models); "
        f"E_MAC = {constants.e_mac_pj} pJ, E_AC = {constants.e_ac_pj} pJ; attention counted "
        f"in its {report['attention_form']} form.",
        markdown_summary(models, ann["energy_mj"]),
        f"## Per layer: {model_name}",
        markdown_layers(models[1], measured_ac),
        totals,
    ]).rstrip() + "\n"
    return report, text


def write_outputs(report: Dict, text: str, recorder: FiringRateRecorder,
                  output_dir: Path, plots: bool = True) -> List[Path]:
    """energy.json, energy.md, firing_rates.npz (per-neuron rates of every neuron layer)
    and (optionally) firing_rates.png, attention_maps.png."""
    import numpy as np

    from espnet_imlspike.energy.plots import plot_attention_maps, plot_firing_rates

    write_report(report, output_dir, text)
    np.savez(output_dir / "firing_rates.npz",
             **{name: layer.per_neuron_rate().numpy() for name, layer in recorder.layers.items()})
    written = [output_dir / "energy.json", output_dir / "energy.md",
               output_dir / "firing_rates.npz"]
    if plots:
        plot_firing_rates(recorder.layers, output_dir / "firing_rates.png")
        written.append(output_dir / "firing_rates.png")
        if recorder.attention:
            plot_attention_maps(recorder.attention, output_dir / "attention_maps.png")
            written.append(output_dir / "attention_maps.png")
    return written
