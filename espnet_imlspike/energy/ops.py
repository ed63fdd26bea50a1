"""Counting operations: the deploy form's op counter and the convolutional front's MACs.

Measurement lives here, beside the FLOPs of :mod:`.flops`; the deploy form (which
counts while it runs) imports it, never the other way round.
"""

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch


@dataclass
class LayerCost:
    name: str
    flops: int
    source: Optional[str]  # neuron layer feeding this layer, None = real-valued input


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
        return [LayerCost("embed", in_frames * embed.in_features * embed.out_features, None)]
    if isinstance(embed, torch.nn.Sequential):  # input_layer linear / embed
        first = embed[0]
        if isinstance(first, torch.nn.Linear):
            macs = in_frames * first.in_features * first.out_features
            return [LayerCost("embed.linear", macs, None)]
        return []  # an embedding table lookup is no arithmetic
    costs, frames, freq = [], in_frames, features
    for index, layer in enumerate(embed.conv):
        if isinstance(layer, torch.nn.Conv2d):
            kernel, stride = layer.kernel_size[0], layer.stride[0]
            frames = (frames - kernel) // stride + 1
            freq = (freq - kernel) // stride + 1
            macs = frames * freq * layer.out_channels * layer.in_channels * kernel * kernel
            costs.append(LayerCost(f"embed.conv.{index}", macs, None))
    linear = embed.out[0]
    costs.append(LayerCost("embed.out", frames * linear.in_features * linear.out_features, None))
    return costs
