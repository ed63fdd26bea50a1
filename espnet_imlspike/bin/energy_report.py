"""Energy report of a trained spiking ASR model over a data set (post-processing stage).

Example::

    python -m espnet_imlspike.bin.energy_report \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.best.pth \\
        --data_dir data/test --output_dir exp/asr/energy

reads ``<data_dir>/wav.scp`` (or any ``--data_path_and_name_and_type path,speech,TYPE``
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
    parser.add_argument("--asr_train_config", type=Path, required=True)
    parser.add_argument("--asr_model_file", type=Path, required=True)
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
    args = get_parser().parse_args(cmd)
    from espnet_imlspike.bin.deploy import DeployError, load_trained_model
    from espnet_imlspike.energy.report import EnergyConstants
    from espnet_imlspike.energy.stage import build_report, measure, write_outputs

    try:
        model, config = load_trained_model(args.asr_train_config, args.asr_model_file,
                                           encoders=("iml_spikeformer",
                                                     "spike_driven_transformer"))
    except DeployError as error:
        sys.exit(f"energy_report: error: {error}")
    parameters = sum(p.numel() for p in model.parameters())
    measured = None
    if args.deploy == "true" and config["encoder"] == "iml_spikeformer" and \
            model.encoder.firing in ("imls", "mls"):
        from espnet_imlspike.deploy import convert_encoder

        model.encoder = convert_encoder(model.encoder, "spike_train")
        model.encoder.counter.enabled = True
    utterances = read_utterances(args, args.max_utterances)
    recorder, lengths = measure(
        model, model.encoder, utterances, lambda m, x, n: m.encode(x, n),
        total=len(utterances),
    )
    if measured is None and hasattr(model.encoder, "counter"):
        measured = model.encoder.counter.counts
    report, text = build_report(
        model.encoder, recorder, lengths, parameters,
        EnergyConstants(args.e_mac, args.e_ac), args.attention_form == "fused",
        model_name=config["encoder"], measured=measured,
        include_front=args.include_front == "true",
    )
    if args.neurobench == "true":
        from espnet_imlspike.energy.neurobench_metrics import neurobench_section

        section, values = neurobench_section(model, utterances)
        report["neurobench"] = values
        text += "\n" + section
    written = write_outputs(report, text, recorder, args.output_dir, args.plots == "true")
    print(text)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
