"""Speaker-embedding encoders for ESPnet's SPK task (``espnet2.tasks.spk``).

ESPnet's speaker model calls ``encoder(feats)`` with features ``(B, L, input_size)`` and
no lengths, and hands the result, ``(B, output_size(), L')`` (channels first), to the
pooling and then the projector. The encoders here follow that contract, as ESPnet's
``MfaConformerEncoder`` does, with the same option names and the same default front end
(``input_layer: conv2d2``, 1/2 subsampling), so a config switches between
``encoder: mfaconformer`` and ``encoder: iml_spikeformer`` by its name.

Multi-scale feature aggregation (MFA, Zhang et al. 2022, the protocol the paper follows
for speaker tasks; ``mfa: true``) concatenates the outputs of all blocks and applies one
LayerNorm over the ``num_blocks * output_size`` channels (``output_size()``); ``mfa:
false`` returns the last block through ``after_norm`` (pre-LN).

Three encoders share everything but the blocks: :class:`IMLSpikeformerSpeakerEncoder`
(``iml_spikeformer``, every option of the ASR encoder), :class:`SpikeDrivenTransformerSpeakerEncoder`
(``spike_driven_transformer``) and :class:`TransformerSpeakerEncoder` (``transformer``,
ESPnet's own ``EncoderLayer``; ESPnet's SPK task has no Transformer encoder). With the same
sizes they have exactly the same parameters. ``forward`` also accepts optional ``ilens``
(ESPnet's speaker model passes none: its preprocessor crops every utterance to
``target_duration``); blocks then see the exact subsampled lengths and padded output
frames are zero.
"""

from typing import Callable, List, Optional

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.encoder_layer import EncoderLayer
from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from typeguard import typechecked

from espnet_imlspike.encoders.common import (
    TimeFolding,
    build_spiking_blocks,
    check_batch,
    conv_subsample,
    make_input_layer,
    minimum_input_frames,
    subsampled_lengths,
    training_factories,
    valid_frames,
)
from espnet_imlspike.encoders.options import EncoderOptions, SpikingOptions
from espnet_imlspike.errors import OptionError

SPK_INPUT_LAYERS = ("conv2d2", "conv2d1", "conv2d", "conv2d6", "conv2d8")


class SpeakerEncoder(AbsEncoder):
    """Front end, blocks, MFA or final norm, and the SPK forward contract.

    Args:
        input_size: Input feature dimension.
        options: Encoder options (kept as ``self.options``).
        make_blocks: Builds the blocks, each ``block(xs, valid) -> xs`` (called after
            the front end is built, so parameters are created in module order).
        mfa: Multi-scale feature aggregation.
    """

    def __init__(self, input_size: int, options: EncoderOptions,
                 make_blocks: Callable[[], torch.nn.ModuleList], mfa: bool):
        super().__init__()
        if options.input_layer not in SPK_INPUT_LAYERS:
            raise OptionError(
                f"input_layer must be one of {SPK_INPUT_LAYERS}, got {options.input_layer!r}"
            )
        self.options = options
        self.input_size = input_size
        self.mfa = mfa
        self.embed = make_input_layer(options, input_size, options.positional_dropout_rate)
        self.min_input_frames = minimum_input_frames(self.embed)
        self.encoders = make_blocks()
        self._output_size = options.output_size * (options.num_blocks if mfa else 1)
        if mfa:
            self.ln = LayerNorm(self._output_size)
        elif options.normalize_before:
            self.after_norm = LayerNorm(options.output_size)

    input_layer = property(lambda self: self.options.input_layer)
    normalize_before = property(lambda self: self.options.normalize_before)
    timesteps = property(lambda self: getattr(self.options, "timesteps", 1))
    firing = property(lambda self: getattr(self.options, "firing", None))
    attention = property(lambda self: getattr(self.options, "attention", None))

    def output_size(self) -> int:
        return self._output_size

    def _block_outputs(self, xs: torch.Tensor, valid: torch.Tensor) -> List[torch.Tensor]:
        time = TimeFolding(self.options, xs.size(0)) if isinstance(
            self.options, SpikingOptions) else None
        if time is not None:
            xs, valid = time.fold(xs, valid)
        outputs = []
        for block in self.encoders:
            xs = block(xs, valid)
            outputs.append(time.unfold(xs) if time is not None else xs)
        return outputs

    def forward(
        self, xs_pad: torch.Tensor, ilens: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Encode features into frame-level speaker features.

        Args:
            xs_pad: Features (B, L, input_size).
            ilens: Optional valid frames per utterance (B,); None means no padding.

        Returns:
            Frame-level features (B, output_size(), L'), channels first, as ESPnet's
            SPK poolings take them. With ``ilens``, padded frames are zero.
        """
        check_batch(xs_pad, ilens, self.input_size, self.min_input_frames,
                    validate_values=not self.training)
        xs = conv_subsample(self.embed, xs_pad)
        if ilens is None:
            valid = torch.ones(xs.shape[:2], dtype=torch.bool, device=xs.device)
        else:
            olens = subsampled_lengths(ilens.to(xs.device), self.input_layer)
            valid = valid_frames(olens, xs.size(1))
        outputs = self._block_outputs(xs, valid)
        if self.mfa:
            xs = self.ln(torch.cat(outputs, dim=-1))
        else:
            xs = outputs[-1]
            if self.normalize_before:
                xs = self.after_norm(xs)
        if ilens is not None:
            xs = xs.masked_fill(~valid.unsqueeze(-1), 0.0)
        return xs.transpose(1, 2)


class _TransformerBlock(EncoderLayer):
    """ESPnet's EncoderLayer with the spiking blocks' ``(xs, valid)`` interface."""

    def forward(self, xs, valid):  # noqa: D102 (mask: keys each query may attend to)
        return super().forward(xs, valid.unsqueeze(1))[0]


class TransformerSpeakerEncoder(SpeakerEncoder):
    """Transformer speaker encoder (ANN baseline) from ESPnet's own EncoderLayer.

    ESPnet's Transformer blocks (MultiHeadedAttention, PositionwiseFeedForward with ReLU)
    behind the MFA-Conformer front end. The options are documented in
    :class:`~espnet_imlspike.encoders.options.EncoderOptions`.

    Args:
        input_size: Input feature dimension.
        input_layer: "conv2d2" (1/2, MFA-Conformer's), "conv2d1", "conv2d",
            "conv2d6" or "conv2d8".
        mfa: Concatenate all block outputs and normalise them with one LayerNorm;
            ``output_size()`` is then ``num_blocks * output_size``.
        **options: see EncoderOptions.
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d2",
        normalize_before: bool = True,
        mfa: bool = True,
    ):
        options = EncoderOptions.from_arguments(locals())
        super().__init__(input_size, options, lambda: _transformer_blocks(options), mfa)


def _transformer_blocks(options: EncoderOptions) -> torch.nn.ModuleList:
    return torch.nn.ModuleList(
        _TransformerBlock(
            options.output_size,
            MultiHeadedAttention(
                options.attention_heads, options.output_size, options.attention_dropout_rate
            ),
            PositionwiseFeedForward(
                options.output_size, options.linear_units, options.dropout_rate
            ),
            options.dropout_rate,
            options.normalize_before,
        )
        for _ in range(options.num_blocks)
    )


def _spiking_blocks(options: SpikingOptions) -> torch.nn.ModuleList:
    return build_spiking_blocks(options, *training_factories(options))


class IMLSpikeformerSpeakerEncoder(SpeakerEncoder):
    """IML-Spikeformer speaker encoder: the spiking blocks of Eq. 4 with MFA.

    With ``firing: multistep`` each block's output is the mean of its residual stream
    over the T steps before aggregation. The options are documented in
    :class:`~espnet_imlspike.encoders.options.SpikingOptions`.

    Args:
        input_size: Input feature dimension.
        input_layer: "conv2d2" (1/2, MFA-Conformer's), "conv2d1", "conv2d",
            "conv2d6" or "conv2d8".
        mfa: Multi-scale feature aggregation (see :class:`TransformerSpeakerEncoder`).
        **options: see SpikingOptions.
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d2",
        normalize_before: bool = True,
        mfa: bool = True,
        timesteps: int = 6,
        firing: str = "imls",
        attention: str = "hd_repssa_softmax",
        momentum: float = 0.1,
        threshold: float = 1.0,
        leak: float = 1.0,
        surrogate_alpha: float = 2.0,
        decay_layer_start: int = 1,
        sdsa_scale: float = 0.125,
        linear_attention_norm: str = "none",
    ):
        options = SpikingOptions.from_arguments(locals())
        super().__init__(input_size, options, lambda: _spiking_blocks(options), mfa)


class SpikeDrivenTransformerSpeakerEncoder(SpeakerEncoder):
    """Spike-driven Transformer speaker encoder: SDSA-3, multi-step LIF, no BatchNorm.

    ``firing`` (multistep) and ``attention`` (sdsa3) are fixed, not arguments. The
    options are documented in :class:`~espnet_imlspike.encoders.options.SpikingOptions`.

    Args:
        input_size: Input feature dimension.
        input_layer: "conv2d2", "conv2d1", "conv2d", "conv2d6" or "conv2d8".
        mfa: Multi-scale feature aggregation (see :class:`TransformerSpeakerEncoder`).
        **options: see SpikingOptions.
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d2",
        normalize_before: bool = True,
        mfa: bool = True,
        timesteps: int = 6,
        threshold: float = 1.0,
        leak: float = 0.5,
        surrogate_alpha: float = 2.0,
        sdsa_scale: float = 0.125,
    ):
        options = SpikingOptions.from_arguments(
            locals(), firing="multistep", attention="sdsa3", momentum=0.1,
            decay_layer_start=1, linear_attention_norm="none",
        )
        super().__init__(input_size, options, lambda: _spiking_blocks(options), mfa)
