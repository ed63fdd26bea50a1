"""Convert a trained iml_spikeformer ASR model into its spike-driven inference form.

Example::

    python -m espnet_imlspike.bin.deploy \\
        --asr_train_config exp/asr_train/config.yaml \\
        --asr_model_file exp/asr_train/valid.acc.ave.pth \\
        --output_dir exp/asr_train/deploy

writes ``config.yaml`` (encoder ``iml_spikeformer_deploy``) and ``model.pth`` that the
stock ``espnet2.bin.asr_inference`` loads and decodes with.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import yaml

from espnet_imlspike.model_loading import ModelLoadError, load_trained_model


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    return parser


class DeployError(ModelLoadError):
    """A model that cannot be converted, with the reason."""


def convert(config_path: Path, model_path: Path, output_dir: Path, execution: str) -> str:
    """Convert, write config.yaml and model.pth; return a report of what was converted."""
    import torch
    from espnet_imlspike.deploy import convert_encoder, FrozenThresholdNeuron
    from espnet_imlspike.deploy import FusedHDRepSSA

    model, config = load_trained_model(config_path, model_path)
    trained_params = sum(p.numel() for p in model.encoder.parameters())
    try:
        model.encoder = convert_encoder(model.encoder, execution)
    except ValueError as error:
        raise DeployError(str(error)) from error
    encoder = model.encoder
    neurons = sum(isinstance(m, FrozenThresholdNeuron) for m in encoder.modules())
    fused = sum(isinstance(m, FusedHDRepSSA) for m in encoder.modules())
    output_dir.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    config["encoder"] = "iml_spikeformer_deploy"
    config["encoder_conf"] = dict(config.get("encoder_conf") or {}, execution=execution)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(model.state_dict(), output_dir / "model.pth")
    return "\n".join([
        f"converted {model_path} ({config_path})",
        f"  IMLS/MLS thresholds frozen: {neurons} neuron layers",
        f"  attention layers with fused W_QK: {fused}",
        f"  encoder parameters: {trained_params} -> "
        f"{sum(p.numel() for p in encoder.parameters())}",
        f"  execution: {execution}",
        f"  wrote {output_dir / 'config.yaml'} and {output_dir / 'model.pth'}",
    ])


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    try:
        print(convert(args.asr_train_config, args.asr_model_file, args.output_dir,
                      args.execution))
    except ModelLoadError as error:  # DeployError included
        sys.exit(f"deploy: error: {error}")


if __name__ == "__main__":
    main()
