"""IML-Spikeformer and Spike-driven Transformer encoders for ESPnet (AbsEncoder).

Both encoders keep ESPnet's TransformerEncoder front (Conv2dSubsampling* or the
linear embedding with absolute positional encoding), its LayerNorms and its forward
contract ``(xs_pad, ilens, prev_states=None) -> (out, olens, None)``, and replace each
block with the spiking block of Eq. 4. With the same sizes they have exactly the
parameters of ESPnet's TransformerEncoder: IMLS thresholds are buffers.

Masks are built from the exact output lengths of the subsampling, not by subsampling
the input mask as ESPnet does (that keeps one frame whose conv window reaches into the
padding), so outputs of valid frames do not depend on how much padding a batch has.
"""

from typing import Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding
from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from espnet.nets.pytorch_backend.transformer.subsampling import (
    Conv2dSubsampling,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
    TooShortUttError,
)
from typeguard import typechecked

from espnet_imlspike.attention import ATTENTION_TYPES, make_attention
from espnet_imlspike.layers import SpikingChannelMLP, SpikingTransformerBlock
from espnet_imlspike.neurons import FIRING_TYPES, make_neuron

INPUT_LAYERS = ("conv2d", "conv2d6", "conv2d8", "linear")


def subsampled_lengths(lengths: torch.Tensor, input_layer: str) -> torch.Tensor:
    """Number of output frames of ESPnet's subsampling for each input length.

    conv2d: two (k=3, s=2) convs; conv2d6: (3, 2) then (5, 3); conv2d8: three (3, 2).
    """
    if input_layer == "conv2d":
        return ((lengths - 1) // 2 - 1) // 2
    if input_layer == "conv2d6":
        return ((lengths - 1) // 2 - 2) // 3
    if input_layer == "conv2d8":
        return (((lengths - 1) // 2 - 1) // 2 - 1) // 2
    return lengths


MIN_INPUT_FRAMES = {"conv2d": 7, "conv2d6": 11, "conv2d8": 15, "linear": 1}


def valid_frames(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B, L) bool mask, True on unpadded frames (no host sync, unlike make_pad_mask)."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def build_spiking_blocks(
    output_size: int,
    attention_heads: int,
    linear_units: int,
    num_blocks: int,
    dropout_rate: float,
    attention_dropout_rate: float,
    normalize_before: bool,
    timesteps: int,
    firing: str,
    attention: str,
    momentum: float,
    threshold: float,
    leak: float,
    surrogate_alpha: float,
    decay_layer_start: int,
    sdsa_scale: float,
) -> torch.nn.ModuleList:
    """The stack of spiking blocks (Eq. 4) shared by the ASR and speaker encoders.

    Block ``index`` uses the HDM layer ``decay_layer_start + index``. Options are not
    validated here (see :func:`_check_options`).

    Returns:
        ModuleList of ``num_blocks`` :class:`SpikingTransformerBlock`, each taking
        ``(x, valid)`` with x (N, L, output_size).
    """

    def neuron_for(channels: int):
        return lambda: make_neuron(
            firing, channels, timesteps, momentum, threshold, leak, surrogate_alpha
        )

    return torch.nn.ModuleList(
        SpikingTransformerBlock(
            output_size,
            make_attention(
                attention,
                output_size,
                attention_heads,
                neuron_for(output_size),
                layer=decay_layer_start + index,
                dropout_rate=attention_dropout_rate,
                sdsa_scale=sdsa_scale,
            ),
            SpikingChannelMLP(output_size, linear_units, neuron_for(linear_units)),
            neuron_for(output_size),
            dropout_rate,
            normalize_before,
        )
        for index in range(num_blocks)
    )


class IMLSpikeformerEncoder(AbsEncoder):
    """IML-Spikeformer encoder (paper Fig. 1b): IMLS neurons and HD-RepSSA.

    Args:
        input_size: Input feature dimension.
        output_size: Model dimension D.
        attention_heads: Number of attention heads (must divide ``output_size``).
        linear_units: Hidden units of the spiking ChannelMLP.
        num_blocks: Number of blocks.
        dropout_rate: Dropout on branch outputs and in the subsampling.
        positional_dropout_rate: Dropout after positional encoding (linear input).
        attention_dropout_rate: Dropout on softmax attention weights.
        input_layer: "conv2d", "conv2d6", "conv2d8" or "linear".
        normalize_before: Pre-LayerNorm (True) or post-LayerNorm blocks.
        timesteps: T, the time window of the spiking neurons.
        firing: "imls" (input-aware multi-level), "mls" (fixed-threshold
            multi-level) or "multistep" (iterative T-step IF/LIF with BPTT).
        attention: "hd_repssa_softmax", "hd_repssa_linear", "repssa_softmax",
            "repssa_linear" or "sdsa3".
        momentum: alpha of the IMLS running maximum (Eq. 11).
        threshold: Firing threshold of "mls" and "multistep" neurons.
        leak: beta of "multistep" neurons (1.0 = IF, < 1 = LIF).
        surrogate_alpha: Arctan surrogate sharpness of "multistep" neurons.
        decay_layer_start: Index l of the first block in ``phi(l) = 1 - 2^(-5-l)``;
            1 (default) gives phi = 1 - 2^-6 in the first block.
        sdsa_scale: Scale of the SDSA-3 product.
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d",
        normalize_before: bool = True,
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
        super().__init__()
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
        )
        self._output_size = output_size
        self.input_size = input_size
        self.input_layer = input_layer
        self.timesteps = timesteps
        self.firing = firing
        self.attention = attention
        self.normalize_before = normalize_before
        self.decay_layer_start = decay_layer_start
        self.min_input_frames = MIN_INPUT_FRAMES[input_layer]

        if input_layer == "conv2d":
            self.embed = Conv2dSubsampling(input_size, output_size, dropout_rate)
        elif input_layer == "conv2d6":
            self.embed = Conv2dSubsampling6(input_size, output_size, dropout_rate)
        elif input_layer == "conv2d8":
            self.embed = Conv2dSubsampling8(input_size, output_size, dropout_rate)
        else:
            self.embed = torch.nn.Sequential(
                torch.nn.Linear(input_size, output_size),
                torch.nn.LayerNorm(output_size),
                torch.nn.Dropout(dropout_rate),
                torch.nn.ReLU(),
                PositionalEncoding(output_size, positional_dropout_rate),
            )

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
        if normalize_before:
            self.after_norm = LayerNorm(output_size)

    def output_size(self) -> int:
        return self._output_size

    def _check_input(self, xs_pad: torch.Tensor, ilens: torch.Tensor) -> None:
        if xs_pad.dim() != 3 or xs_pad.size(-1) != self.input_size:
            raise ValueError(
                f"expected features of shape (batch, frames, {self.input_size}), "
                f"got {tuple(xs_pad.shape)}"
            )
        if ilens.dim() != 1 or ilens.size(0) != xs_pad.size(0):
            raise ValueError(
                f"ilens must have one length per utterance ({xs_pad.size(0)}), "
                f"got shape {tuple(ilens.shape)}"
            )
        if torch.compiler.is_compiling():
            return
        if not torch.isfinite(xs_pad).all():
            raise ValueError("input features contain NaN or Inf values")
        shortest = int(ilens.min()) if ilens.numel() else 0
        if min(shortest, xs_pad.size(1)) < self.min_input_frames:
            raise TooShortUttError(
                f"an utterance has {min(shortest, xs_pad.size(1))} frames; "
                f"input_layer={self.input_layer} needs at least "
                f"{self.min_input_frames} frames",
                min(shortest, xs_pad.size(1)),
                self.min_input_frames,
            )

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Encode padded features.

        Args:
            xs_pad: Input features (B, L, input_size).
            ilens: Number of valid frames per utterance (B,).
            prev_states: Not used.

        Returns:
            Encoded sequence (B, L', output_size), output lengths (B,), None.
        """
        self._check_input(xs_pad, ilens)
        if isinstance(self.embed, torch.nn.Sequential):
            xs = self.embed(xs_pad)
        else:
            xs, _ = self.embed(xs_pad, None)
        olens = subsampled_lengths(ilens, self.input_layer)
        valid = valid_frames(olens, xs.size(1))

        batch = xs.size(0)
        if self.firing == "multistep":
            # Direct input encoding: the same input at each of T steps, folded into
            # the batch dimension (time outermost).
            xs = xs.unsqueeze(0).expand(self.timesteps, *xs.shape).flatten(0, 1)
            valid = valid.repeat(self.timesteps, 1)
        for block in self.encoders:
            xs = block(xs, valid)
        if self.firing == "multistep":
            xs = xs.view(self.timesteps, batch, *xs.shape[1:]).mean(0)
        if self.normalize_before:
            xs = self.after_norm(xs)
        return xs, olens, None


class SpikeDrivenTransformerEncoder(IMLSpikeformerEncoder):
    """Spike-driven Transformer baseline: SDSA-3 with iterative multi-step LIF neurons.

    :class:`IMLSpikeformerEncoder` with the firing fixed to ``multistep`` and the
    attention fixed to ``sdsa3`` (BatchNorm removed, as in the paper); these two are
    not arguments, so a config cannot silently turn the baseline into something else.
    Defaults follow the Spike-driven Transformer: LIF leak 0.5 (tau = 2), threshold 1.

    Args:
        input_size: Input feature dimension.
        output_size: Model dimension D.
        attention_heads: Number of heads (must divide ``output_size``).
        linear_units: Hidden units of the spiking ChannelMLP.
        num_blocks: Number of blocks.
        dropout_rate: Dropout on branch outputs and in the subsampling.
        positional_dropout_rate: Dropout after positional encoding (linear input).
        attention_dropout_rate: Unused by SDSA-3; kept for config compatibility.
        input_layer: "conv2d", "conv2d6", "conv2d8" or "linear".
        normalize_before: Pre-LayerNorm (True) or post-LayerNorm blocks.
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
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d",
        normalize_before: bool = True,
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
            timesteps=timesteps,
            firing="multistep",
            attention="sdsa3",
            threshold=threshold,
            leak=leak,
            surrogate_alpha=surrogate_alpha,
            sdsa_scale=sdsa_scale,
        )


def _check_options(
    output_size: int,
    attention_heads: int,
    num_blocks: int,
    input_layer: str,
    timesteps: int,
    firing: str,
    attention: str,
    momentum: float,
    threshold: float,
    leak: float,
    input_layers: Tuple[str, ...] = INPUT_LAYERS,
) -> None:
    """Reject bad configuration values with an error that names the option."""
    if firing not in FIRING_TYPES:
        raise ValueError(f"firing must be one of {FIRING_TYPES}, got {firing!r}")
    if attention not in ATTENTION_TYPES:
        raise ValueError(
            f"attention must be one of {ATTENTION_TYPES}, got {attention!r}"
        )
    if input_layer not in input_layers:
        raise ValueError(
            f"input_layer must be one of {input_layers}, got {input_layer!r}"
        )
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if output_size < 1 or num_blocks < 1:
        raise ValueError(
            f"output_size and num_blocks must be >= 1, got {output_size}, {num_blocks}"
        )
    if attention_heads < 1 or output_size % attention_heads != 0:
        raise ValueError(
            f"attention_heads={attention_heads} must divide output_size={output_size}"
        )
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1], got {momentum}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f"leak must be in [0, 1], got {leak}")
