"""What the spiking encoders share: input layers, exact output lengths, masks, blocks.

Masks are built from the exact output lengths of the subsampling, not by subsampling
the input mask as ESPnet does (that keeps one frame whose conv window reaches into the
padding), so outputs of valid frames do not depend on how much padding a batch has.
An utterance shorter than its subsampling needs simply has no valid output frame: it
cannot abort the batch it is in (only a batch whose padded length is too short raises
ESPnet's ``TooShortUttError``, as ESPnet's encoders do).
"""

from typing import Callable, Optional, Tuple

import torch
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding
from espnet.nets.pytorch_backend.transformer.subsampling import (
    TooShortUttError,
    check_short_utt,
)

from espnet_imlspike.attention import make_attention
from espnet_imlspike.encoders.options import SpikingOptions
from espnet_imlspike.errors import InputError
from espnet_imlspike.fast import subsampling
from espnet_imlspike.layers import SpikingChannelMLP, SpikingTransformerBlock
from espnet_imlspike.neurons import SpikingNeuron, make_neuron

CONV_SUBSAMPLING = subsampling.STOCK_MODULES  # input_layer name -> ESPnet's module

NeuronFactory = Callable[[int], SpikingNeuron]  # channels -> neuron


def make_input_layer(
    options: SpikingOptions, input_size: int, conv_pos_dropout: float, padding_idx: int = -1
) -> Optional[torch.nn.Module]:
    """ESPnet's TransformerEncoder input layer for ``options.input_layer``.

    Args:
        options: Encoder options.
        input_size: Feature dimension (vocabulary size for "embed").
        conv_pos_dropout: Dropout of the positional encoding inside the conv
            subsampling (ESPnet's ASR Transformer uses ``dropout_rate``, its speaker
            encoders ``positional_dropout_rate``).
        padding_idx: Padding id of the "embed" layer.

    Returns:
        The module, or None (input_layer None with ``input_size == output_size``).
    """
    size, layer = options.output_size, options.input_layer
    if layer in CONV_SUBSAMPLING:
        return CONV_SUBSAMPLING[layer](
            input_size, size, options.dropout_rate,
            PositionalEncoding(size, conv_pos_dropout),
        )
    if layer == "linear":
        return torch.nn.Sequential(
            torch.nn.Linear(input_size, size),
            torch.nn.LayerNorm(size),
            torch.nn.Dropout(options.dropout_rate),
            torch.nn.ReLU(),
            PositionalEncoding(size, options.positional_dropout_rate),
        )
    if layer == "embed":
        return torch.nn.Sequential(
            torch.nn.Embedding(input_size, size, padding_idx=padding_idx),
            PositionalEncoding(size, options.positional_dropout_rate),
        )
    return None if input_size == size else torch.nn.Linear(input_size, size)


def conv_subsample(embed: torch.nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """``embed(xs, None)[0]`` for a conv-subsampling input layer; on the fast path in
    time chunks recomputed in backward (:mod:`espnet_imlspike.fast.subsampling`)."""
    if subsampling.applies(embed, xs):
        return subsampling.subsample(embed, xs)
    return embed(xs, None)[0]


# input frames per output frame of ESPnet's subsampling input layers (others: 1)
SUBSAMPLING = {"conv2d": 4, "conv2d2": 2, "conv2d6": 6, "conv2d8": 8}


def subsampled_lengths(lengths: torch.Tensor, input_layer) -> torch.Tensor:
    """Output frames of ESPnet's input layer for each input length (>= 0).

    conv2d: two (k=3, s=2) convs; conv2d1: two (3, 1); conv2d2: (3, 2) then (3, 1);
    conv2d6: (3, 2) then (5, 3); conv2d8: three (3, 2); other layers keep the length.
    """
    if input_layer == "conv2d":
        lengths = ((lengths - 1) // 2 - 1) // 2
    elif input_layer == "conv2d1":
        lengths = lengths - 4
    elif input_layer == "conv2d2":
        lengths = (lengths - 1) // 2 - 2
    elif input_layer == "conv2d6":
        lengths = ((lengths - 1) // 2 - 2) // 3
    elif input_layer == "conv2d8":
        lengths = (((lengths - 1) // 2 - 1) // 2 - 1) // 2
    return lengths.clamp(min=0)


def minimum_input_frames(embed: Optional[torch.nn.Module]) -> int:
    """Fewest input frames that give one output frame (ESPnet's ``check_short_utt``)."""
    if embed is None:
        return 1
    too_short, limit = check_short_utt(embed, 0)
    return limit if too_short else 1


def valid_frames(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """(B, L) bool mask, True on unpadded frames (no host sync, unlike make_pad_mask)."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def check_batch(
    xs_pad: torch.Tensor,
    ilens: Optional[torch.Tensor],
    input_size: int,
    min_frames: int,
    token_input: bool = False,
    validate_values: bool = True,
) -> None:
    """Reject input the encoder cannot process, with errors that name the problem.

    Shape and dtype checks cost nothing; ``validate_values`` adds the checks that read
    the data (finite features, lengths within the padded length), one host sync, which
    the encoders run outside training (in training ESPnet's model trims the batch to
    its longest utterance, and a non-finite batch must reach ESPnet's trainer, which
    skips it, rather than abort the run).
    """
    if token_input:
        if xs_pad.dim() != 2 or xs_pad.is_floating_point():
            raise InputError(
                f"input_layer=embed expects token ids of shape (batch, length), got "
                f"{xs_pad.dtype} {tuple(xs_pad.shape)}"
            )
    elif xs_pad.dim() != 3 or xs_pad.size(-1) != input_size:
        raise InputError(
            f"expected features of shape (batch, frames, {input_size}), "
            f"got {tuple(xs_pad.shape)}"
        )
    if ilens is not None:
        if ilens.dim() != 1 or ilens.size(0) != xs_pad.size(0):
            raise InputError(
                f"ilens must have one length per utterance ({xs_pad.size(0)}), "
                f"got shape {tuple(ilens.shape)}"
            )
        if ilens.is_floating_point() or ilens.dtype == torch.bool:
            raise InputError(f"ilens must hold integer frame counts, got {ilens.dtype}")
    if xs_pad.size(1) < min_frames:
        raise TooShortUttError(
            f"has {xs_pad.size(1)} frames and is too short for subsampling "
            f"(it needs at least {min_frames} frames)",
            xs_pad.size(1),
            min_frames,
        )
    if not validate_values or torch.compiler.is_compiling():
        return
    longest = int(ilens.max()) if ilens is not None and ilens.numel() else 0
    finite = token_input or bool(torch.isfinite(xs_pad).all())
    if longest > xs_pad.size(1):
        raise InputError(
            f"ilens has a length {longest} longer than the {xs_pad.size(1)} input frames"
        )
    if not finite:
        raise InputError("input features contain NaN or Inf values")


def training_factories(options: SpikingOptions):
    """Neuron, attention and MLP factories of the training form."""

    def neuron(channels: int) -> SpikingNeuron:
        return make_neuron(
            options.firing, channels, options.timesteps, options.momentum,
            options.threshold, options.leak, options.surrogate_alpha,
        )

    def attention(index: int) -> torch.nn.Module:
        return make_attention(
            options.attention, options.output_size, options.attention_heads,
            lambda: neuron(options.output_size),
            layer=options.decay_layer_start + index,
            dropout_rate=options.attention_dropout_rate,
            sdsa_scale=options.sdsa_scale,
            linear_norm=options.linear_attention_norm,
        )

    def mlp() -> torch.nn.Module:
        return SpikingChannelMLP(
            options.output_size, options.linear_units,
            lambda: neuron(options.linear_units),
        )

    return neuron, attention, mlp


def build_spiking_blocks(
    options: SpikingOptions,
    neuron: NeuronFactory,
    attention: Callable[[int], torch.nn.Module],
    mlp: Callable[[], torch.nn.Module],
) -> torch.nn.ModuleList:
    """The stack of spiking blocks of Eq. 4.

    Args:
        options: Encoder options (sizes, dropout, normalize_before).
        neuron: channels -> spiking neuron (the blocks' input neurons).
        attention: block index -> attention module (block index i uses the HDM layer
            ``decay_layer_start + i``).
        mlp: -> ChannelMLP module.

    Returns:
        ModuleList of ``num_blocks`` :class:`SpikingTransformerBlock`.
    """
    return torch.nn.ModuleList(
        SpikingTransformerBlock(
            options.output_size,
            attention(index),
            mlp(),
            lambda: neuron(options.output_size),
            options.dropout_rate,
            options.normalize_before,
        )
        for index in range(options.num_blocks)
    )


class TimeFolding:
    """Direct input encoding of multi-step firing: the same input at each of T steps,
    folded into the batch dimension (time outermost); read out as the mean over steps.
    Identity for multi-level firing (one step simulates all T)."""

    def __init__(self, options: SpikingOptions, batch: int):
        self.steps = options.timesteps if options.firing == "multistep" else 1
        self.batch = batch

    def fold(self, xs: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.steps == 1:
            return xs, valid
        xs = xs.unsqueeze(0).expand(self.steps, *xs.shape).flatten(0, 1)
        return xs, valid.repeat(self.steps, 1)

    def unfold(self, xs: torch.Tensor) -> torch.Tensor:
        if self.steps == 1:
            return xs
        return xs.view(self.steps, self.batch, *xs.shape[1:]).mean(0)

    def add(self, xs: torch.Tensor, per_utterance: torch.Tensor) -> torch.Tensor:
        """``xs + per_utterance`` at every folded step."""
        if self.steps == 1:
            return xs + per_utterance
        return xs + per_utterance.repeat(self.steps, 1, 1)
