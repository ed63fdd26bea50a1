"""The energy-report stage: run a trained model over utterances, record firing rates,
price them (:mod:`.build`), and write JSON, Markdown and PNG outputs."""

from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch

from espnet_imlspike.energy.build import build_report  # noqa: F401 (the stage's API)
from espnet_imlspike.energy.hooks import FiringRateRecorder
from espnet_imlspike.energy.report import write_report
from espnet_imlspike.errors import InputError

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


def write_outputs(report: Dict, text: str, panels, output_dir: Path,
                  plots: bool = True) -> List[Path]:
    """energy.json, energy.md, firing_rates.npz (per-neuron rates of every neuron layer;
    a compared model's as ``compare<i>.<layer>``) and (optionally) firing_rates.png and
    attention_maps.png, one panel (row) per model.

    Args:
        panels: [(label, FiringRateRecorder)], the main model first; or one recorder.
    """
    import numpy as np

    from espnet_imlspike.energy.plots import plot_attention_maps, plot_firing_rates

    if isinstance(panels, FiringRateRecorder):
        panels = [("model", panels)]
    write_report(report, output_dir, text)
    rates = {}
    for index, (_, recorder) in enumerate(panels):
        prefix = f"compare{index}." if index else ""
        rates.update({prefix + name: layer.per_neuron_rate().numpy()
                      for name, layer in recorder.layers.items()})
    np.savez(output_dir / "firing_rates.npz", **rates)
    written = [output_dir / "energy.json", output_dir / "energy.md",
               output_dir / "firing_rates.npz"]
    if plots:
        plot_firing_rates([(label, r.layers) for label, r in panels],
                          output_dir / "firing_rates.png")
        written.append(output_dir / "firing_rates.png")
        maps = [(label, r.attention) for label, r in panels if r.attention]
        if maps:
            plot_attention_maps(maps, output_dir / "attention_maps.png")
            written.append(output_dir / "attention_maps.png")
    return written
