"""The streaming IML-Spikeformer encoder: causal HD-RepSSA, chunk-wise evaluation.

:class:`IMLSpikeformerStreamingEncoder` (``encoder: iml_spikeformer_streaming``) is
:class:`~espnet_imlspike.encoders.asr.SpikingTransformerEncoder` with causal attention
(:mod:`.causal_attention`): trained and decoded on full utterances by ESPnet's stock
``asr_train`` / ``asr_inference``, and evaluated chunk by chunk with outputs equal to the
full utterance's (:class:`ChunkwiseEncoding`). Everything else in a block (LayerNorm,
IMLS neurons with thresholds frozen in eval, ChannelMLP, residuals) is frame-wise.
"""

import dataclasses
from typing import List, Optional

import torch
from espnet.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from typeguard import typechecked

from espnet_imlspike.attention import decay_factor
from espnet_imlspike.encoders.asr import SpikingTransformerEncoder
from espnet_imlspike.encoders.common import check_batch, training_factories
from espnet_imlspike.encoders.options import SpikingOptions
from espnet_imlspike.energy.flops import spiking_block_costs, transformer_block_costs
from espnet_imlspike.energy.ops import conv_front_costs
from espnet_imlspike.errors import InputError
from espnet_imlspike.streaming.cache import StreamState
from espnet_imlspike.streaming.causal_attention import CausalHDRepSSA
from espnet_imlspike.streaming.front import ChunkedFront
from espnet_imlspike.streaming.options import StreamingOptions, check_streamable


def causal_pairs(length: int, left_context: int) -> int:
    """(query, key) pairs a causal map of ``length`` frames computes."""
    if left_context <= 0 or left_context >= length:
        return length * (length + 1) // 2
    return left_context * (left_context + 1) // 2 + (length - left_context) * left_context


class ChunkwiseEncoding:
    """Mixin for a SpikingTransformerEncoder whose attention modules are causal.

    ``forward(..., infer_mode=True)`` is the contract of ESPnet's streaming decoder
    (``Speech2TextStreaming``): features of one chunk in, the encoder frames they
    complete out, with the state to pass back (None after ``is_final``).
    """

    left_context = 0

    def init_stream(self) -> StreamState:
        """A fresh state for a new utterance."""
        return StreamState(len(self.encoders), self.left_context)

    @torch.no_grad()
    def encode_chunk(
        self, features: torch.Tensor, state: StreamState, is_final: bool = False, ctc=None
    ) -> torch.Tensor:
        """Encode one chunk of features (N, F, input_size), every frame valid.

        Returns the encoder frames (N, n, output_size) the chunk completes (n >= 0);
        ``state`` is updated. Raises ESPnet's ``TooShortUttError`` when a stream ends
        without any encoder frame, as the full-utterance encoder does.
        """
        if self.training:
            raise InputError(
                "chunk-wise encoding needs eval mode (IMLS thresholds frozen); call .eval()"
            )
        check_batch(features, None, self.input_size, 0)
        xs, used = ChunkedFront(self.embed, self.input_layer)(state, features, is_final)
        if xs.size(1):
            valid = torch.ones(xs.shape[:2], dtype=torch.bool, device=xs.device)
            for index, (block, cache) in enumerate(zip(self.encoders, state.layers), start=1):
                with block.self_attn.streaming(cache):
                    xs = block(xs, valid)
                if index in self.interctc_layer_idx and self.interctc_use_conditioning:
                    if ctc is None:
                        raise InputError("self-conditioned CTC needs ctc= when streaming")
                    xs = xs + self.conditioning_layer(ctc.softmax(self._normalise(xs)))
            xs = self._normalise(xs)
            self.count_chunk(used, xs.size(1), xs.size(0))
        if is_final and state.emitted == 0:
            raise TooShortUttError(
                f"has {state.consumed + used} frames and is too short for subsampling "
                f"(it needs at least {self.min_input_frames} frames)",
                state.consumed, self.min_input_frames,
            )
        return xs

    def count_chunk(self, input_frames: int, output_frames: int, batch: int) -> None:
        """Hook for forms that count operations (the deploy form)."""

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[StreamState] = None,
        ctc=None,
        is_final: bool = True,
        infer_mode: bool = False,
    ):
        """Encode a full utterance (``infer_mode`` False) or one chunk of a stream.

        Args:
            xs_pad: Features (B, L, input_size).
            ilens: Valid frames (B,); in a chunk every frame must be valid.
            prev_states: The stream's state (None: a new stream).
            ctc: ESPnet's CTC module (self-conditioned intermediate CTC).
            is_final: The chunk ends the stream.
            infer_mode: Chunk-wise evaluation (ESPnet's streaming contract).

        Returns:
            Full utterance: as SpikingTransformerEncoder. Chunk: (frames (B, n, D),
            lengths (B,) all n, the state to pass with the next chunk or None).
        """
        if not infer_mode:
            return super().forward(xs_pad, ilens, prev_states, ctc)
        if ilens is not None and bool((ilens != xs_pad.size(1)).any()):
            raise InputError("chunk-wise encoding takes chunks without padding "
                             f"(ilens {ilens.tolist()}, chunk of {xs_pad.size(1)} frames)")
        state = prev_states if prev_states is not None else self.init_stream()
        xs = self.encode_chunk(xs_pad, state, is_final, ctc)
        lengths = torch.full((xs.size(0),), xs.size(1), dtype=torch.long, device=xs.device)
        return xs, lengths, None if is_final else state

    def layer_costs(self, in_frames: int, out_frames: int, ann: bool = False) -> List:
        """FLOPs of one utterance for the energy report: the attention products count
        the causal (query, key) pairs only (the same pairs chunk-wise evaluation
        computes); HD-RepSSA in its fused inference form; the ANN twin is a causal
        Transformer of the same size."""
        size = self.output_size()
        units = self.encoders[0].feed_forward.w_1.out_features
        square = out_frames * out_frames
        pairs = causal_pairs(out_frames, self.left_context)
        costs = conv_front_costs(self.embed, in_frames, self.input_size)
        for index, block in enumerate(self.encoders):
            prefix = f"encoders.{index}"
            block_costs = (transformer_block_costs(prefix, out_frames, size, units,
                                                   block.self_attn.heads) if ann
                           else spiking_block_costs(prefix, block, out_frames, size, units, True))
            for cost in block_costs:
                if square and cost.name.endswith((".scores", ".context")):
                    # no LayerShape for a causal map (its fan-out varies per query), so
                    # the memory-aware model of the report is left out for this encoder
                    cost = dataclasses.replace(cost, flops=cost.flops // square * pairs,
                                               shape=None)
                costs.append(cost)
        return costs


def causal_training_factories(options: SpikingOptions, left_context: int):
    """The training form's neuron and MLP factories with causal HD-RepSSA."""
    neuron, _, mlp = training_factories(options)

    def attention(index: int) -> CausalHDRepSSA:
        name = options.attention
        return CausalHDRepSSA(
            options.output_size, options.attention_heads,
            lambda: neuron(options.output_size), name.rsplit("_", 1)[1],
            _decay(options, index), options.attention_dropout_rate,
            options.linear_attention_norm, left_context,
        )

    return neuron, attention, mlp


def _decay(options: SpikingOptions, index: int) -> Optional[float]:
    if not options.attention.startswith("hd_"):
        return None
    return decay_factor(options.decay_layer_start + index)


class IMLSpikeformerStreamingEncoder(ChunkwiseEncoding, SpikingTransformerEncoder):
    """IML-Spikeformer with causal HD-RepSSA, trainable by ESPnet and streamable.

    Same parameters as :class:`~espnet_imlspike.encoders.asr.IMLSpikeformerEncoder`
    (a checkpoint of one loads into the other; the attention is what differs). Firing
    "imls" or "mls"; attention HD-RepSSA or RepSSA (softmax or linear). The spiking
    options are documented in :class:`~espnet_imlspike.encoders.options.SpikingOptions`.

    Args:
        input_size: Input feature dimension.
        left_context: Encoder frames each query attends to, itself included
            (0 = all past frames; > 0 bounds the streaming cache).
        interctc_layer_idx: Blocks (1-based) for intermediate CTC.
        interctc_use_conditioning: Self-conditioned intermediate CTC.
        padding_idx: Unused (no "embed" input layer); kept for ESPnet's signature.
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
        decay_layer_start: int = 1,
        linear_attention_norm: str = "none",
        left_context: int = 0,
        interctc_layer_idx: List[int] = [],
        interctc_use_conditioning: bool = False,
        padding_idx: int = -1,
    ):
        options = SpikingOptions.from_arguments(
            locals(), leak=1.0, surrogate_alpha=2.0, sdsa_scale=0.125
        )
        check_streamable(options)
        StreamingOptions(left_context)
        super().__init__(
            input_size, options, causal_training_factories(options, left_context),
            interctc_layer_idx=tuple(interctc_layer_idx),
            interctc_use_conditioning=interctc_use_conditioning,
            padding_idx=padding_idx,
        )
        self.left_context = left_context
