"""Convert a trained iml_spikeformer ASR model into its spike-driven inference form.

Example::

    python -m espnet_imlspike.bin.deploy \\
        --asr_train_config exp/asr_train/config.yaml \\
        --asr_model_file exp/asr_train/valid.acc.ave.pth \\
        --output_dir exp/asr_train/deploy

writes ``config.yaml`` (encoder ``iml_spikeformer_deploy``) and ``model.pth`` that the
stock ``espnet2.bin.asr_inference`` loads and decodes with. The output directory must
not hold a training config (it would be overwritten), and earlier deploy outputs are
replaced only with ``--overwrite true``.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from espnet_imlspike.bin.cli import OutputDir, add_bool, run
from espnet_imlspike.errors import InputError

OUTPUTS = ("config.yaml", "model.pth")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--asr_train_config", type=Path, required=True,
                        help="config.yaml written by asr_train")
    parser.add_argument("--asr_model_file", type=Path, required=True,
                        help="trained checkpoint (*.pth) matching the config")
    parser.add_argument("--output_dir", type=Path, required=True,
                        help="where config.yaml and model.pth of the deploy form go")
    parser.add_argument("--execution", choices=("spike_train", "multi_level"),
                        default="spike_train",
                        help="spike_train: binary spike trains with counted operations; "
                             "multi_level: same outputs, faster")
    add_bool(parser, "--overwrite", False, "replace an earlier deploy form in --output_dir")
    add_bool(parser, "--allow_uncalibrated", False,
             "convert even if IMLS threshold statistics were never trained")
    return parser


def check_output_dir(output_dir: Path, overwrite: bool) -> OutputDir:
    """Refuse a directory holding a training config; then the usual output checks."""
    import yaml

    existing = output_dir / "config.yaml"
    if existing.is_file():
        try:
            encoder = (yaml.safe_load(existing.read_text()) or {}).get("encoder")
        except (yaml.YAMLError, AttributeError):
            encoder = None
        if encoder != "iml_spikeformer_deploy":
            raise InputError(
                f"--output_dir {output_dir} holds a config.yaml that is not a deploy form "
                f"(encoder {encoder!r}), e.g. the training run's: writing there would "
                "overwrite it; choose another directory"
            )
    return OutputDir(output_dir, OUTPUTS, overwrite).check()


def convert(args: argparse.Namespace, output: OutputDir) -> str:
    """Convert, write config.yaml and model.pth; return a report of what was converted."""
    import torch
    import yaml

    from espnet_imlspike.deploy.convert import convert_encoder
    from espnet_imlspike.deploy.modules import FrozenThresholdNeuron, FusedHDRepSSA
    from espnet_imlspike.model_loading import load_trained_model

    model, config = load_trained_model(
        args.asr_train_config, args.asr_model_file,
        allow_uncalibrated=args.allow_uncalibrated,
    )
    trained_params = sum(p.numel() for p in model.encoder.parameters())
    model.encoder = convert_encoder(model.encoder, args.execution)
    encoder = model.encoder
    neurons = sum(isinstance(m, FrozenThresholdNeuron) for m in encoder.modules())
    fused = sum(isinstance(m, FusedHDRepSSA) for m in encoder.modules())
    config = dict(config, encoder="iml_spikeformer_deploy", encoder_conf=encoder.encoder_conf())
    output.prepare()
    (args.output_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(model.state_dict(), args.output_dir / "model.pth")
    return "\n".join([
        f"converted {args.asr_model_file} ({args.asr_train_config})",
        f"  IMLS/MLS thresholds frozen: {neurons} neuron layers",
        f"  attention layers with fused W_QK: {fused}",
        f"  encoder parameters: {trained_params} -> "
        f"{sum(p.numel() for p in encoder.parameters())}",
        f"  execution: {args.execution}",
        f"  wrote {args.output_dir / 'config.yaml'} and {args.output_dir / 'model.pth'}",
    ])


def main(cmd: Optional[List[str]] = None) -> None:
    def body(args):
        for path, flag in ((args.asr_train_config, "--asr_train_config"),
                           (args.asr_model_file, "--asr_model_file")):
            if not path.is_file():
                raise InputError(f"{flag} {path}: no such file")
        output = check_output_dir(args.output_dir, args.overwrite)
        print(convert(args, output))

    run(get_parser(), body, cmd)


if __name__ == "__main__":
    main()
