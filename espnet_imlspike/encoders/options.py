"""The options of a spiking Transformer encoder, validated once and kept as one object.

ESPnet builds encoders from the flat keywords of ``encoder_conf`` (and
``--print_config`` reads them off the constructor's signature), so the registered
encoders keep flat signatures with their defaults; inside, each builds one
:class:`SpikingOptions` from its arguments, and everything else (blocks, deploy form,
energy report, converters) reads the options from ``encoder.options``.
"""

import dataclasses
from typing import Any, Dict

from espnet_imlspike.attention import ATTENTION_TYPES, LINEAR_NORMS
from espnet_imlspike.errors import OptionError
from espnet_imlspike.neurons import FIRING_TYPES

INPUT_LAYERS = ("conv2d", "conv2d1", "conv2d2", "conv2d6", "conv2d8", "linear", "embed", None)


@dataclasses.dataclass(frozen=True)
class EncoderOptions:
    """The structure of a Transformer-like encoder (sizes, dropout, input layer).

    Attributes:
        output_size: Model dimension D.
        attention_heads: Number of attention heads (must divide ``output_size``).
        linear_units: Hidden units of the (spiking) ChannelMLP / feed-forward module.
        num_blocks: Number of blocks.
        dropout_rate: Dropout on branch outputs and in the subsampling.
        positional_dropout_rate: Dropout after the positional encoding.
        attention_dropout_rate: Dropout on softmax attention weights.
        input_layer: "conv2d" (1/4), "conv2d1" (no subsampling), "conv2d2" (1/2),
            "conv2d6", "conv2d8", "linear", "embed" (token ids) or None (features
            already of the model dimension, or a plain linear map to it), as in
            ESPnet's TransformerEncoder.
        normalize_before: Pre-LayerNorm (True) or post-LayerNorm blocks.
    """

    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    dropout_rate: float
    positional_dropout_rate: float
    attention_dropout_rate: float
    input_layer: Any
    normalize_before: bool

    def __post_init__(self):
        checks = [
            (self.input_layer in INPUT_LAYERS, "input_layer", f"one of {INPUT_LAYERS}"),
            (self.output_size >= 1, "output_size", ">= 1"),
            (self.num_blocks >= 1, "num_blocks", ">= 1"),
            (self.linear_units >= 1, "linear_units", ">= 1"),
        ]
        for rate in ("dropout_rate", "positional_dropout_rate", "attention_dropout_rate"):
            checks.append((0.0 <= getattr(self, rate) < 1.0, rate, "in [0, 1)"))
        self._raise_failed(checks)
        if self.attention_heads < 1 or self.output_size % self.attention_heads != 0:
            raise OptionError(
                f"attention_heads={self.attention_heads} must divide "
                f"output_size={self.output_size}"
            )

    def _raise_failed(self, checks) -> None:
        for ok, name, requirement in checks:
            if not ok:
                raise OptionError(f"{name} must be {requirement}, got {getattr(self, name)!r}")

    @classmethod
    def from_arguments(cls, arguments: Dict[str, Any], **fixed):
        """Options from a constructor's ``locals()``; ``fixed`` sets what a preset fixes.

        Keys that are not options (``self``, ``input_size``, task-specific arguments)
        are ignored.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        values = {k: v for k, v in arguments.items() if k in names}
        values.update(fixed)
        return cls(**values)

    def as_dict(self) -> Dict[str, Any]:
        """The options as ``encoder_conf`` keywords."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SpikingOptions(EncoderOptions):
    """Everything that defines a spiking encoder: the structure and the neurons.

    Attributes (besides :class:`EncoderOptions`'):
        timesteps: T, the time window of the spiking neurons.
        firing: "imls" (input-aware multi-level, Eq. 10-11), "mls" (fixed-threshold
            multi-level, Eq. 7) or "multistep" (iterative T-step IF/LIF with BPTT).
        attention: "hd_repssa_softmax", "hd_repssa_linear", "repssa_softmax",
            "repssa_linear" or "sdsa3".
        momentum: alpha of the IMLS running maximum (Eq. 11), in (0, 1].
        threshold: Firing threshold of "mls" and "multistep" neurons (> 0).
        leak: beta of "multistep" neurons (1.0 = IF, < 1 = LIF), in [0, 1].
        surrogate_alpha: Arctan surrogate sharpness of "multistep" neurons (>= 0).
        decay_layer_start: Index l of the first block in ``phi(l) = 1 - 2^(-5-l)``;
            1 gives phi = 1 - 2^-6 in the first block.
        sdsa_scale: Scale of the SDSA-3 product (> 0).
        linear_attention_norm: "none" (Eq. 13 as written) or "valid_keys" (linear
            HD-RepSSA divided by the number of valid keys).
    """

    timesteps: int
    firing: str
    attention: str
    momentum: float
    threshold: float
    leak: float
    surrogate_alpha: float
    decay_layer_start: int
    sdsa_scale: float
    linear_attention_norm: str

    def __post_init__(self):
        self._raise_failed([
            (self.firing in FIRING_TYPES, "firing", f"one of {FIRING_TYPES}"),
            (self.attention in ATTENTION_TYPES, "attention", f"one of {ATTENTION_TYPES}"),
            (self.linear_attention_norm in LINEAR_NORMS, "linear_attention_norm",
             f"one of {LINEAR_NORMS}"),
            (self.timesteps >= 1, "timesteps", ">= 1"),
            (0.0 < self.momentum <= 1.0, "momentum", "in (0, 1]"),
            (self.threshold > 0, "threshold", "> 0"),
            (0.0 <= self.leak <= 1.0, "leak", "in [0, 1]"),
            (self.surrogate_alpha >= 0, "surrogate_alpha", ">= 0"),
            (self.sdsa_scale > 0, "sdsa_scale", "> 0"),
        ])
        super().__post_init__()
