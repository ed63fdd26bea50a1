"""Speaker-embedding encoders for ESPnet's SPK task (``espnet2.tasks.spk``).

ESPnet's speaker model (``ESPnetSpeakerModel``) calls ``encoder(feats)`` with features
``(B, L, input_size)`` and no lengths, and hands the result, ``(B, output_size(), L')``
(channels first), to the pooling (``chn_attn_stat``, ``stats``, ``mean``) and then the
projector (``rawnet3``, ``xvector``, ``ska_tdnn``). The encoders here follow that
contract, as ESPnet's ``MfaConformerEncoder`` does, with the same option names and the
same default front end (``input_layer: conv2d2``, 1/2 subsampling), so a config switches
between ``encoder: mfaconformer`` and ``encoder: iml_spikeformer`` by its name.

Multi-scale feature aggregation (MFA, Zhang et al. 2022, the protocol the paper follows for
speaker tasks; ``mfa: true``, the default) concatenates the outputs of all blocks along
the channels and applies one LayerNorm over the ``num_blocks * output_size`` channels,
so ``output_size()`` is ``num_blocks * output_size``; ``mfa: false`` returns the last
block through ``after_norm`` (pre-LN) as ESPnet's TransformerEncoder does, and
``output_size()`` is ``output_size``.

Three encoders share everything but the block:

* :class:`IMLSpikeformerSpeakerEncoder` (``iml_spikeformer``): the spiking blocks of
  :mod:`espnet_imlspike.encoder` (IMLS neurons, HD-RepSSA; every option of the ASR
  encoder).
* :class:`SpikeDrivenTransformerSpeakerEncoder` (``spike_driven_transformer``): SDSA-3
  with iterative multi-step LIF neurons, the paper's SNN baseline.
* :class:`TransformerSpeakerEncoder` (``transformer``): ESPnet's own Transformer
  ``EncoderLayer`` (ESPnet's SPK task has no Transformer encoder), the ANN baseline.

With the same sizes the three have exactly the same parameters (IMLS thresholds are
buffers). ``forward`` also accepts optional ``ilens`` for callers that have them (ESPnet's
speaker model does not pass any; its SPK preprocessor crops every utterance to
``target_duration``, so batches carry no padding): blocks then see the exact subsampled
lengths, and padded output frames are zero.
"""

from typing import List, Optional

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.pytorch_backend.transformer.attention import MultiHeadedAttention
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding
from espnet.nets.pytorch_backend.transformer.encoder_layer import EncoderLayer
from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet.nets.pytorch_backend.transformer.positionwise_feed_forward import (
    PositionwiseFeedForward,
)
from espnet.nets.pytorch_backend.transformer.subsampling import (
    Conv2dSubsampling,
    Conv2dSubsampling1,
    Conv2dSubsampling2,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
    TooShortUttError,
)
from typeguard import typechecked

from espnet_imlspike.encoder import (
    _check_options,
    build_spiking_blocks,
    subsampled_lengths,
    valid_frames,
)

SPK_INPUT_LAYERS = ("conv2d2", "conv2d1", "conv2d", "conv2d6", "conv2d8")

SUBSAMPLING_CLASSES = {
    "conv2d1": Conv2dSubsampling1,
    "conv2d2": Conv2dSubsampling2,
    "conv2d": Conv2dSubsampling,
    "conv2d6": Conv2dSubsampling6,
    "conv2d8": Conv2dSubsampling8,
}

# fewest input frames that leave one output frame
SPK_MIN_INPUT_FRAMES = {"conv2d1": 5, "conv2d2": 7, "conv2d": 7, "conv2d6": 11, "conv2d8": 15}


def speaker_subsampled_lengths(lengths: torch.Tensor, input_layer: str) -> torch.Tensor:
    """Output frames of ESPnet's 2-D conv subsampling for each input length.

    conv2d1: two (k=3, s=1) convs; conv2d2: (3, 2) then (3, 1); conv2d, conv2d6 and
    conv2d8 as in :func:`espnet_imlspike.encoder.subsampled_lengths`.
    """
    if input_layer == "conv2d1":
        return lengths - 4
    if input_layer == "conv2d2":
        return (lengths - 1) // 2 - 2
    return subsampled_lengths(lengths, input_layer)


def _check_structure(
    output_size: int,
    attention_heads: int,
    linear_units: int,
    num_blocks: int,
    input_layer: str,
    dropout_rate: float,
    positional_dropout_rate: float,
    attention_dropout_rate: float,
) -> None:
    """Options every speaker encoder shares; ValueError naming the bad one."""
    if input_layer not in SPK_INPUT_LAYERS:
        raise ValueError(
            f"input_layer must be one of {SPK_INPUT_LAYERS}, got {input_layer!r}"
        )
    if output_size < 1:
        raise ValueError(f"output_size must be >= 1, got {output_size}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if linear_units < 1:
        raise ValueError(f"linear_units must be >= 1, got {linear_units}")
    if attention_heads < 1 or output_size % attention_heads != 0:
        raise ValueError(
            f"attention_heads={attention_heads} must divide output_size={output_size}"
        )
    for name, rate in (
        ("dropout_rate", dropout_rate),
        ("positional_dropout_rate", positional_dropout_rate),
        ("attention_dropout_rate", attention_dropout_rate),
    ):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")


class _SpeakerEncoder(AbsEncoder):
    """Front end, final norm and the SPK forward contract; subclasses add the blocks.

    Subclasses build ``self.encoders`` and then call :meth:`_add_final_norm`, so module
    (and parameter) order is embed, blocks, norm.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        num_blocks: int,
        dropout_rate: float,
        positional_dropout_rate: float,
        input_layer: str,
        normalize_before: bool,
        mfa: bool,
    ):
        super().__init__()
        self.input_size = input_size
        self.input_layer = input_layer
        self.normalize_before = normalize_before
        self.mfa = mfa
        self.num_blocks = num_blocks
        self.block_size = output_size
        self.min_input_frames = SPK_MIN_INPUT_FRAMES[input_layer]
        self._output_size = output_size * num_blocks if mfa else output_size
        self.embed = SUBSAMPLING_CLASSES[input_layer](
            input_size,
            output_size,
            dropout_rate,
            PositionalEncoding(output_size, positional_dropout_rate),
        )

    def _add_final_norm(self) -> None:
        if self.mfa:
            self.ln = LayerNorm(self._output_size)
        elif self.normalize_before:
            self.after_norm = LayerNorm(self.block_size)

    def output_size(self) -> int:
        return self._output_size

    def _block_outputs(
        self, xs: torch.Tensor, valid: torch.Tensor
    ) -> List[torch.Tensor]:
        """Outputs (B, L', output_size) of every block, first to last."""
        raise NotImplementedError

    def _check_input(self, xs_pad: torch.Tensor, ilens: Optional[torch.Tensor]) -> None:
        if xs_pad.dim() != 3 or xs_pad.size(-1) != self.input_size:
            raise ValueError(
                f"expected features of shape (batch, frames, {self.input_size}), "
                f"got {tuple(xs_pad.shape)}"
            )
        if ilens is not None and (ilens.dim() != 1 or ilens.size(0) != xs_pad.size(0)):
            raise ValueError(
                f"ilens must have one length per utterance ({xs_pad.size(0)}), "
                f"got shape {tuple(ilens.shape)}"
            )
        if torch.compiler.is_compiling():
            return
        if not torch.isfinite(xs_pad).all():
            raise ValueError("input features contain NaN or Inf values")
        frames = xs_pad.size(1)
        if ilens is not None and ilens.numel():
            if int(ilens.max()) > frames:
                raise ValueError(
                    f"ilens has a length {int(ilens.max())} longer than the "
                    f"{frames} input frames"
                )
            frames = min(frames, int(ilens.min()))
        if frames < self.min_input_frames:
            raise TooShortUttError(
                f"an utterance has {frames} frames; input_layer={self.input_layer} "
                f"needs at least {self.min_input_frames} frames",
                frames,
                self.min_input_frames,
            )

    def forward(
        self, xs_pad: torch.Tensor, ilens: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Encode features into frame-level speaker features.

        Args:
            xs_pad: Features (B, L, input_size).
            ilens: Optional valid frames per utterance (B,); None means no padding
                (ESPnet's speaker model passes none).

        Returns:
            Frame-level features (B, output_size(), L'), channels first, as ESPnet's
            SPK poolings take them. With ``ilens``, frames past each utterance's
            subsampled length are zero.
        """
        self._check_input(xs_pad, ilens)
        xs, _ = self.embed(xs_pad, None)
        if ilens is None:
            valid = torch.ones(xs.shape[:2], dtype=torch.bool, device=xs.device)
        else:
            olens = speaker_subsampled_lengths(ilens.to(xs.device), self.input_layer)
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


class TransformerSpeakerEncoder(_SpeakerEncoder):
    """Transformer speaker encoder (ANN baseline) from ESPnet's own EncoderLayer.

    Same front end as ESPnet's MfaConformerEncoder (2-D conv subsampling with absolute
    positional encoding) and ESPnet's Transformer blocks (MultiHeadedAttention,
    PositionwiseFeedForward with ReLU), optionally with multi-scale feature aggregation.

    Args:
        input_size: Input feature dimension.
        output_size: Model dimension D of each block.
        attention_heads: Number of attention heads (must divide ``output_size``).
        linear_units: Hidden units of the feed-forward module.
        num_blocks: Number of blocks.
        dropout_rate: Dropout on branch outputs and in the subsampling.
        positional_dropout_rate: Dropout after the positional encoding.
        attention_dropout_rate: Dropout on attention weights.
        input_layer: "conv2d2" (1/2, MFA-Conformer's), "conv2d1" (no subsampling),
            "conv2d" (1/4), "conv2d6" or "conv2d8".
        normalize_before: Pre-LayerNorm (True) or post-LayerNorm blocks.
        mfa: Concatenate all block outputs (multi-scale feature aggregation) and
            normalise them with one LayerNorm; ``output_size()`` is then
            ``num_blocks * output_size``. False: the last block's output only.
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
        _check_structure(
            output_size, attention_heads, linear_units, num_blocks, input_layer,
            dropout_rate, positional_dropout_rate, attention_dropout_rate,
        )
        super().__init__(
            input_size, output_size, num_blocks, dropout_rate,
            positional_dropout_rate, input_layer, normalize_before, mfa,
        )
        self.encoders = torch.nn.ModuleList(
            EncoderLayer(
                output_size,
                MultiHeadedAttention(attention_heads, output_size, attention_dropout_rate),
                PositionwiseFeedForward(output_size, linear_units, dropout_rate),
                dropout_rate,
                normalize_before,
            )
            for _ in range(num_blocks)
        )
        self._add_final_norm()

    def _block_outputs(
        self, xs: torch.Tensor, valid: torch.Tensor
    ) -> List[torch.Tensor]:
        mask = valid.unsqueeze(1)  # (B, 1, L'): keys each query may attend to
        outputs = []
        for layer in self.encoders:
            xs, _ = layer(xs, mask)
            outputs.append(xs)
        return outputs


class IMLSpikeformerSpeakerEncoder(_SpeakerEncoder):
    """IML-Spikeformer speaker encoder: the spiking blocks of Eq. 4 with MFA.

    The blocks are those of :class:`espnet_imlspike.encoder.IMLSpikeformerEncoder`
    (built by the same function); with ``firing: multistep`` each block's output is the
    mean of its residual stream over the T steps before aggregation.

    Args:
        input_size: Input feature dimension.
        output_size: Model dimension D of each block.
        attention_heads: Number of attention heads (must divide ``output_size``).
        linear_units: Hidden units of the spiking ChannelMLP.
        num_blocks: Number of blocks.
        dropout_rate: Dropout on branch outputs and in the subsampling.
        positional_dropout_rate: Dropout after the positional encoding.
        attention_dropout_rate: Dropout on softmax attention weights.
        input_layer: "conv2d2" (1/2, MFA-Conformer's), "conv2d1", "conv2d",
            "conv2d6" or "conv2d8".
        normalize_before: Pre-LayerNorm (True) or post-LayerNorm blocks.
        mfa: Multi-scale feature aggregation (see :class:`TransformerSpeakerEncoder`).
        timesteps: T, the time window of the spiking neurons.
        firing: "imls", "mls" or "multistep".
        attention: "hd_repssa_softmax", "hd_repssa_linear", "repssa_softmax",
            "repssa_linear" or "sdsa3".
        momentum: alpha of the IMLS running maximum (Eq. 11).
        threshold: Firing threshold of "mls" and "multistep" neurons.
        leak: beta of "multistep" neurons (1.0 = IF, < 1 = LIF).
        surrogate_alpha: Arctan surrogate sharpness of "multistep" neurons.
        decay_layer_start: Index l of the first block in ``phi(l) = 1 - 2^(-5-l)``.
        sdsa_scale: Scale of the SDSA-3 product.
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
    ):
        _check_structure(
            output_size, attention_heads, linear_units, num_blocks, input_layer,
            dropout_rate, positional_dropout_rate, attention_dropout_rate,
        )
        _check_options(
            output_size=output_size,
            attention_heads=attention_heads,
            num_blocks=num_blocks,
            input_layer=input_layer,
            timesteps=timesteps,
            firing=firing,
            attention=attention,
            momentum=momentum,
            threshold=threshold,
            leak=leak,
            input_layers=SPK_INPUT_LAYERS,
        )
        super().__init__(
            input_size, output_size, num_blocks, dropout_rate,
            positional_dropout_rate, input_layer, normalize_before, mfa,
        )
        self.timesteps = timesteps
        self.firing = firing
        self.attention = attention
        self.decay_layer_start = decay_layer_start
        self.encoders = build_spiking_blocks(
            output_size=output_size,
            attention_heads=attention_heads,
            linear_units=linear_units,
            num_blocks=num_blocks,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            normalize_before=normalize_before,
            timesteps=timesteps,
            firing=firing,
            attention=attention,
            momentum=momentum,
            threshold=threshold,
            leak=leak,
            surrogate_alpha=surrogate_alpha,
            decay_layer_start=decay_layer_start,
            sdsa_scale=sdsa_scale,
        )
        self._add_final_norm()

    def _block_outputs(
        self, xs: torch.Tensor, valid: torch.Tensor
    ) -> List[torch.Tensor]:
        batch = xs.size(0)
        multistep = self.firing == "multistep"
        if multistep:
            # direct encoding: the same input at each of T steps, time outermost
            xs = xs.unsqueeze(0).expand(self.timesteps, *xs.shape).flatten(0, 1)
            valid = valid.repeat(self.timesteps, 1)
        outputs = []
        for block in self.encoders:
            xs = block(xs, valid)
            if multistep:
                outputs.append(xs.view(self.timesteps, batch, *xs.shape[1:]).mean(0))
            else:
                outputs.append(xs)
        return outputs


class SpikeDrivenTransformerSpeakerEncoder(IMLSpikeformerSpeakerEncoder):
    """Spike-driven Transformer speaker encoder: SDSA-3, multi-step LIF, no BatchNorm.

    :class:`IMLSpikeformerSpeakerEncoder` with ``firing`` fixed to ``multistep`` and
    ``attention`` to ``sdsa3`` (not arguments, so a config cannot change the baseline).

    Args:
        input_size: Input feature dimension.
        output_size: Model dimension D of each block.
        attention_heads: Number of heads (must divide ``output_size``).
        linear_units: Hidden units of the spiking ChannelMLP.
        num_blocks: Number of blocks.
        dropout_rate: Dropout on branch outputs and in the subsampling.
        positional_dropout_rate: Dropout after the positional encoding.
        attention_dropout_rate: Unused by SDSA-3; kept for config compatibility.
        input_layer: "conv2d2", "conv2d1", "conv2d", "conv2d6" or "conv2d8".
        normalize_before: Pre-LayerNorm (True) or post-LayerNorm blocks.
        mfa: Multi-scale feature aggregation (see :class:`TransformerSpeakerEncoder`).
        timesteps: T, the number of simulated time steps.
        threshold: Firing threshold of the LIF neurons.
        leak: beta of the LIF neurons (1.0 = IF).
        surrogate_alpha: Arctan surrogate sharpness.
        sdsa_scale: Scale of the SDSA-3 product.
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
        super().__init__(
            input_size=input_size,
            output_size=output_size,
            attention_heads=attention_heads,
            linear_units=linear_units,
            num_blocks=num_blocks,
            dropout_rate=dropout_rate,
            positional_dropout_rate=positional_dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            input_layer=input_layer,
            normalize_before=normalize_before,
            mfa=mfa,
            timesteps=timesteps,
            firing="multistep",
            attention="sdsa3",
            threshold=threshold,
            leak=leak,
            surrogate_alpha=surrogate_alpha,
            sdsa_scale=sdsa_scale,
        )
