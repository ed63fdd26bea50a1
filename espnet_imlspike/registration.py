"""Adds our encoders to ESPnet's task registries (ClassChoices), without editing ESPnet.

:func:`register_asr` and :func:`register_spk` are called with the freshly executed
``espnet2.tasks.asr`` / ``espnet2.tasks.spk`` module by the import hook
(:mod:`espnet_imlspike.autoload`), so the stock ``espnet2.bin.asr_train`` and
``espnet2.bin.asr_inference`` accept ``encoder: iml_spikeformer``,
``encoder: spike_driven_transformer`` and ``encoder: iml_spikeformer_deploy`` (the
spike-driven inference form written by ``espnet_imlspike.bin.deploy``), and the stock
``espnet2.bin.spk_train``, ``spk_embed_extract`` and ``spk_inference.Speech2Embedding`` accept
``encoder: iml_spikeformer``, ``spike_driven_transformer`` and ``transformer`` (ESPnet's
SPK task has no Transformer encoder of its own), with no import added by the user.
"""

import sys
from types import ModuleType
from typing import Optional


def _add_encoders(task_module: ModuleType, classes: dict) -> None:
    """Add ``classes`` to a task's ``encoder_choices``; names ESPnet has stay ESPnet's."""
    for name, cls in classes.items():
        task_module.encoder_choices.classes.setdefault(name, cls)


def _add_frontends(task_module: ModuleType, classes: dict) -> None:
    """Add ``classes`` to a task's ``frontend_choices``; names ESPnet has stay ESPnet's."""
    for name, cls in classes.items():
        task_module.frontend_choices.classes.setdefault(name, cls)


def _asr_encoder_classes() -> dict:
    from espnet_imlspike.deploy.convert import IMLSpikeformerDeployEncoder
    from espnet_imlspike.encoders.asr import (
        IMLSpikeformerEncoder,
        SpikeDrivenTransformerEncoder,
    )
    from espnet_imlspike.encoders.smlp import SMLPEncoder
    from espnet_imlspike.streaming.encoder import IMLSpikeformerStreamingEncoder

    return {
        "iml_spikeformer": IMLSpikeformerEncoder,
        "spike_driven_transformer": SpikeDrivenTransformerEncoder,
        "iml_spikeformer_deploy": IMLSpikeformerDeployEncoder,
        "smlp": SMLPEncoder,
        "iml_spikeformer_streaming": IMLSpikeformerStreamingEncoder,
    }


def register_asr(module: Optional[ModuleType] = None) -> None:
    """Add our encoders to ``espnet2.tasks.asr.encoder_choices`` (idempotent).

    Args:
        module: The ``espnet2.tasks.asr`` module; imported if not given.
    """
    if module is None:
        import espnet2.tasks.asr as module
    _add_encoders(module, _asr_encoder_classes())


def _spk_encoder_classes() -> dict:
    from espnet_imlspike.encoders.smlp import SMLPSpeakerEncoder
    from espnet_imlspike.encoders.spk import (
        IMLSpikeformerSpeakerEncoder,
        SpikeDrivenTransformerSpeakerEncoder,
        TransformerSpeakerEncoder,
    )

    return {
        "iml_spikeformer": IMLSpikeformerSpeakerEncoder,
        "spike_driven_transformer": SpikeDrivenTransformerSpeakerEncoder,
        "transformer": TransformerSpeakerEncoder,
        "smlp": SMLPSpeakerEncoder,
    }


def _spk_frontend_classes() -> dict:
    from espnet_imlspike.frontends.spiking_leaf import SpikingLeafFrontend

    return {"spiking_leaf": SpikingLeafFrontend}


def register_spk(module: Optional[ModuleType] = None) -> None:
    """Add our speaker encoders and front ends to ``espnet2.tasks.spk`` (idempotent).

    A name ESPnet already registers is left to ESPnet's class.

    Args:
        module: The ``espnet2.tasks.spk`` module; imported if not given.
    """
    if module is None:
        import espnet2.tasks.spk as module
    _add_encoders(module, _spk_encoder_classes())
    _add_frontends(module, _spk_frontend_classes())


REGISTRARS = {"espnet2.tasks.asr": register_asr, "espnet2.tasks.spk": register_spk}


def register_loaded() -> None:
    """Register into every target task module that is already imported."""
    for name, register in REGISTRARS.items():
        if name in sys.modules:
            register(sys.modules[name])
