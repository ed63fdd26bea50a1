"""ESPnet's convolutional subsampling run in time chunks and recomputed in backward.

ESPnet's ``Conv2dSubsampling*`` input layers (``input_layer: conv2d``, ``conv2d6``, ...)
keep the first convolution's output for backward, ``(B, odim, T/2, F/2)`` values: the
largest activation of an ASR training step (about 300 MB in bf16 at 30k input frames),
allocated again with its gradient and cuDNN workspaces at each batch's own size, so the
caching allocator ends up holding a segment per size it met (the floor rows of
bench/README.md: 2.99 GiB reserved for 1.05 GiB allocated).

:func:`subsample` runs the same convolutions over chunks of output frames whose feature
maps stay under :data:`ELEMENTS_PER_CHUNK` values each, channels-last (cuDNN's layout in
half precision: no layout conversions), and keeps only the input features and its own
output (which ESPnet's output Linear keeps anyway: the last ReLU's mask). Backward
recomputes each chunk's maps but the last (for ``conv2d``: the first convolution, from one
input channel, little work), every chunk of a batch at one shape. Parameters and
state-dict names are the module's. The sums are the same, but cuDNN picks its algorithms
per shape, so outputs equal the module's to rounding, not bit for bit (the one fast path
that is not; the GPU check gives the differences, and the spiking blocks amplify any
rounding difference: bench/README.md), and weight gradients are summed over chunks.
"""

import dataclasses
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

from espnet_imlspike.fast import enabled, has_hooks

# values of the largest feature map one chunk computes (64 MiB in bf16)
ELEMENTS_PER_CHUNK = 1 << 25
_announced = False  # the first use is logged, as the CUDA graphs' captures are
_STOCK_TYPES = (Conv2dSubsampling, Conv2dSubsampling1, Conv2dSubsampling2,
                Conv2dSubsampling6, Conv2dSubsampling8)


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Kernel and stride (time, frequency) and output channels of each convolution."""

    kernels: Tuple[Tuple[int, int], ...]
    strides: Tuple[Tuple[int, int], ...]
    channels: Tuple[int, ...]

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

    def chunks(self, batch: int, frames: int, freq: int) -> List[Tuple[int, int, int, int]]:
        """(first, end) output rows and (first, end) input rows of each chunk."""
        total = self.out_size(frames, 0)
        low, high = 1, total  # the most output rows whose maps fit (at least one row)
        while low < high:
            middle = (low + high + 1) // 2
            if self._largest(batch, freq, middle) <= ELEMENTS_PER_CHUNK:
                low = middle
            else:
                high = middle - 1
        step = low
        stride = 1
        for s in self.strides:
            stride *= s[0]
        out = []
        for first in range(0, total, step):
            end = min(first + step, total)
            out.append((first, end, first * stride, first * stride + self.rows(end - first)[0]))
        return out

    def _largest(self, batch: int, freq: int, out_rows: int) -> int:
        rows, largest = self.rows(out_rows), 0
        for index, channels in enumerate(self.channels):
            freq = (freq - self.kernels[index][1]) // self.strides[index][1] + 1
            largest = max(largest, batch * channels * rows[index + 1] * freq)
        return largest


def _convolutions(embed: torch.nn.Module) -> Optional[List[torch.nn.Conv2d]]:
    """The Conv2d layers of an ESPnet conv-subsampling module of the stock form
    (Conv2d, ReLU)*, unpadded, undilated, from one input channel; None otherwise."""
    if type(embed) not in _STOCK_TYPES or not isinstance(embed.conv, torch.nn.Sequential):
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
    return convs


def applies(embed: Optional[torch.nn.Module], xs: torch.Tensor) -> bool:
    """Whether :func:`subsample` replaces ``embed(xs, None)``: fast paths on for ``xs``,
    ``IMLSPIKE_CHUNKED_INPUT`` not ``0``, not compiling or tracing, no hooks on the layer
    (the energy report counts its operations), the stock conv-subsampling form."""
    if embed is None or not enabled(xs) or os.environ.get("IMLSPIKE_CHUNKED_INPUT") == "0":
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or has_hooks(embed):
        return False
    return _convolutions(embed) is not None


def subsample(embed: torch.nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """``embed(xs, None)[0]`` for features ``xs`` (B, T, F) (see :func:`applies`)."""
    convs = _convolutions(embed)
    geometry = _Geometry(
        tuple(c.kernel_size for c in convs), tuple(c.stride for c in convs),
        tuple(c.out_channels for c in convs))
    params = []
    for conv in convs:
        params += [conv.weight, conv.bias]
    global _announced
    if not _announced:
        _announced = True
        logging.info("spiking encoder: input layer %s in time chunks of <= %d values per map,"
                     " recomputed in backward (IMLSPIKE_CHUNKED_INPUT=0: ESPnet's module)",
                     type(embed).__name__, ELEMENTS_PER_CHUNK)
    flat = _ChunkedConvolutions.apply(xs, geometry, *params)
    out = embed.out(flat)
    if not isinstance(embed.out, torch.nn.Sequential):  # Conv2dSubsampling8
        out = embed.pos_enc(out)
    return out


def _maps(strides, params, rows: torch.Tensor) -> torch.Tensor:
    """ReLU(conv(...)) of the layers with these strides over input rows (B, 1, rows, F)
    (or a previous map), channels-last: cuDNN's layout in half precision."""
    h = rows.contiguous(memory_format=torch.channels_last)
    for index, stride in enumerate(strides):
        weight = params[2 * index].contiguous(memory_format=torch.channels_last)
        h = torch.nn.functional.conv2d(h, weight, params[2 * index + 1], stride).relu_()
    return h


def _padded(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``tensor`` zero-padded at the end of ``dim`` to ``size``."""
    if tensor.size(dim) == size:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [0, size - tensor.size(dim)]
    return torch.nn.functional.pad(tensor, pad)


class _ChunkedConvolutions(torch.autograd.Function):
    """(B, T, F) features -> (B, T', C * F') flattened maps, as ESPnet's ``out`` reads them.

    Keeps the features and its own output (which ESPnet's output Linear keeps anyway:
    the last ReLU's mask); backward recomputes every map but the last, chunk by chunk.
    """

    @staticmethod
    def forward(ctx, xs, geometry, *params):
        device = xs.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.geometry = geometry
        batch, frames, freq = xs.shape
        out = None
        for first, end, in_first, in_end in geometry.chunks(batch, frames, freq):
            h = _maps(geometry.strides, params, xs[:, None, in_first:in_end])
            if out is None:
                out = h.new_empty(batch, geometry.out_size(frames, 0), h.size(1), h.size(3))
            out[:, first:end] = h.transpose(1, 2)
        flat = out.flatten(2)
        ctx.save_for_backward(xs, flat, *params)
        return flat

    @staticmethod
    def backward(ctx, grad_flat):
        xs, flat, *params = ctx.saved_tensors
        geometry, (autocast, dtype) = ctx.geometry, ctx.autocast
        batch, frames, freq = xs.shape
        channels = geometry.channels[-1]
        out = flat.view(batch, flat.size(1), channels, -1)
        grad = grad_flat.view(out.shape)
        leaves = [p.detach().requires_grad_(needs)
                  for p, needs in zip(params[:-2], ctx.needs_input_grad[2:-2])]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grad_xs = torch.zeros_like(xs) if ctx.needs_input_grad[0] else None
        totals = [None] * (len(wanted) + 2)
        chunks = geometry.chunks(batch, frames, freq)
        step = chunks[0][1] - chunks[0][0]
        in_rows = geometry.rows(step)[0]
        accumulate = torch.promote_types(params[-2].dtype, torch.float32)  # last layer's
        with torch.enable_grad(), torch.autocast(xs.device.type, dtype, enabled=autocast):
            for first, end, in_first, in_end in chunks:
                # the last chunk zero-padded to the others' shape (one convolution shape
                # per batch size: cuDNN's plans are reused); its padded output rows get
                # zero gradient, so they add nothing
                rows = _padded(xs[:, None, in_first:in_end].detach(), 2, in_rows)
                rows.requires_grad_(grad_xs is not None)
                # the last layer's ReLU from the output kept, its convolution by hand
                grad_out = _padded(grad[:, first:end] * (out[:, first:end] > 0), 1, step)
                below = _maps(geometry.strides[:-1], leaves, rows)
                weight = params[-2].to(below.dtype).contiguous(
                    memory_format=torch.channels_last)
                inputs = wanted + ([rows] if grad_xs is not None else [])
                grad_below, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                    grad_out.permute(0, 2, 1, 3).to(below.dtype), below, weight, [channels],
                    list(geometry.strides[-1]), [0, 0], [1, 1], False, [0, 0], 1,
                    [bool(inputs), *ctx.needs_input_grad[-2:]])
                grads = list(torch.autograd.grad(below, inputs, grad_below)) if inputs else []
                for index, g in enumerate(grads[:len(wanted)] + [grad_weight, grad_bias]):
                    if g is None:  # a frozen last layer
                        continue
                    g = g.to(accumulate) if index >= len(wanted) else g
                    totals[index] = g if totals[index] is None else totals[index].add_(g)
                if grad_xs is not None:
                    grad_xs[:, in_first:in_end] += grads[-1][:, 0, :in_end - in_first]
        by_leaf = dict(zip(map(id, wanted), totals))
        last = [total.to(p.dtype) if needs else None for total, p, needs in
                zip(totals[-2:], params[-2:], ctx.needs_input_grad[-2:])]
        return (grad_xs, None, *[by_leaf.get(id(leaf)) for leaf in leaves], *last)
