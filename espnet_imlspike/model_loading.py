"""Loading a trained ESPnet model strictly, for our post-processing programs.

ESPnet's own ``build_model_from_file`` loads checkpoints with ``strict=False``, so a
config/checkpoint mismatch would pass silently; the deploy converter, the energy report and
the speaker-identification scorer load through :func:`load_trained_model`, which also
checks what a state dict cannot show:

* the checkpoint's own ``config.yaml``, when one sits beside it (as asr_train/spk_train
  and the deploy converter write them), must name the same encoder and encoder options
  as the config given (a stock Transformer checkpoint has the parameter names of an MLS
  or Spike-driven Transformer model; a ``timesteps`` or ``attention`` change leaves every
  shape equal);
* IMLS threshold statistics must have been updated by training (``running_max`` still
  at its initial value gives uncalibrated spikes), unless the caller allows it.
"""

import logging
from pathlib import Path
from typing import Optional, Sequence

import yaml

from espnet_imlspike.errors import ModelLoadError


def read_config(path: Path, what: str) -> dict:
    """A YAML training config as a dict, or a ModelLoadError naming the problem."""
    if not path.is_file():
        raise ModelLoadError(f"{what} {path}: no such file")
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{what} {path} is not valid YAML: {error}") from None
    if not isinstance(config, dict) or "encoder" not in config:
        raise ModelLoadError(f"{what} {path} is not an ESPnet training config (no encoder)")
    return config


def check_sibling_config(config_path: Path, model_path: Path, config: dict) -> Optional[str]:
    """Compare with the config.yaml beside the checkpoint; return a note if none exists."""
    sibling = model_path.parent / "config.yaml"
    if not sibling.is_file():
        return (f"note: no config.yaml beside {model_path}: could not check that the "
                f"checkpoint was trained with the encoder settings of {config_path}")
    if sibling.resolve() == config_path.resolve():
        return None
    own = read_config(sibling, "the checkpoint's config")
    for key in ("encoder", "encoder_conf"):
        if own.get(key) != config.get(key):
            theirs, ours = own.get(key) or {}, config.get(key) or {}
            if isinstance(theirs, dict) and isinstance(ours, dict):
                differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
                detail = f"encoder_conf differs in {differ}"
            else:
                detail = f"encoder {theirs!r} vs {ours!r}"
            raise ModelLoadError(
                f"{model_path} was trained with {sibling}, whose {detail} from {config_path}"
            )
    return None


def uncalibrated_neurons(model) -> list:
    """Names of IMLS neurons whose statistics no training batch ever updated."""
    from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron

    return [name for name, m in model.named_modules()
            if isinstance(m, InputAwareMultiLevelSpikeNeuron) and int(m.num_batches_tracked) == 0]


def load_trained_model(
    config_path: Path,
    model_path: Path,
    encoders: Optional[Sequence[str]] = ("iml_spikeformer",),
    task: str = "asr",
    allow_uncalibrated: bool = False,
):
    """Build an ESPnet model from its config and load the checkpoint strictly.

    Args:
        config_path: config.yaml written by asr_train / spk_train.
        model_path: Checkpoint.
        encoders: Encoder names accepted (None: any).
        task: "asr" or "spk".
        allow_uncalibrated: Accept IMLS neurons whose statistics were never updated.

    Returns:
        (model, config dict)
    """
    config = read_config(config_path, f"--{task}_train_config")
    if not model_path.is_file():
        raise ModelLoadError(f"--{task}_model_file {model_path}: no such file")
    if encoders is not None and config["encoder"] not in encoders:
        raise ModelLoadError(
            f"{config_path}: encoder is {config['encoder']!r}; only "
            f"{' / '.join(encoders)} models are accepted here"
        )
    note = check_sibling_config(config_path, model_path, config)
    if note:
        logging.warning(note)
    import torch

    if task == "spk":
        from espnet2.tasks.spk import SpeakerTask as Task
    else:
        from espnet2.tasks.asr import ASRTask as Task
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and tensor errors all mean "not a checkpoint"
        raise ModelLoadError(f"{model_path} is not a PyTorch checkpoint ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelLoadError(f"{model_path} is not a state dict")
    try:
        model, _ = Task.build_model_from_file(config_path, None, "cpu")
    except Exception as error:  # ESPnet raises anything from a bad config
        raise ModelLoadError(f"ESPnet cannot build a model from {config_path}: {error}") from None
    current = model.state_dict()
    missing = [k for k in current if k not in state]
    unexpected = [k for k in state if k not in current]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                   for k, v in current.items() if k in state and v.shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        raise ModelLoadError(
            f"{model_path} does not match {config_path}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape (checkpoint vs config) "
            f"{wrong_shape[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a training/deploy form mismatch
        raise ModelLoadError(f"{model_path} does not fit {config_path}: {error}") from None
    stale = uncalibrated_neurons(model)
    if stale and not allow_uncalibrated:
        raise ModelLoadError(
            f"{model_path}: {len(stale)} IMLS neuron layers (e.g. {stale[0]}) were never "
            "updated by a training batch, so their thresholds are uncalibrated; pass "
            "--allow_uncalibrated true to proceed anyway"
        )
    return model, config
