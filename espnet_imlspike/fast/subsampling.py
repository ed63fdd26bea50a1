"""ESPnet's convolutional subsampling run in time chunks and recomputed in backward.

ESPnet's ``Conv2dSubsampling*`` input layers (``input_layer: conv2d``, ``conv2d6``, ...)
keep the first convolution's output for backward, ``(B, odim, T/2, F/2)`` values: the
largest activation of an ASR training step (about 300 MB in bf16 at 30k input frames),
allocated again with its gradient and cuDNN workspaces at each batch's own size, so the
caching allocator ends up holding a segment per size it met (the floor rows of
bench/README.md: 2.99 GiB reserved for 1.05 GiB allocated).

:func:`subsample` computes the forward as the module does (the same convolutions at the
batch's shape: bit-identical output) but keeps only the input features; backward
recomputes the convolutions over chunks of output frames whose feature maps stay under
:data:`ELEMENTS_PER_CHUNK` values each (a third more convolution work), channels-last
(cuDNN's native layout in half precision: no layout conversions), every chunk of a batch
at one shape. Parameters and
state-dict names are the module's; weight gradients are summed over chunks (equal up to
the order of float sums).
"""

import dataclasses
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
    flat = _ChunkedConvolutions.apply(xs, geometry, *params)
    out = embed.out(flat)
    if not isinstance(embed.out, torch.nn.Sequential):  # Conv2dSubsampling8
        out = embed.pos_enc(out)
    return out


def _chunk_maps(geometry: _Geometry, params, rows: torch.Tensor) -> torch.Tensor:
    """ReLU(conv(...)) of every layer over input rows (B, rows, F), channels-last."""
    h = rows.unsqueeze(1).contiguous(memory_format=torch.channels_last)
    for index, stride in enumerate(geometry.strides):
        weight, bias = params[2 * index], params[2 * index + 1]
        weight = weight.contiguous(memory_format=torch.channels_last)
        h = torch.nn.functional.conv2d(h, weight, bias, stride).relu_()
    return h


class _ChunkedConvolutions(torch.autograd.Function):
    """(B, T, F) features -> (B, T', C * F') flattened maps, as ESPnet's ``out`` reads them."""

    @staticmethod
    def forward(ctx, xs, geometry, *params):
        device = xs.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.geometry = geometry
        ctx.save_for_backward(xs, *params)
        # the stock arithmetic at the batch's shape (bit-identical output); nothing kept
        h = xs.unsqueeze(1)
        for index, stride in enumerate(geometry.strides):
            h = torch.nn.functional.conv2d(h, params[2 * index], params[2 * index + 1],
                                           stride).relu_()
        return h.transpose(1, 2).flatten(2)

    @staticmethod
    def backward(ctx, grad_flat):
        xs, *params = ctx.saved_tensors
        geometry, (autocast, dtype) = ctx.geometry, ctx.autocast
        batch, frames, freq = xs.shape
        grad = grad_flat.view(batch, grad_flat.size(1), geometry.channels[-1], -1)
        leaves = [p.detach().requires_grad_(needs)
                  for p, needs in zip(params, ctx.needs_input_grad[2:])]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grad_xs = torch.zeros_like(xs) if ctx.needs_input_grad[0] else None
        totals = [None] * len(wanted)
        chunks = geometry.chunks(batch, frames, freq)
        step = chunks[0][1] - chunks[0][0]
        with torch.enable_grad(), torch.autocast(xs.device.type, dtype, enabled=autocast):
            for first, end, in_first, in_end in chunks:
                rows, grad_out = xs[:, in_first:in_end].detach(), grad[:, first:end]
                if end - first < step:
                    # the last chunk zero-padded to the others' shape (one convolution
                    # shape per batch size: cuDNN's plans are reused); the padded output
                    # rows get zero gradient, so they add nothing
                    missing = geometry.rows(step)[0] - rows.size(1)
                    rows = torch.nn.functional.pad(rows, (0, 0, 0, missing))
                    grad_out = torch.nn.functional.pad(
                        grad_out, (0, 0, 0, 0, 0, step - (end - first)))
                rows.requires_grad_(grad_xs is not None)
                h = _chunk_maps(geometry, leaves, rows)
                inputs = wanted + ([rows] if grad_xs is not None else [])
                grads = torch.autograd.grad(h, inputs, grad_out.permute(0, 2, 1, 3))
                for index, g in enumerate(grads[:len(wanted)]):
                    totals[index] = g if totals[index] is None else totals[index].add_(g)
                if grad_xs is not None:
                    grad_xs[:, in_first:in_end] += grads[-1][:, :in_end - in_first]
        by_leaf = dict(zip(map(id, wanted), totals))
        return (grad_xs, None, *[by_leaf.get(id(leaf)) for leaf in leaves])
