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
half precision: no layout conversions), and keeps only the input features and its own
output (which ESPnet's output Linear keeps anyway: the last ReLU's mask). Backward
recomputes each chunk's maps but the last (for ``conv2d``: the first convolution, from one
input channel, little work), every chunk of a batch at one shape, and runs each layer's
backward by hand with the aten operations autograd would run (``convolution_backward``,
``threshold_backward``, the latter in place; the same results, without an autograd graph
per chunk, each map freed once its layer is done: at most a map and its gradient of one
layer alive, not the three maps autograd holds at a ReLU, and nothing of a chunk alive into
the next). On CUDA the first layer (one input channel: little arithmetic, the largest
map) is one Triton kernel per chunk, its backward another (:mod:`.input_kernels`; five
passes over that map in forward and three in backward before). Parameters and state-dict
names are the module's. The sums are the same, but cuDNN picks its algorithms per shape
(and the kernels sum in their own order), so outputs equal the module's to rounding, not
bit for bit (the one fast path that is not; the GPU check gives the differences, and the
spiking blocks amplify any rounding difference: bench/README.md), and weight gradients
are summed over chunks.
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

from espnet_imlspike.fast import enabled, has_hooks, input_kernels

# values of the largest feature map one chunk computes (64 MiB in bf16) ...
ELEMENTS_PER_CHUNK = 1 << 25
# ... unless that leaves fewer output rows: batches of hundreds of utterances (ESPnet's numel
# batches) then ran 50 chunks of 1-2 rows, each recomputing the overlap of its first map
# (5 rows of conv2d6's for 1 output row, 26 for 8) with its own launches and host work
MIN_ROWS_PER_CHUNK = 8
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
        step = max(low, min(MIN_ROWS_PER_CHUNK, total))
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


def _computed(tensor: torch.Tensor, autocast: Optional[torch.dtype]) -> torch.Tensor:
    """``tensor`` in the dtype a convolution under autocast (``autocast``: its dtype, or
    None when off) computes it in: cast unless float64 (autocast leaves those alone)."""
    if autocast is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(autocast)


def _weights(params, autocast: Optional[torch.dtype]) -> List[torch.Tensor]:
    """The layers' weights (channels-last: cuDNN's layout in half precision) and biases,
    cast once per call as autocast would cast them at every chunk's convolution."""
    return [_computed(p, autocast).contiguous(memory_format=torch.channels_last)
            if p.dim() == 4 else _computed(p, autocast) for p in params]


def _maps(strides, weights, rows: torch.Tensor, autocast: Optional[torch.dtype]
          ) -> List[torch.Tensor]:
    """The input rows (B, 1, rows, F) as convolved, then ReLU(conv(...)) of each layer
    with these strides, channels-last."""
    # made channels-last before the cast: a one-channel slice is then given channels-last
    # strides, which cuDNN's channels-last kernels take (cast first, it stays NCHW)
    maps = [_computed(rows.contiguous(memory_format=torch.channels_last), autocast)]
    for index, stride in enumerate(strides):
        weight, bias = weights[2 * index], weights[2 * index + 1]
        layer_map = None
        if index == 0 and input_kernels.applies(maps[0], weight):  # one pass, not five
            layer_map = input_kernels.run_or_none(input_kernels.first_map, maps[0], weight,
                                                  bias, stride)
        if layer_map is None:
            layer_map = torch.nn.functional.conv2d(maps[-1], weight, bias, stride).relu_()
        maps.append(layer_map)
    return maps


def _padded(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``tensor`` zero-padded at the end of ``dim`` to ``size``."""
    if tensor.size(dim) == size:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [0, size - tensor.size(dim)]
    return torch.nn.functional.pad(tensor, pad)


class _ChunkedConvolutions(torch.autograd.Function):
    """(B, T, F) features -> (B, T', C * F') flattened maps, as ESPnet's ``out`` reads them.

    Keeps the features and its own output (which ESPnet's output Linear keeps anyway:
    the last ReLU's mask); backward recomputes every map but the last, chunk by chunk,
    and differentiates the layers by hand, down to the lowest one that needs it.
    """

    @staticmethod
    def forward(ctx, xs, geometry, *params):
        device = xs.device.type
        ctx.autocast = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                        else None)
        ctx.geometry = geometry
        batch, frames, freq = xs.shape
        weights, out = _weights(params, ctx.autocast), None
        for first, end, in_first, in_end in geometry.chunks(batch, frames, freq):
            h = _maps(geometry.strides, weights, xs[:, None, in_first:in_end], ctx.autocast)[-1]
            if out is None:
                out = h.new_empty(batch, geometry.out_size(frames, 0), h.size(1), h.size(3))
            out[:, first:end] = h.transpose(1, 2)
        flat = out.flatten(2)
        ctx.save_for_backward(xs, flat, *params)
        return flat

    @staticmethod
    def backward(ctx, grad_flat):
        xs, flat, *params = ctx.saved_tensors
        geometry, autocast, needs = ctx.geometry, ctx.autocast, ctx.needs_input_grad
        batch, frames, freq = xs.shape
        out = flat.view(batch, flat.size(1), geometry.channels[-1], -1)
        grad = grad_flat.view(out.shape)
        weights = _weights(params, autocast)
        grad_xs = torch.zeros_like(xs) if needs[0] else None
        # the lowest layer whose backward is needed (frozen layers below it are skipped)
        lowest = 0 if needs[0] else min((i // 2 for i, n in enumerate(needs[2:]) if n),
                                        default=len(params))
        totals: List[Optional[torch.Tensor]] = [None] * len(params)
        chunks = geometry.chunks(batch, frames, freq)
        step = chunks[0][1] - chunks[0][0]
        in_rows = geometry.rows(step)[0]

        def add(index, g_param):
            if g_param is not None:  # (a frozen layer's is not computed)
                g_param = g_param.to(_accumulation_dtype(params[index].dtype))
                totals[index] = g_param if totals[index] is None else totals[index].add_(g_param)

        for first, end, in_first, in_end in chunks:
            # the last chunk zero-padded to the others' shape (one convolution shape per
            # batch size: cuDNN's plans are reused); its padded output rows get zero
            # gradient, so they add nothing
            rows = _padded(xs[:, None, in_first:in_end], 2, in_rows)
            maps = _maps(geometry.strides[:-1], weights, rows, autocast)
            # the last layer's ReLU backward from the output kept (autograd's operation: a
            # gradient where the output is 0 is dropped, NaN included); every layer's
            # backward by hand, as autograd would run it (no engine per chunk)
            g = _padded(torch.ops.aten.threshold_backward(
                grad[:, first:end], out[:, first:end], 0), 1, step)
            g = g.permute(0, 2, 1, 3)
            # the first layer's ReLU and parameter gradients in one kernel pass
            fused_first = (lowest == 0 and grad_xs is None and len(geometry.strides) > 1
                           and input_kernels.applies(maps[0], weights[0]))
            for layer in range(len(geometry.strides) - 1, lowest - 1, -1):
                below, maps[layer] = maps[layer], None  # freed as autograd frees them
                g_below, g_weight, g_bias = torch.ops.aten.convolution_backward(
                    g.to(below.dtype), below, weights[2 * layer], [geometry.channels[layer]],
                    list(geometry.strides[layer]), [0, 0], [1, 1], False, [0, 0], 1,
                    [layer > lowest or grad_xs is not None, *needs[2 + 2 * layer:4 + 2 * layer]])
                add(2 * layer, g_weight)
                add(2 * layer + 1, g_bias)
                fused = None
                if layer == 1 and fused_first:
                    fused = input_kernels.run_or_none(
                        input_kernels.first_map_backward, g_below, below, maps[0],
                        weights[0], geometry.strides[0])
                if fused is not None:
                    add(0, fused[0] if needs[2] else None)
                    add(1, fused[1] if needs[3] else None)
                    break
                if layer > 0 and g_below is not None:  # through the ReLU below, in place:
                    # two maps of that layer alive, not three
                    g = torch.ops.aten.threshold_backward.grad_input(g_below, below, 0,
                                                                     grad_input=g_below)
                    g_below = below = None
            if grad_xs is not None:
                grad_xs[:, in_first:in_end] += g_below[:, 0, :in_end - in_first].to(xs.dtype)
            # nothing of this chunk alive into the next one (its maps and gradients)
            g = g_below = below = g_weight = g_bias = None
        return (grad_xs, None, *[total.to(p.dtype) if n else None
                                 for total, p, n in zip(totals, params, needs[2:])])


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Weight gradients are summed over chunks in at least float32."""
    return torch.promote_types(dtype, torch.float32)
