"""Energy report of a trained spiking ASR or speaker model over a data set.

Example::

    python -m espnet_imlspike.bin.energy_report \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.best.pth \\
        --data_dir data/test --output_dir exp/asr/energy

(or ``--spk_train_config``/``--spk_model_file`` for a speaker model; the deploy form
and NeuroBench section are ASR-only) reads ``<data_dir>/wav.scp`` (or any
``--data_path_and_name_and_type path,speech,TYPE`` that ESPnet reads), records firing
rates of every spiking neuron layer (padded frames never counted; utterances too short
for the subsampling are skipped and counted), and writes ``energy.json``, ``energy.md``
(paper-style table with the ANN Transformer of the same size as x1, energy with the
convolutional front excluded and included, a per-layer table with the counted
accumulates, a memory-aware energy model), ``firing_rates.npz``, ``firing_rates.png``
(paper Fig. 3) and ``attention_maps.png`` (Fig. 4). ``--compare CONFIG MODEL ...``
measures further models of the same task on the same data (e.g. the multi-step, MLS and
IMLS ablations) and draws them side by side.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from espnet_imlspike.bin.cli import OutputDir, add_bool, positive_int, run
from espnet_imlspike.errors import InputError

OUTPUTS = ("energy.json", "energy.md", "firing_rates.npz", "firing_rates.png",
           "attention_maps.png")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energy_report", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--asr_train_config", type=Path, help="an ASR model's config.yaml")
    parser.add_argument("--asr_model_file", type=Path)
    parser.add_argument("--spk_train_config", type=Path,
                        help="or a speaker model's config.yaml (spk_train)")
    parser.add_argument("--spk_model_file", type=Path)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data_dir", type=Path, help="Kaldi-style dir with wav.scp")
    data.add_argument("--data_path_and_name_and_type", type=str,
                      help="ESPnet style 'path,speech,type' (e.g. dump/raw/test/wav.scp,speech,sound)")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--e_mac", type=float, default=4.6, help="pJ per multiply-accumulate")
    parser.add_argument("--e_ac", type=float, default=0.9, help="pJ per accumulate")
    parser.add_argument("--attention_form", choices=("fused", "unfused"), default="fused",
                        help="count HD-RepSSA as its fused W_QK inference form (spike-driven) "
                             "or its training form (Q K^T as MACs)")
    add_bool(parser, "--deploy", True,
             "convert to the spike-driven deploy form and report its counted accumulates "
             "beside the estimate (iml_spikeformer with imls/mls firing only)")
    add_bool(parser, "--include_front", False,
             "count the convolutional subsampling front (real-valued input, MACs in both "
             "models) in the totals; the paper's tables leave it out")
    parser.add_argument("--compare", nargs="+", metavar="PATH", default=[],
                        help="further (train config, model file) pairs of the same task, "
                             "measured on the same data and drawn beside the main model")
    memory = parser.add_argument_group("memory-aware energy model (Lemaire et al.)")
    memory.add_argument("--e_add", type=float, default=0.1, help="pJ per 32-bit addition")
    memory.add_argument("--e_mul", type=float, default=3.1,
                        help="pJ per 32-bit multiplication")
    memory.add_argument("--sram_pj_per_byte", type=str,
                        default="8192:2.5,32768:5,1048576:25",
                        help="SRAM access energy as 'buffer bytes:pJ per byte' points, "
                             "interpolated in the buffer size (Horowitz, 45 nm)")
    memory.add_argument("--word_bytes", type=positive_int, default=4)
    memory.add_argument("--fifo_words", type=positive_int, default=1000,
                        help="capacity of the spike-event FIFOs, in words")
    parser.add_argument("--max_utterances", type=positive_int, default=None)
    add_bool(parser, "--plots", True, "draw firing_rates.png and attention_maps.png")
    add_bool(parser, "--neurobench", False,
             "add NeuroBench's synaptic-operation and activation-sparsity metrics "
             "(needs the optional neurobench package)")
    add_bool(parser, "--overwrite", False, "replace an earlier report in --output_dir")
    add_bool(parser, "--allow_uncalibrated", False,
             "report even if IMLS threshold statistics were never trained")
    return parser


def data_triple(args) -> tuple:
    """The (path, name, type) ESPnet reads, checked: the list exists, is not empty, and
    every plain file it names exists."""
    from espnet2.fileio.read_text import read_2columns_text

    if args.data_dir is not None:
        triple = (str(args.data_dir / "wav.scp"), "speech", "sound")
    else:
        triple = tuple(args.data_path_and_name_and_type.split(","))
        if len(triple) != 3:
            raise InputError(
                f"--data_path_and_name_and_type {args.data_path_and_name_and_type!r}: "
                "expected 'path,name,type'")
    if not Path(triple[0]).is_file():
        raise InputError(f"{triple[0]}: no such file")
    entries = read_2columns_text(triple[0])
    if not entries:
        raise InputError(f"{triple[0]} lists no utterances")
    if triple[2] == "sound":
        for key, value in entries.items():
            if not value.endswith("|") and not Path(value).is_file():
                raise InputError(f"{triple[0]}: utterance {key} names {value}: no such file")
    return triple


def read_utterances(triple: tuple, limit: Optional[int]):
    """(key, tensor) pairs, read lazily by ESPnet's dataset."""
    import torch
    from espnet2.train.dataset import ESPnetDataset

    dataset = ESPnetDataset([triple])
    keys = list(dataset.loader_dict[triple[1]].keys())[:limit]
    return [(k, torch.as_tensor(dataset[k][1][triple[1]])) for k in keys]


def access_costs(args):
    """The memory model's costs from the command line (checked before any work)."""
    from espnet_imlspike.energy.memory_model import AccessCosts
    from espnet_imlspike.errors import OptionError

    try:
        points = tuple(tuple(float(v) for v in p.split(":"))
                       for p in args.sram_pj_per_byte.split(","))
        if any(len(p) != 2 for p in points):
            raise ValueError
    except ValueError:
        raise OptionError(f"--sram_pj_per_byte {args.sram_pj_per_byte!r}: expected "
                          "'bytes:pJ,bytes:pJ,...'") from None
    return AccessCosts(args.e_add, args.e_mul, points, args.word_bytes, args.fifo_words)


def compare_pairs(values: List[str]) -> List[tuple]:
    """--compare as (config, model file) pairs, each file checked."""
    if len(values) % 2:
        raise InputError(f"--compare takes (config, model file) pairs, got {len(values)} "
                         "paths")
    pairs = [(Path(values[i]), Path(values[i + 1])) for i in range(0, len(values), 2)]
    for path in (p for pair in pairs for p in pair):
        if not path.is_file():
            raise InputError(f"--compare {path}: no such file")
    return pairs


def audio_seconds(model, utterances) -> Optional[dict]:
    """Seconds of audio per utterance, for waveform input with a known sampling rate."""
    frontend = getattr(model, "frontend", None)
    mel = getattr(getattr(frontend, "logmel", None), "mel_options", None) or {}
    fs = mel.get("sr") or getattr(frontend, "fs", None)
    if not fs or any(x.dim() != 1 for _, x in utterances):
        return None
    return {key: x.numel() / float(fs) for key, x in utterances}


def measure_model(args, task, paths, utterances, deploy: bool, access):
    """Load a model, convert it to the deploy form if asked and possible, run it over
    the utterances and price it; returns (model, measurement, report, text)."""
    from espnet_imlspike.energy.build import build_report
    from espnet_imlspike.energy.measure import measure
    from espnet_imlspike.energy.report import EnergyConstants
    from espnet_imlspike.model_loading import load_trained_model
    from espnet_imlspike.neurons import SpikingNeuron

    model, config = load_trained_model(
        paths[0], paths[1], encoders=None, task=task,
        allow_uncalibrated=args.allow_uncalibrated,
    )
    if not any(isinstance(m, SpikingNeuron) for m in model.encoder.modules()):
        raise InputError(f"encoder {config['encoder']!r} has no spiking neurons to report on")
    parameters = sum(p.numel() for p in model.parameters())
    if (deploy and task == "asr" and config["encoder"] == "iml_spikeformer"
            and model.encoder.firing in ("imls", "mls")):
        from espnet_imlspike.deploy.convert import convert_encoder

        model.encoder = convert_encoder(model.encoder, "spike_train")
        model.encoder.counter.enabled = True
    if task == "asr":
        def forward(m, x, n):
            m.encode(x, n)
    else:
        def forward(m, x, n):
            m.encode_frame(m.extract_feats(x, n)[0])
    measured = measure(model, model.encoder, utterances, forward, total=len(utterances))
    seconds = audio_seconds(model, utterances)
    if seconds is not None:
        seconds = [v for k, v in seconds.items() if k not in measured.skipped]
    counter = getattr(model.encoder, "counter", None)
    result, text = build_report(
        model.encoder, measured.recorder, measured.lengths, parameters,
        EnergyConstants(args.e_mac, args.e_ac), args.attention_form == "fused",
        model_name=config["encoder"], measured=counter.counts if counter else None,
        include_front=args.include_front, seconds=seconds, access=access,
    )
    if measured.skipped:
        result["skipped_too_short"] = measured.skipped
        text += (f"\n{len(measured.skipped)} utterances too short for the subsampling were "
                 f"skipped (no encoder output): {', '.join(measured.skipped[:10])}\n")
    return model, measured, result, text


def report(args, task: str, output: OutputDir, pairs, access) -> None:
    from espnet_imlspike.energy.compare import compare_section, model_label
    from espnet_imlspike.energy.measure import write_outputs

    utterances = read_utterances(data_triple(args), args.max_utterances)
    main_paths = (getattr(args, f"{task}_train_config"), getattr(args, f"{task}_model_file"))
    model, measured, result, text = measure_model(args, task, main_paths, utterances,
                                                  args.deploy, access)
    if args.neurobench and task == "asr":
        from espnet_imlspike.energy.neurobench_metrics import neurobench_section

        section, values = neurobench_section(model, utterances, result)
        result["neurobench"] = values
        text += "\n" + section
    panels = [(model_label(model.encoder, str(main_paths[0])), measured.recorder)]
    entries = [(panels[0][0], result)]
    for paths in pairs:  # the compared models run in their training form
        other, other_measured, other_result, _ = measure_model(
            args, task, paths, utterances, False, access)
        panels.append((model_label(other.encoder, str(paths[0])), other_measured.recorder))
        entries.append((panels[-1][0], other_result))
    if len(entries) > 1:
        section, values = compare_section(entries)
        result["compare"] = values
        text += "\n" + section
    written = write_outputs(result, text, panels, output.prepare(), args.plots)
    print(text)
    print("wrote " + ", ".join(str(p) for p in written))


def main(cmd: Optional[List[str]] = None) -> None:
    parser = get_parser()

    def body(args):
        if (args.asr_train_config is None) == (args.spk_train_config is None):
            parser.error("give --asr_train_config/--asr_model_file or "
                         "--spk_train_config/--spk_model_file")
        task = "asr" if args.asr_train_config is not None else "spk"
        for flag in (f"{task}_train_config", f"{task}_model_file"):
            path = getattr(args, flag)
            if path is None:
                parser.error(f"--{flag} is required")
            if not path.is_file():
                raise InputError(f"--{flag} {path}: no such file")
        pairs = compare_pairs(args.compare)
        access = access_costs(args)
        output = OutputDir(args.output_dir, OUTPUTS, args.overwrite).check()
        report(args, task, output, pairs, access)

    run(parser, body, cmd)


if __name__ == "__main__":
    main()
