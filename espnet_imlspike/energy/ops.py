"""Counting operations: the deploy form's op counter and the convolutional front's MACs.

Measurement lives here, beside the FLOPs of :mod:`.flops`; the deploy form (which
counts while it runs) imports it, never the other way round.
"""

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch


@dataclass(frozen=True)
class LayerShape:
    """What the memory-aware energy model (:mod:`.memory_model`) needs of a layer.

    For one utterance: ``frames`` L, ``fan_in`` input channels per frame, ``fan_out``
    accumulators one input event updates (FLOPs = L x fan_in x fan_out), the sizes (in
    words) of the operand read per accumulate (``operand_words``: the weights of a linear
    layer, the projected map of ``(X W_QK) X^T``), of the accumulator buffer
    (``output_words``) and of the input buffer (``input_words``), ``bias`` additions per
    frame (0 for activation products), ``event_extra`` accumulates each input event
    adds beyond its fan-out (the fused map's bias terms, 2H), and ``dense_input_reads``
    (a convolution re-reads its input once per tap, as SpikingJelly's Lemaire counter
    charges it; a linear layer reads each input once).
    """

    frames: int
    fan_in: int
    fan_out: int
    operand_words: int
    output_words: int
    input_words: int
    bias: int = 0
    event_extra: int = 0
    dense_input_reads: Optional[int] = None


@dataclass
class LayerCost:
    name: str
    flops: int
    source: Optional[str]  # neuron layer feeding this layer, None = real-valued input
    shape: Optional[LayerShape] = None  # for the memory model; None: not priced there


def linear_shape(frames: int, fan_in: int, fan_out: int, bias: bool = True,
                 event_extra: int = 0, operand_words: Optional[int] = None) -> LayerShape:
    """The shape of a (bias) linear layer applied to ``frames`` frames."""
    return LayerShape(frames, fan_in, fan_out,
                      operand_words if operand_words is not None else fan_in * fan_out,
                      frames * fan_out, frames * fan_in, fan_out if bias else 0, event_extra)


class OpCounter:
    """Per-layer operation counts over valid frames only.

    ``counts[layer][kind]`` with kinds ``ac`` (accumulates triggered by binary spikes),
    ``mac`` (multiply-accumulates of real-valued synaptic layers), ``spikes`` (binary
    spikes received), and ``other`` (non-synaptic element operations: LayerNorm,
    softmax, HDM product, residual additions, neuron updates).
    """

    def __init__(self):
        self.enabled = False
        self.counts: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, layer: str, kind: str, amount) -> None:
        if self.enabled:
            self.counts[layer][kind] += int(amount)

    @contextmanager
    def paused(self):
        """Run something (e.g. re-computing a map for a plot) without counting it."""
        enabled, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = enabled


def conv_front_costs(embed, in_frames: int, features: int) -> List[LayerCost]:
    """MACs of ESPnet's Conv2dSubsampling* (or a linear embedding) for one utterance."""
    if embed is None:
        return []
    if isinstance(embed, torch.nn.Linear):  # input_layer None with a width change
        return [_linear_cost("embed", in_frames, embed)]
    if isinstance(embed, torch.nn.Sequential):  # input_layer linear / embed
        first = embed[0]
        if isinstance(first, torch.nn.Linear):
            return [_linear_cost("embed.linear", in_frames, first)]
        return []  # an embedding table lookup is no arithmetic
    costs, frames, freq = [], in_frames, features
    for index, layer in enumerate(embed.conv):
        if isinstance(layer, torch.nn.Conv2d):
            kernel, stride = layer.kernel_size[0], layer.stride[0]
            in_words = frames * freq * layer.in_channels
            frames = (frames - kernel) // stride + 1
            freq = (freq - kernel) // stride + 1
            taps = layer.in_channels * kernel * kernel
            macs = frames * freq * layer.out_channels * taps
            # as a layer over frames x bins positions: fan-in = taps, fan-out = channels
            shape = LayerShape(frames * freq, taps, layer.out_channels,
                               layer.out_channels * taps, frames * freq * layer.out_channels,
                               in_words, layer.out_channels, dense_input_reads=macs)
            costs.append(LayerCost(f"embed.conv.{index}", macs, None, shape))
    costs.append(_linear_cost("embed.out", frames, embed.out[0]))
    return costs


def _linear_cost(name: str, frames: int, linear: torch.nn.Linear) -> LayerCost:
    shape = linear_shape(frames, linear.in_features, linear.out_features,
                         linear.bias is not None)
    return LayerCost(name, frames * linear.in_features * linear.out_features, None, shape)
