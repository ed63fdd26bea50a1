"""ESPnet's convolutional subsampling run in time chunks and recomputed in backward.

ESPnet's ``Conv2dSubsampling*`` input layers (``input_layer: conv2d``, ``conv2d6``, ...)
keep the first convolution's output for backward, ``(B, odim, T/2, F/2)`` values: the
largest activation of an ASR training step (about 300 MB in bf16 at 30k input frames),
allocated again with its gradient and cuDNN workspaces at each batch's own size, so the
caching allocator ends up holding a segment per size it met (the floor rows of
bench/README.md: 2.99 GiB reserved for 1.05 GiB allocated).

:func:`subsample` runs the same convolutions over chunks of output frames whose feature
maps stay under :data:`ELEMENTS_PER_CHUNK` values each (chunks of at least
:data:`MIN_ROWS_PER_CHUNK` output frames), channels-last (cuDNN's layout in
half precision: no layout conversions), with the module's output Linear reading each
chunk's last map where it lies (its weight's columns reordered to the map's layout once per
call): ESPnet's flattening ``(B, T', C * F')`` and its gradient, each allocated whole at
every batch's own size, do not exist. Autograd keeps the input features, and the last map
(as the Linear's rows, the flattening's bytes) unless its convolution is cheap to run
again (:data:`RECOMPUTE_MACS_PER_VALUE`: AISHELL's ``conv2d`` at 256 units is, 2304
multiply-adds per value; LibriSpeech's ``conv2d6`` at 512 is not, 12800). Backward
recomputes each chunk's other maps (for ``conv2d``: the first convolution, from one input
channel, little work), every chunk of a batch at one shape in forward and backward, and
runs the Linear's and each layer's backward by hand with the operations autograd would run
(products with the weight, ``convolution_backward``, ``threshold_backward``, the latter in
place; the same results, without an autograd graph per chunk, each map freed once its
layer is done: at most a map and its gradient of one layer alive, not the three maps
autograd holds at a ReLU, and nothing of a chunk alive into the next). On CUDA the first
layer (one input channel: little arithmetic, the largest map) is one Triton kernel per
chunk, its backward another (:mod:`.input_kernels`; five passes over that map in forward
and three in backward before). Parameters and state-dict names are the module's. The sums
are the same, but cuDNN picks its algorithms per shape (and the kernels and the reordered
Linear sum in their own order), so outputs equal the module's to rounding, not bit for bit
(the one fast path that is not; the GPU check gives the differences, and the spiking
blocks amplify any rounding difference: bench/README.md), and weight gradients are summed
over chunks. Under ``torch.compile`` in inference (no gradient) the layer is one opaque
operator, :func:`conv_subsampling`, which the compiled graph calls instead of tracing the
module's convolutions; a compiled graph that needs gradients traces the module.
"""

import dataclasses
import functools
import logging
import os
from typing import List, Optional, Tuple

import torch

from espnet.nets.pytorch_backend.transformer.subsampling import (
    Conv2dSubsampling,
    Conv2dSubsampling1,
    Conv2dSubsampling2,
    Conv2dSubsampling6,
    Conv2dSubsampling8,
)

from espnet_imlspike.errors import OptionError
from espnet_imlspike.fast import MODES, enabled, has_hooks
from espnet_imlspike.fast.chunked_input_layer import (
    ChunkedInputLayer,
    autocast_dtype,
    chunked_forward,
    kept_prepared_weights,
)

# values of the largest feature map one chunk computes (64 MiB in bf16) ...
ELEMENTS_PER_CHUNK = 1 << 25
# ... unless that leaves fewer output rows: batches of hundreds of utterances (ESPnet's numel
# batches) then ran 50 chunks of 1-2 rows, each recomputing the overlap of its first map
# (5 rows of conv2d6's for 1 output row, 26 for 8) with its own launches and host work
MIN_ROWS_PER_CHUNK = 8
# compiled inference (:func:`conv_subsampling`) keeps nothing for backward: its chunks only
# bound the maps alive at once (512 MiB in bf16), and fewer chunks launch fewer kernels
INFERENCE_ELEMENTS_PER_CHUNK = 1 << 28
# the last map is recomputed in backward, not kept, when its convolution costs at most this
# many multiply-adds per value (taps x input channels): ESPnet's conv2d at 256 units
# (AISHELL's recipe: 2304) is recomputed, conv2d6 at 512 (LibriSpeech's: 12800) kept
# (bench/README.md: what each costs); IMLSPIKE_RECOMPUTE_LAST_MAP=1/0 decides for every layer
RECOMPUTE_MACS_PER_VALUE = 4096
_announced = False  # the first use is logged, as the CUDA graphs' captures are
# ESPnet's conv-subsampling modules by their ``input_layer`` names (the encoders build them)
STOCK_MODULES = {"conv2d": Conv2dSubsampling, "conv2d1": Conv2dSubsampling1,
                 "conv2d2": Conv2dSubsampling2, "conv2d6": Conv2dSubsampling6,
                 "conv2d8": Conv2dSubsampling8}


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Kernel and stride (time, frequency) and output channels of each convolution."""

    kernels: Tuple[Tuple[int, int], ...]
    strides: Tuple[Tuple[int, int], ...]
    channels: Tuple[int, ...]

    @classmethod
    def of_layers(cls, convs: List[torch.nn.Conv2d]) -> "_Geometry":
        return cls(tuple(c.kernel_size for c in convs), tuple(c.stride for c in convs),
                   tuple(c.out_channels for c in convs))

    @classmethod
    def from_flat(cls, kernels: List[int], strides: List[int], channels: List[int]
                  ) -> "_Geometry":
        """The inverse of :meth:`flat` (the operator's arguments)."""
        return cls(tuple(zip(kernels[0::2], kernels[1::2])),
                   tuple(zip(strides[0::2], strides[1::2])), tuple(channels))

    def flat(self) -> Tuple[List[int], List[int], List[int]]:
        """Kernels and strides as flat (time, frequency) pairs, and the channels: the
        integer lists :func:`conv_subsampling` takes."""
        return ([k for pair in self.kernels for k in pair],
                [s for pair in self.strides for s in pair], list(self.channels))

    def out_size(self, size: int, axis: int) -> int:
        for kernel, stride in zip(self.kernels, self.strides):
            size = (size - kernel[axis]) // stride[axis] + 1
        return size

    def rows(self, out_rows: int) -> List[int]:
        """Rows of the input and of every map that ``out_rows`` output rows need."""
        rows = [out_rows]
        for kernel, stride in zip(reversed(self.kernels), reversed(self.strides)):
            rows.append((rows[-1] - 1) * stride[0] + kernel[0])
        return rows[::-1]

    def chunks(self, batch: int, frames: int, freq: int, budget: Optional[int] = None
               ) -> List[Tuple[int, int, int, int]]:
        """(first, end) output rows and (first, end) input rows of each chunk, whose maps
        have at most ``budget`` values (default :data:`ELEMENTS_PER_CHUNK`); planned once
        per shape (a search over row counts: host time at every call otherwise)."""
        budget = ELEMENTS_PER_CHUNK if budget is None else budget
        return list(self._plan(batch, frames, freq, budget, MIN_ROWS_PER_CHUNK))

    @functools.lru_cache(maxsize=1024)
    def _plan(self, batch: int, frames: int, freq: int, budget: int, min_rows: int
              ) -> Tuple[Tuple[int, int, int, int], ...]:
        total = self.out_size(frames, 0)
        low, high = 1, total  # the most output rows whose maps fit (at least one row)
        while low < high:
            middle = (low + high + 1) // 2
            if self._largest(batch, freq, middle) <= budget:
                low = middle
            else:
                high = middle - 1
        step = max(low, min(min_rows, total))
        stride = 1
        for s in self.strides:
            stride *= s[0]
        out = []
        for first in range(0, total, step):
            end = min(first + step, total)
            out.append((first, end, first * stride, first * stride + self.rows(end - first)[0]))
        return tuple(out)

    def recomputes_last(self) -> bool:
        """Whether backward recomputes the last map instead of keeping it
        (:data:`RECOMPUTE_MACS_PER_VALUE`, ``IMLSPIKE_RECOMPUTE_LAST_MAP``)."""
        switch = os.environ.get("IMLSPIKE_RECOMPUTE_LAST_MAP", "auto")
        if switch not in MODES:
            raise OptionError(f"IMLSPIKE_RECOMPUTE_LAST_MAP must be one of {MODES}, "
                              f"got {switch!r}")
        if switch != "auto":
            return switch == "1"
        kernel = self.kernels[-1][0] * self.kernels[-1][1]
        inputs = self.channels[-2] if len(self.channels) > 1 else 1
        return kernel * inputs <= RECOMPUTE_MACS_PER_VALUE

    def _largest(self, batch: int, freq: int, out_rows: int) -> int:
        rows, largest = self.rows(out_rows), 0
        for index, channels in enumerate(self.channels):
            freq = (freq - self.kernels[index][1]) // self.strides[index][1] + 1
            largest = max(largest, batch * channels * rows[index + 1] * freq)
        return largest


def _convolutions(embed: torch.nn.Module) -> Optional[List[torch.nn.Conv2d]]:
    """The Conv2d layers of an ESPnet conv-subsampling module of the stock form
    (Conv2d, ReLU)*, unpadded, undilated, from one input channel, whose output layer
    begins with a Linear with a bias (:func:`_output_layers`); None otherwise."""
    if (type(embed) not in STOCK_MODULES.values()
            or not isinstance(embed.conv, torch.nn.Sequential)):
        return None
    layers = list(embed.conv)
    convs, relus = layers[0::2], layers[1::2]
    if len(convs) != len(relus) or not convs or convs[0].in_channels != 1:
        return None
    for conv in convs:
        if (type(conv) is not torch.nn.Conv2d or conv.padding != (0, 0) or conv.groups != 1
                or conv.dilation != (1, 1) or conv.padding_mode != "zeros"):
            return None
    if not all(type(relu) is torch.nn.ReLU for relu in relus):
        return None
    linear, _ = _output_layers(embed)
    if type(linear) is not torch.nn.Linear or linear.bias is None:
        return None
    return convs


def _output_layers(embed: torch.nn.Module) -> Tuple[torch.nn.Module, List[torch.nn.Module]]:
    """The Linear that reads the flattened maps, and the modules after it (the positional
    encoding): ``out = Sequential(Linear, pos_enc)``, or ``out = Linear`` then ``pos_enc``
    (``Conv2dSubsampling8``)."""
    if isinstance(embed.out, torch.nn.Sequential):
        return embed.out[0], list(embed.out)[1:]
    return embed.out, [embed.pos_enc]


def applies(embed: Optional[torch.nn.Module], xs: torch.Tensor) -> bool:
    """Whether :func:`subsample` replaces ``embed(xs, None)``: fast paths on for ``xs``,
    ``IMLSPIKE_CHUNKED_INPUT`` not ``0``, not tracing or exporting (an exported program
    keeps ESPnet's operations: portable), not compiling a graph that needs gradients
    (``torch.compile`` in inference runs the layer as one opaque operator), no
    hooks on the layer (the energy report counts its operations), the stock
    conv-subsampling form."""
    if embed is None or not enabled(xs) or os.environ.get("IMLSPIKE_CHUNKED_INPUT") == "0":
        return False
    if torch.compiler.is_compiling() and (torch.is_grad_enabled()
                                          or not torch.compiler.is_dynamo_compiling()):
        return False  # torch.export (non-strict by default: no dynamo) keeps ESPnet's ops
    if torch.jit.is_tracing() or has_hooks(embed):
        return False
    return _convolutions(embed) is not None


def subsample(embed: torch.nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """``embed(xs, None)[0]`` for features ``xs`` (B, T, F) (see :func:`applies`)."""
    convs = _convolutions(embed)
    geometry = _Geometry.of_layers(convs)
    linear, after = _output_layers(embed)
    params = [p for conv in convs for p in (conv.weight, conv.bias)]
    params += [linear.weight, linear.bias]
    if torch.compiler.is_compiling():  # inference (applies): the chunks as one operator
        out = conv_subsampling(xs, params, *geometry.flat(), autocast_dtype(xs.device.type))
    else:
        _announce(embed, geometry)
        out = ChunkedInputLayer.apply(xs, geometry, *params)
    for module in after:
        out = module(out)
    return out


def _announce(embed: torch.nn.Module, geometry: _Geometry) -> None:
    """Log the chunked layer's first use (as the CUDA graphs log their captures)."""
    global _announced
    if not _announced:
        _announced = True
        logging.info("spiking encoder: input layer %s in time chunks of <= %d values per map,"
                     " recomputed in backward (the last map %s; IMLSPIKE_CHUNKED_INPUT=0: "
                     "ESPnet's module)", type(embed).__name__, ELEMENTS_PER_CHUNK,
                     "too" if geometry.recomputes_last() else "kept")


@torch.library.custom_op("imlspike::conv_subsampling", mutates_args=())
def conv_subsampling(xs: torch.Tensor, params: List[torch.Tensor], kernels: List[int],
                     strides: List[int], channels: List[int],
                     dtype: Optional[torch.dtype]) -> torch.Tensor:
    """The chunked layer's forward as one operator, for ``torch.compile`` in inference:
    the compiler then runs ESPnet's subsampling as this package computes it (its Triton
    first convolution, channels-last chunks) instead of tracing the module's convolutions.
    ``dtype``: the autocast dtype where the call was traced (None: off); no gradient."""
    geometry = _Geometry.from_flat(kernels, strides, channels)
    with torch.autocast(xs.device.type, enabled=False):  # the dtype is explicit
        prepared = kept_prepared_weights(params, channels[-1], dtype)
        return chunked_forward(xs, geometry, params, dtype, INFERENCE_ELEMENTS_PER_CHUNK,
                               prepared)[0]


@conv_subsampling.register_fake
def _conv_subsampling_shape(xs, params, kernels, strides, channels, dtype):
    frames = _Geometry.from_flat(kernels, strides, channels).out_size(xs.size(1), 0)
    return xs.new_empty(xs.size(0), frames, params[-1].size(0),
                        dtype=dtype or params[-1].dtype)
