"""Spiking Transformer encoders for ESPnet's ASR task (AbsEncoder).

:class:`SpikingTransformerEncoder` is the neutral encoder: ESPnet's TransformerEncoder
front (every input layer ESPnet's Transformer accepts), its LayerNorms, intermediate
and self-conditioned CTC (``interctc_layer_idx``, ``interctc_use_conditioning``), its
forward contract ``(xs_pad, ilens, prev_states=None, ctc=None) -> (out, olens, None)``,
and the spiking blocks of Eq. 4 made by the neuron/attention/MLP factories it is given.
Two presets are registered in ESPnet: :class:`IMLSpikeformerEncoder` (IMLS neurons and
HD-RepSSA by default; every option open, for ablations) and
:class:`SpikeDrivenTransformerEncoder` (the baseline: SDSA-3 with multi-step LIF neurons,
fixed). With the same sizes they have exactly the parameters of ESPnet's
TransformerEncoder: IMLS thresholds are buffers.
"""

from typing import List, Optional, Tuple

import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.pytorch_backend.transformer.layer_norm import LayerNorm
from typeguard import typechecked

from espnet_imlspike.encoders.common import (
    SUBSAMPLING,
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
from espnet_imlspike.encoders.options import SpikingOptions
from espnet_imlspike.encoders.state_forms import guard_state_dict_form
from espnet_imlspike.errors import OptionError
from espnet_imlspike.fast import block as fast_block
from espnet_imlspike.fast import compiled_blocks
from espnet_imlspike.fast import graphs_enabled
from espnet_imlspike.fast.graphs import EncoderGraphs
from espnet_imlspike.fast.ranks import graphs_allowed_in_process_group, in_process_group


class SpikingTransformerEncoder(AbsEncoder):
    """A spiking Transformer encoder built from an options object and block factories.

    Args:
        input_size: Input feature dimension (vocabulary size for input_layer "embed").
        options: The encoder's options (kept as ``self.options``).
        factories: (neuron, attention, mlp) factories for
            :func:`~espnet_imlspike.encoders.common.build_spiking_blocks`; the training
            form's by default.
        interctc_layer_idx: Blocks (1-based) whose normalised output feeds
            intermediate CTC, as in ESPnet's TransformerEncoder.
        interctc_use_conditioning: Add ``Linear(softmax(CTC(out)))`` back to the
            residual stream after those blocks (self-conditioned CTC; ESPnet's model
            creates ``conditioning_layer`` and passes ``ctc=``).
        padding_idx: Padding id of input_layer "embed".
        form: "training" or "deploy": the state-dict form this encoder accepts.
    """

    def __init__(
        self,
        input_size: int,
        options: SpikingOptions,
        factories=None,
        interctc_layer_idx: Tuple[int, ...] = (),
        interctc_use_conditioning: bool = False,
        padding_idx: int = -1,
        form: str = "training",
    ):
        super().__init__()
        interctc_layer_idx = tuple(interctc_layer_idx)
        if interctc_layer_idx and not (
            0 < min(interctc_layer_idx) and max(interctc_layer_idx) < options.num_blocks
        ):
            raise OptionError(
                f"interctc_layer_idx must name blocks 1..{options.num_blocks - 1}, "
                f"got {list(interctc_layer_idx)}"
            )
        self.options = options
        self.input_size = input_size
        self.embed = make_input_layer(options, input_size, options.dropout_rate, padding_idx)
        self.min_input_frames = minimum_input_frames(self.embed)
        self.encoders = build_spiking_blocks(
            options, *(factories or training_factories(options))
        )
        if options.normalize_before:
            self.after_norm = LayerNorm(options.output_size)
        self.interctc_layer_idx = interctc_layer_idx
        self.interctc_use_conditioning = interctc_use_conditioning
        self.conditioning_layer = None
        self._graphs = EncoderGraphs()
        compiled_blocks.register(self)
        guard_state_dict_form(self, form)

    def __setstate__(self, state):
        super().__setstate__(state)  # a copy or an unpickled encoder: a new instance
        compiled_blocks.register(self)

    # read-only views of the options, for code that inspects a built encoder
    timesteps = property(lambda self: self.options.timesteps)
    firing = property(lambda self: self.options.firing)
    attention = property(lambda self: self.options.attention)
    input_layer = property(lambda self: self.options.input_layer)
    normalize_before = property(lambda self: self.options.normalize_before)

    def output_size(self) -> int:
        return self.options.output_size

    def embed_input(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Checked input -> (embedded (B, L', D), output lengths, valid mask)."""
        check_batch(
            xs_pad, ilens, self.input_size, self.min_input_frames,
            token_input=self.input_layer == "embed", validate_values=not self.training,
        )
        if self.embed is None:
            xs = xs_pad
        elif self.input_layer in ("linear", "embed") or self.input_layer is None:
            xs = self.embed(xs_pad)
        else:
            xs = conv_subsample(self.embed, xs_pad)
        olens = subsampled_lengths(ilens, self.input_layer)
        return xs, olens, valid_frames(olens, xs.size(1))

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
        ctc=None,
    ):
        """Encode padded features.

        Args:
            xs_pad: Input features (B, L, input_size) (token ids (B, L) for "embed").
            ilens: Number of valid frames per utterance (B,), integers.
            prev_states: Not used.
            ctc: ESPnet's CTC module, for self-conditioned intermediate CTC.

        Returns:
            Encoded sequence (B, L', output_size) (with intermediate CTC: the tuple
            (encoded, [(block, normalised block output), ...]) as ESPnet's encoders
            return it), output lengths (B,), None. Utterances too short for the
            subsampling have output length 0.
        """
        xs, olens, valid = self.embed_input(xs_pad, ilens)
        scale = SUBSAMPLING.get(self.input_layer, 1)
        if (compiled_blocks.applies(xs) and not self.training
                and self._blocks_graphable(xs_pad, ilens)):  # compiled inference
            return compiled_blocks.run(self, xs, olens, scale), olens, None
        if self._graphable(xs_pad, ilens):  # the blocks as CUDA graphs (fast.graphs)
            out = self._graphs.run(self, self._graph_core, xs, olens, scale)
            if out is not None:
                return out, olens, None
        time = TimeFolding(self.options, xs.size(0))
        xs, valid = time.fold(xs, valid)
        intermediate: List[Tuple[int, torch.Tensor]] = []
        for index, block in enumerate(self.encoders, start=1):
            xs = block(xs, valid)
            if index in self.interctc_layer_idx:
                out = self._normalise(time.unfold(xs))
                intermediate.append((index, out))
                if self.interctc_use_conditioning:
                    xs = time.add(xs, self.conditioning_layer(ctc.softmax(out)))
        xs = self._normalise(time.unfold(xs))
        if intermediate:
            return (xs, intermediate), olens, None
        return xs, olens, None

    def _normalise(self, xs: torch.Tensor) -> torch.Tensor:
        return self.after_norm(xs) if self.normalize_before else xs

    def _graphable(self, xs_pad: torch.Tensor, ilens: Optional[torch.Tensor]) -> bool:
        """The encoder may run as CUDA graphs: fast paths on, CUDA, every block on the
        fast path, no intermediate CTC, no hooks, not compiling, under a process
        group only with NCCL (fast.ranks)."""
        if torch.compiler.is_compiling() or not graphs_enabled(xs_pad):
            return False
        return self._blocks_graphable(xs_pad, ilens)

    def _blocks_graphable(self, xs_pad: torch.Tensor, ilens: Optional[torch.Tensor]) -> bool:
        """The conditions of :meth:`_graphable` besides the device and compiling (those
        of :mod:`~espnet_imlspike.fast.compiled_blocks` too)."""
        if torch.jit.is_tracing() or ilens is None or self.interctc_layer_idx:
            return False
        if self.input_layer == "embed" or getattr(self, "_is_replica", False):
            return False  # (DataParallel replicas are new modules at every call)
        if in_process_group() and not graphs_allowed_in_process_group():
            return False
        return all(fast_block.supported(b) for b in self.encoders)  # graphs check hooks

    def _graph_core(self, xs: torch.Tensor, olens: torch.Tensor) -> torch.Tensor:
        """What the graphs capture: the blocks and the final LayerNorm, from the input
        layer's output. The input layer runs eagerly: its large activations and cuDNN
        workspaces (ESPnet's convolutional subsampling) would otherwise be held in the
        graphs' memory pool beside the eager cache, for every bucket shape."""
        valid = valid_frames(olens, xs.size(1))
        for block in self.encoders:
            xs = block(xs, valid)
        return self._normalise(xs)


class IMLSpikeformerEncoder(SpikingTransformerEncoder):
    """IML-Spikeformer encoder (paper Fig. 1b): IMLS neurons and HD-RepSSA.

    Every option is open, for the Table V ablations (``firing``, ``attention``, ...).
    The spiking options are documented in
    :class:`~espnet_imlspike.encoders.options.SpikingOptions`.

    Args:
        input_size: Input feature dimension.
        interctc_layer_idx: Blocks (1-based) for intermediate CTC.
        interctc_use_conditioning: Self-conditioned intermediate CTC.
        padding_idx: Padding id of input_layer "embed".
        **options: see SpikingOptions (output_size ... linear_attention_norm).
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
        input_layer: Optional[str] = "conv2d",
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
        linear_attention_norm: str = "none",
        interctc_layer_idx: List[int] = [],
        interctc_use_conditioning: bool = False,
        padding_idx: int = -1,
    ):
        super().__init__(
            input_size,
            SpikingOptions.from_arguments(locals()),
            interctc_layer_idx=tuple(interctc_layer_idx),
            interctc_use_conditioning=interctc_use_conditioning,
            padding_idx=padding_idx,
        )


class SpikeDrivenTransformerEncoder(SpikingTransformerEncoder):
    """Spike-driven Transformer baseline: SDSA-3 with iterative multi-step LIF neurons.

    ``firing`` (multistep) and ``attention`` (sdsa3, BatchNorm removed as in the paper)
    are fixed, not arguments, so a config cannot silently turn the baseline into
    something else. Defaults follow the Spike-driven Transformer: LIF leak 0.5
    (tau = 2), threshold 1. The other options are documented in
    :class:`~espnet_imlspike.encoders.options.SpikingOptions`.

    Args:
        input_size: Input feature dimension.
        interctc_layer_idx: Blocks (1-based) for intermediate CTC.
        interctc_use_conditioning: Self-conditioned intermediate CTC.
        padding_idx: Padding id of input_layer "embed".
        **options: see SpikingOptions.
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
        input_layer: Optional[str] = "conv2d",
        normalize_before: bool = True,
        timesteps: int = 6,
        threshold: float = 1.0,
        leak: float = 0.5,
        surrogate_alpha: float = 2.0,
        sdsa_scale: float = 0.125,
        interctc_layer_idx: List[int] = [],
        interctc_use_conditioning: bool = False,
        padding_idx: int = -1,
    ):
        super().__init__(
            input_size,
            SpikingOptions.from_arguments(
                locals(), firing="multistep", attention="sdsa3", momentum=0.1,
                decay_layer_start=1, linear_attention_norm="none",
            ),
            interctc_layer_idx=tuple(interctc_layer_idx),
            interctc_use_conditioning=interctc_use_conditioning,
            padding_idx=padding_idx,
        )
