"""IMLS firing fused with the synaptic layers it feeds: one autograd node, 2 bytes kept.

The reference path (``neurons.py`` then ``torch.nn.Linear``) keeps, per element, the
clamp input of Eq. 8's straight-through gradient and the spikes the linear layer saves,
both as floats (8 bytes in fp32). Here the neuron (Eq. 7 with the IMLS threshold of
Eq. 10-11) and the linear layers ``s W_i^T + b_i`` that read its spikes (Eq. 9's ``s W``)
are one :class:`torch.autograd.Function` that saves the spike counts as ``uint8`` and the
STE mask as ``bool`` (2 bytes):

* forward: the reference's arithmetic, operation for operation (``x / Lambda * T``, clip,
  floor; ``F.linear`` under whatever autocast is active), so spikes and layer outputs are
  bit-identical to the reference;
* backward: ``dL/ds = sum_i g_i W_i`` (accumulated in place, no concatenation),
  ``dL/dx = [0 <= u <= T] * dL/ds * T / Lambda`` (Eq. 8), ``dL/dW_i = g_i^T s``,
  ``dL/db_i = sum g_i``, in the dtypes autocast used. Equal to the reference up to the
  order in which the gradients of several layers are summed.

The threshold statistic is updated by the neuron module's own methods (Eq. 11), so the
buffers evolve exactly as on the reference path.

On CUDA the element-wise work of each neuron (channel maximum, statistic update, firing,
backward mask) runs as Triton kernels (:mod:`.kernels`, same arithmetic, one byte per
element kept for backward instead of two); elsewhere, and where a kernel does not apply,
the PyTorch operations below.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from espnet_imlspike.fast import kernels
from espnet_imlspike.neurons import (
    InputAwareMultiLevelSpikeNeuron,
    all_reduce_max,
    reduces_across_ranks,
)


def imls_threshold(
    neuron: InputAwareMultiLevelSpikeNeuron, x: torch.Tensor, valid: Optional[torch.Tensor]
) -> torch.Tensor:
    """Lambda (C,): the batch maximum over valid frames in training (Eq. 10, running
    statistic updated as Eq. 11), the running average in evaluation."""
    if not neuron.training:
        return neuron.eval_threshold()
    if not kernels.available(x, neuron.timesteps):
        peak = neuron.batch_max(x, valid)
        neuron.update_statistics(peak)
        return peak
    partials = kernels.partial_max(x, valid)
    across_ranks = reduces_across_ranks()
    if not across_ranks and neuron.running_max.dtype == torch.float32:  # update fused
        return kernels.finish_threshold(partials, neuron.eps, neuron.running_max,
                                        neuron.num_batches_tracked, neuron.momentum)
    peak = kernels.finish_threshold(partials, neuron.eps, None, None)
    if across_ranks:  # the global maximum first, then the module's own update
        all_reduce_max(peak)
    neuron.update_statistics(peak)
    return peak


def spike_dtype(x: torch.Tensor, feeds_linears: bool) -> torch.dtype:
    """Spikes feeding linear layers under autocast are written in the autocast dtype
    (spike counts are small integers, exact there): the cast the layer would make."""
    device = x.device.type
    if feeds_linears and x.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def fire_with_mask(
    x: torch.Tensor, peak: torch.Tensor, timesteps: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``floor(clip(x / Lambda * T, 0, T))`` (Eq. 7, 10) and the mask of Eq. 8.

    The mask is where the clip passes its input unchanged (``0 <= u <= T``; NaN is
    outside), which is exactly where the reference's ``clamp`` passes its gradient.
    """
    u = x / peak.to(x.dtype)
    u.mul_(timesteps)
    clipped = u.clamp(0.0, float(timesteps))
    inside = clipped == u
    return clipped.floor_(), inside


def pack(spikes: torch.Tensor, inside: torch.Tensor, timesteps: int):
    """What backward keeps: spike counts as ``uint8`` (T <= 255) and the STE mask."""
    return (spikes.to(torch.uint8) if timesteps <= 255 else spikes), inside


class _FireLinear(torch.autograd.Function):
    """Neuron then ``len(weights)`` linear layers (none: the spikes themselves)."""

    @staticmethod
    def forward(ctx, x, peak, timesteps, count, *params):
        fused = kernels.available(x, timesteps)
        if fused:
            spikes, code = kernels.fire(x, peak, timesteps, spike_dtype(x, count > 0),
                                        with_code=True)
        else:
            spikes, inside = fire_with_mask(x, peak, timesteps)
        weights, biases = params[:count], params[count:]
        outputs = [F.linear(spikes, w, b) for w, b in zip(weights, biases)]
        ctx.timesteps, ctx.count, ctx.x_dtype, ctx.fused = timesteps, count, x.dtype, fused
        ctx.x_shape = x.shape
        ctx.has_bias = [b is not None for b in biases]
        ctx.out_dtype = outputs[0].dtype if outputs else x.dtype
        if fused:
            ctx.save_for_backward(code, peak, *weights)
        else:
            counts = pack(spikes, inside, timesteps)[0] if count else None
            ctx.save_for_backward(inside, peak, counts, *weights)
        return tuple(outputs) if outputs else spikes

    @staticmethod
    def backward(ctx, *grads):
        if ctx.fused:
            code, peak, *weights = ctx.saved_tensors
        else:
            inside, peak, counts, *weights = ctx.saved_tensors
        dtype, count = ctx.out_dtype, ctx.count
        want_x = ctx.needs_input_grad[0]
        grad_weights, grad_biases = [], []
        with torch.autocast(peak.device.type, enabled=False):
            # each layer's output gradient as rows, in the layers' compute dtype
            flat = [None if g is None else g.reshape(-1, g.size(-1)).to(dtype)
                    for g in grads] if count else []
            grad_spikes = (grads[0] if count == 0
                           else _grad_spikes(weights, flat, dtype, ctx.x_shape))
            spikes = grad_x = None
            if ctx.fused:
                if grad_spikes is not None and want_x:
                    grad_x, spikes = kernels.fire_backward(
                        grad_spikes, code, peak, ctx.timesteps, ctx.x_dtype,
                        dtype if count else None)
                elif count:
                    spikes = (code & (kernels.INSIDE_BIT - 1)).to(dtype)
            else:
                if grad_spikes is not None and want_x:
                    grad_x = _input_grad(grad_spikes.to(ctx.x_dtype), inside, peak,
                                         ctx.timesteps, ctx.x_dtype)
                if count:
                    spikes = counts.to(dtype)
            if count:
                grad_weights, grad_biases = _weight_grads(
                    spikes, peak, weights, flat, dtype, ctx.has_bias,
                    ctx.needs_input_grad[4:])
        return (grad_x, None, None, None, *grad_weights, *grad_biases)


def _input_grad(grad_spikes, inside, peak, timesteps, x_dtype):
    """Eq. 8 through the division by Lambda: ``[0 <= u <= T] dL/ds * T / Lambda``."""
    zero = torch.zeros((), dtype=grad_spikes.dtype, device=grad_spikes.device)
    return torch.where(inside, grad_spikes, zero) * timesteps / peak.to(x_dtype)


def _grad_spikes(weights, flat, dtype, shape):
    """``dL/ds = sum_i g_i W_i`` (accumulated in place, no concatenation) from the
    layers' output gradients as rows (``flat``, None for none), in the layers' compute
    dtype and the spikes' ``shape``; None if no layer output got a gradient."""
    grad_spikes = None
    for weight, rows in zip(weights, flat):
        if rows is None:
            continue
        weight = weight.to(dtype)
        grad_spikes = (rows.mm(weight) if grad_spikes is None
                       else grad_spikes.addmm_(rows, weight))
    return None if grad_spikes is None else grad_spikes.view(shape)


def _weight_grads(spikes, peak, weights, flat, dtype, has_bias, needs):
    """``dL/dW_i = g_i^T s`` and ``dL/db_i = sum_rows g_i`` as autograd forms them, in the
    layers' compute dtype. A batch whose threshold statistic is not finite (a NaN or inf
    input; its spikes held NaN, which the byte counts cannot) gets NaN weight gradients,
    as on the reference path, so ESPnet's trainer skips its update the same way."""
    count = len(weights)
    rows = spikes.reshape(-1, spikes.size(-1))
    poison = torch.where(torch.isfinite(peak).all(), 1.0, float("nan"))
    grad_weights: List[Optional[torch.Tensor]] = [None] * count
    grad_biases: List[Optional[torch.Tensor]] = [None] * count
    for i, grad in enumerate(flat):
        if grad is None:
            continue
        if needs[i]:
            grad_weights[i] = (grad.t().mm(rows) * poison.to(dtype)).to(weights[i].dtype)
        if has_bias[i] and needs[count + i]:
            grad_biases[i] = grad.sum(0).to(weights[i].dtype)
    return grad_weights, grad_biases


def fire_linear(
    neuron: InputAwareMultiLevelSpikeNeuron,
    x: torch.Tensor,
    valid: Optional[torch.Tensor],
    linears: Sequence[torch.nn.Linear] = (),
):
    """``neuron(x, valid)`` fed to each of ``linears``; returns their outputs (a tuple),
    or the spikes when ``linears`` is empty. The neuron's statistics update as in its
    own forward."""
    fused = kernels.available(x, neuron.timesteps)
    if not torch.is_grad_enabled():  # inference: nothing to save
        dtype = spike_dtype(x, bool(linears))
        if fused and not neuron.training and neuron.running_max.dtype == torch.float32:
            # the kernel takes the evaluation threshold from the running statistic itself
            neuron._warn_if_uncalibrated()
            spikes, _ = kernels.fire(x, neuron.running_max, neuron.timesteps, dtype,
                                     running_eps=neuron.eps)
        elif fused:
            spikes, _ = kernels.fire(x, imls_threshold(neuron, x, valid), neuron.timesteps,
                                     dtype)
        else:
            spikes, _ = fire_with_mask(x, imls_threshold(neuron, x, valid), neuron.timesteps)
        return tuple(layer(spikes) for layer in linears) if linears else spikes
    peak = imls_threshold(neuron, x, valid)
    weights = [layer.weight for layer in linears]
    biases = [layer.bias for layer in linears]
    return _FireLinear.apply(x, peak, neuron.timesteps, len(weights), *weights, *biases)
