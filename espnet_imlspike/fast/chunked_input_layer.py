"""The chunked input layer's computation (:mod:`.subsampling` decides where it runs): ESPnet's
conv-subsampling convolutions and output Linear over time chunks as one autograd node, its
backward by hand (the module docstring of :mod:`.subsampling` says what is kept and why).
"""

import weakref
from typing import Dict, List, Optional

import torch

from espnet_imlspike.fast import input_kernels


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast computes convolutions in on ``device_type``, None when off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


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


def prepared_weights(params, channels: int, autocast: Optional[torch.dtype]) -> List:
    """:func:`_weights`, the output Linear's columns reordered (:func:`_frequency_major`)."""
    *weights, linear_weight, linear_bias = _weights(params, autocast)
    return [*weights, _frequency_major(linear_weight, channels), linear_bias]


def kept_prepared_weights(params, channels: int, autocast: Optional[torch.dtype]) -> List:
    """:func:`prepared_weights` kept from call to call, for inference (no autograd graph
    to build): made again when any parameter is another tensor, lies elsewhere or was
    changed in place (its version counter), or the autocast dtype changed. Their casts
    and copies were a fifth of the compiled layer's host time (bench/README.md)."""
    if any(p.is_inference() for p in params):  # no version counter: never kept
        return prepared_weights(params, channels, autocast)
    state = (autocast, channels, tuple((p.data_ptr(), p._version) for p in params))
    key = id(params[0])
    kept = _kept.get(key)
    if (kept is not None and kept[1] == state  # (one entry per parameter: same count)
            and all(ref() is p for ref, p in zip(kept[0], params))):
        return kept[2]
    prepared = prepared_weights(params, channels, autocast)
    if kept is None or kept[0][0]() is not params[0]:  # forgotten with its parameter
        weakref.finalize(params[0], _kept.pop, key, None)
    _kept[key] = ([weakref.ref(p) for p in params], state, prepared)
    return prepared


# id of a layer's first parameter -> (its parameters, weakly; their state; the weights)
_kept: Dict[int, tuple] = {}


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


def _frequency_major(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The output Linear's weight (odim, C * F') with its columns reordered from ESPnet's
    flattening (channel-major: ``c * F' + f``) to a channels-last map's (``f * C + c``), so
    the Linear reads a chunk's last map as it lies in memory."""
    return weight.unflatten(1, (channels, -1)).transpose(1, 2).flatten(1)


def _channel_major(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse of :func:`_frequency_major` (a gradient back to the weight's layout)."""
    return weight.unflatten(1, (-1, channels)).transpose(1, 2).flatten(1)


def _rows(layer_map: torch.Tensor) -> torch.Tensor:
    """A last map (B, C, R, F') as the output Linear's input rows (B, R, F' * C), columns
    frequency-major (:func:`_frequency_major`): a view of a channels-last map."""
    return layer_map.permute(0, 2, 3, 1).flatten(2)


def _as_map(rows: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse of :func:`_rows`: rows (B, R, F' * C) as a channels-last map (B, C, R, F')."""
    return rows.unflatten(2, (-1, channels)).permute(0, 3, 1, 2)


def chunked_forward(xs: torch.Tensor, geometry, params, autocast: Optional[torch.dtype],
                    budget: Optional[int] = None, prepared: Optional[List] = None):
    """The layer's output (B, T', odim) from features ``xs`` (B, T, F) computed chunk by
    chunk (maps of at most ``budget`` values: :meth:`.subsampling._Geometry.chunks`) with
    ``autocast``'s dtype (None: the parameters' own); also the Linear's rows
    (B, T', F' * C) where backward keeps them (else None), the chunks and their input
    rows (:class:`ChunkedInputLayer` runs backward over the same ones). ``prepared``:
    :func:`prepared_weights` of ``params``, if the caller has them."""
    batch, frames, freq = xs.shape
    if prepared is None:
        prepared = prepared_weights(params, geometry.channels[-1], autocast)
    *weights, linear_weight, linear_bias = prepared
    chunks = geometry.chunks(batch, frames, freq, budget)
    step = chunks[0][1] - chunks[0][0]
    in_rows, total = geometry.rows(step)[0], geometry.out_size(frames, 0)
    recompute, out, kept = geometry.recomputes_last(), None, None
    for first, end, in_first, in_end in chunks:
        rows = _padded(xs[:, None, in_first:in_end], 2, in_rows)
        last = _rows(_maps(geometry.strides, weights, rows, autocast)[-1])
        if recompute:  # the Linear per chunk
            y = torch.nn.functional.linear(last, linear_weight, linear_bias)
            if out is None:
                out = y.new_empty(batch, total, y.size(2))
            out[:, first:end] = y[:, :end - first]
        else:  # the rows kept, the Linear once over them (fewer launches per chunk)
            if kept is None:
                kept = last.new_empty(batch, total, last.size(2))
            kept[:, first:end] = last[:, :end - first]
    if not recompute:
        out = torch.nn.functional.linear(kept, linear_weight, linear_bias)
    return out, kept, chunks, in_rows


class ChunkedInputLayer(torch.autograd.Function):
    """(B, T, F) features -> (B, T', odim): the convolutions and ESPnet's output Linear
    (before the positional encoding), chunk by chunk.

    The Linear reads each chunk's last map where it lies (its columns reordered once per
    call), so neither the flattened maps (B, T', C * F') nor their gradient, each allocated
    whole at every batch's own size before, exist. Autograd keeps the features, and the
    last map (as the Linear's rows) unless it is cheap to recompute
    (:meth:`.subsampling._Geometry.recomputes_last`); backward recomputes the other maps
    of a chunk and differentiates the Linear and the layers by hand, down to the lowest
    layer that needs it. Every chunk, the last zero-padded, runs at one shape in forward
    and in backward, so the maps recomputed are the maps forward computed (one convolution
    plan per batch size).
    """

    @staticmethod
    def forward(ctx, xs, geometry, *params):
        ctx.autocast = autocast_dtype(xs.device.type)
        ctx.geometry = geometry
        out, kept, ctx.chunks, ctx.in_rows = chunked_forward(xs, geometry, params,
                                                             ctx.autocast)
        ctx.save_for_backward(xs, kept, *params)  # backward runs the same chunks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xs, kept, *params = ctx.saved_tensors
        geometry, autocast, needs = ctx.geometry, ctx.autocast, ctx.needs_input_grad
        layers, channels = len(geometry.strides), geometry.channels[-1]
        *weights, linear_weight, _ = _weights(params, autocast)
        linear_weight = _frequency_major(linear_weight, channels)
        grad_xs = torch.zeros_like(xs) if needs[0] else None
        # the lowest layer whose backward is needed (frozen layers below it are skipped;
        # ``layers``: none, only the Linear's)
        lowest = 0 if needs[0] else min((i // 2 for i, n in enumerate(needs[2:-2]) if n),
                                        default=layers)
        below_last = lowest < layers or grad_xs is not None
        totals: List[Optional[torch.Tensor]] = [None] * len(params)
        chunks, in_rows = ctx.chunks, ctx.in_rows
        step = chunks[0][1] - chunks[0][0]

        def add(index, g_param):
            if g_param is not None:  # (a frozen layer's is not computed)
                g_param = g_param.to(_accumulation_dtype(params[index].dtype))
                totals[index] = g_param if totals[index] is None else totals[index].add_(g_param)

        if kept is not None and not below_last:
            chunks = []  # only the Linear's gradients: from the kept rows, after the loop
        for first, end, in_first, in_end in chunks:
            # the last chunk zero-padded as in forward; its padded output rows get zero
            # gradient, so they add nothing
            rows = _padded(xs[:, None, in_first:in_end], 2, in_rows)
            if kept is None:
                maps = _maps(geometry.strides, weights, rows, autocast)
                last, maps[layers] = _rows(maps[layers]), None
            else:  # (the layers below need their backward here: else there are no chunks)
                maps = _maps(geometry.strides[:-1], weights, rows, autocast) + [None]
                last = _padded(kept[:, first:end], 1, step)
            g_out = _padded(grad_out[:, first:end], 1, step).to(last.dtype)
            # the Linear's backward, as autograd's: the input gradient through the weight;
            # the weight gradient from the rows it read (kept: in one product after the
            # loop), the bias's in one sum after the loop
            if needs[-2] and kept is None:
                add(len(params) - 2, g_out.flatten(0, 1).t() @ last.flatten(0, 1))
            if not below_last:
                continue
            g = _as_map(g_out @ linear_weight, channels)
            # the last ReLU's backward (autograd's operation: a gradient where the output
            # is 0 is dropped, NaN included), in place; every layer's backward by hand, as
            # autograd would run it (no engine per chunk)
            g = torch.ops.aten.threshold_backward.grad_input(g, _as_map(last, channels), 0,
                                                             grad_input=g)
            g_out = last = None
            # the first layer's ReLU and parameter gradients in one kernel pass
            fused_first = (lowest == 0 and grad_xs is None and layers > 1
                           and input_kernels.applies(maps[0], weights[0]))
            for layer in range(layers - 1, lowest - 1, -1):
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
        if needs[-2] and kept is not None:
            add(len(params) - 2, grad_out.flatten(0, 1).t().to(kept.dtype)
                @ kept.flatten(0, 1))
        if needs[-1]:  # the bias's gradient in one sum, as autograd's
            add(len(params) - 1, grad_out.sum((0, 1)))
        if totals[-2] is not None:
            totals[-2] = _channel_major(totals[-2], channels)
        return (grad_xs, None, *[total.to(p.dtype) if n else None
                                 for total, p, n in zip(totals, params, needs[2:])])


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Weight gradients are summed over chunks in at least float32."""
    return torch.promote_types(dtype, torch.float32)
