"""Energy report of a trained spiking ASR model over a data set (post-processing stage).

Example::

    python -m espnet_imlspike.bin.energy_report \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.best.pth \\
        --data_dir data/test --output_dir exp/asr/energy

(or ``--spk_train_config``/``--spk_model_file`` for a speaker model; the deploy form
and NeuroBench section are ASR-only) reads ``<data_dir>/wav.scp`` (or any ``--data_path_and_name_and_type path,speech,TYPE``
that ESPnet reads), records firing rates of every spiking neuron layer (padded frames
never counted), and writes ``energy.json``, ``energy.md`` (paper-style table with the ANN
Transformer of the same size as x1, plus a per-layer table), ``firing_rates.png`` and
``attention_maps.png``.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    parser.add_argument("--deploy", choices=("true", "false"), default="true",
                        help="convert to the spike-driven deploy form and report its counted "
                             "accumulates beside the estimate (iml_spikeformer only)")
    parser.add_argument("--include_front", choices=("true", "false"), default="false",
                        help="count the convolutional subsampling front (real-valued input, "
                             "MACs in both models) in the totals; the paper's tables leave "
                             "it out")
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--plots", choices=("true", "false"), default="true")
    parser.add_argument("--neurobench", choices=("true", "false"), default="false",
                        help="add NeuroBench's synaptic-operation and activation-sparsity "
                             "metrics (needs the optional neurobench package)")
    return parser


def read_utterances(args, limit: Optional[int]):
    """(key, tensor) pairs from a data dir or an ESPnet data triple."""
    import torch
    from espnet2.train.dataset import ESPnetDataset

    if args.data_dir is not None:
        scp = args.data_dir / "wav.scp"
        if not scp.is_file():
            raise SystemExit(f"energy_report: error: {scp}: no such file")
        triple = (str(scp), "speech", "sound")
    else:
        parts = args.data_path_and_name_and_type.split(",")
        if len(parts) != 3 or not Path(parts[0]).is_file():
            raise SystemExit(
                f"energy_report: error: --data_path_and_name_and_type "
                f"{args.data_path_and_name_and_type!r}: expected an existing 'path,name,type'"
            )
        triple = tuple(parts)
    with open(triple[0], "rb") as f:
        if not any(line.strip() for line in f):
            raise SystemExit(f"energy_report: error: {triple[0]} lists no utterances")
    dataset = ESPnetDataset([triple])
    keys = list(dataset.loader_dict[triple[1]].keys())
    keys = keys[:limit] if limit else keys
    return [(k, torch.as_tensor(dataset[k][1][triple[1]])) for k in keys]


def main(cmd: Optional[List[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(cmd)
    if (args.asr_train_config is None) == (args.spk_train_config is None):
        parser.error("give --asr_train_config/--asr_model_file or "
                     "--spk_train_config/--spk_model_file")
    task = "asr" if args.asr_train_config is not None else "spk"
    config_path = args.asr_train_config or args.spk_train_config
    model_path = args.asr_model_file or args.spk_model_file
    if model_path is None:
        parser.error(f"--{task}_model_file is required")
    from espnet_imlspike.model_loading import ModelLoadError, load_trained_model
    from espnet_imlspike.energy.report import EnergyConstants
    from espnet_imlspike.energy.stage import build_report, measure, write_outputs

    try:
        model, config = load_trained_model(config_path, model_path,
                                           encoders=("iml_spikeformer",
                                                     "spike_driven_transformer"), task=task)
    except ModelLoadError as error:
        sys.exit(f"energy_report: error: {error}")
    parameters = sum(p.numel() for p in model.parameters())
    measured = None
    if args.deploy == "true" and task == "asr" and config["encoder"] == "iml_spikeformer" \
            and model.encoder.firing in ("imls", "mls"):
        from espnet_imlspike.deploy import convert_encoder

        model.encoder = convert_encoder(model.encoder, "spike_train")
        model.encoder.counter.enabled = True
    utterances = read_utterances(args, args.max_utterances)
    if task == "asr":
        def run(m, x, n):
            m.encode(x, n)
    else:
        def run(m, x, n):
            m.encode_frame(m.extract_feats(x, n)[0])
    recorder, lengths = measure(model, model.encoder, utterances, run, total=len(utterances))
    if measured is None and hasattr(model.encoder, "counter"):
        measured = model.encoder.counter.counts
    report, text = build_report(
        model.encoder, recorder, lengths, parameters,
        EnergyConstants(args.e_mac, args.e_ac), args.attention_form == "fused",
        model_name=config["encoder"], measured=measured,
        include_front=args.include_front == "true",
    )
    if args.neurobench == "true" and task == "asr":
        from espnet_imlspike.energy.neurobench_metrics import neurobench_section

        section, values = neurobench_section(model, utterances)
        report["neurobench"] = values
        text += "\n" + section
    written = write_outputs(report, text, recorder, args.output_dir, args.plots == "true")
    print(text)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
