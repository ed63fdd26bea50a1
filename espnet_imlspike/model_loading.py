"""Loading a trained ESPnet model strictly, for our post-processing programs.

ESPnet's own ``build_model_from_file`` loads checkpoints with ``strict=False``, so a
config/checkpoint mismatch would pass silently; the deploy converter, the energy report and
the speaker-identification scorer load through :func:`load_trained_model` instead.
"""

from pathlib import Path

import yaml


class ModelLoadError(Exception):
    """A model that cannot be loaded for our purpose, with the reason."""


def load_trained_model(config_path: Path, model_path: Path,
                       encoders=("iml_spikeformer",), task: str = "asr"):
    """Build an ESPnet model from its config and load the checkpoint strictly.

    Args:
        config_path: config.yaml written by asr_train / spk_train.
        model_path: Checkpoint.
        encoders: Encoder names accepted.
        task: "asr" or "spk".

    Returns:
        (model, config dict)
    """
    import torch

    if task == "spk":
        from espnet2.tasks.spk import SpeakerTask as Task
    else:
        from espnet2.tasks.asr import ASRTask as Task

    for path, what in ((config_path, f"--{task}_train_config"),
                       (model_path, f"--{task}_model_file")):
        if not path.is_file():
            raise ModelLoadError(f"{what} {path}: no such file")
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict) or "encoder" not in config:
        raise ModelLoadError(f"{config_path} is not an ESPnet {task.upper()} training config")
    if config["encoder"] not in encoders:
        raise ModelLoadError(
            f"{config_path}: encoder is {config['encoder']!r}; only "
            f"{' / '.join(encoders)} models are accepted (no spiking neurons otherwise)"
        )
    model, _ = Task.build_model_from_file(config_path, None, "cpu")
    state = torch.load(model_path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{model_path} is not a state dict")
    # ESPnet loads with strict=False; a mismatch must not pass silently here.
    current = model.state_dict()
    shape_errors = [k for k, v in state.items() if k in current and current[k].shape != v.shape]
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys or shape_errors:
        raise ModelLoadError(
            f"{model_path} does not match {config_path}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}, "
            f"wrong shape {shape_errors[:5]}"
        )
    return model, config
