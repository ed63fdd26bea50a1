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
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron


def imls_threshold(
    neuron: InputAwareMultiLevelSpikeNeuron, x: torch.Tensor, valid: Optional[torch.Tensor]
) -> torch.Tensor:
    """Lambda (C,): the batch maximum over valid frames in training (Eq. 10, running
    statistic updated as Eq. 11), the running average in evaluation."""
    if neuron.training:
        peak = neuron.batch_max(x, valid)
        neuron.update_statistics(peak)
        return peak
    return neuron.eval_threshold()


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
        spikes, inside = fire_with_mask(x, peak, timesteps)
        weights, biases = params[:count], params[count:]
        outputs = [F.linear(spikes, w, b) for w, b in zip(weights, biases)]
        ctx.timesteps, ctx.count, ctx.x_dtype = timesteps, count, x.dtype
        ctx.has_bias = [b is not None for b in biases]
        ctx.out_dtype = outputs[0].dtype if outputs else x.dtype
        counts = pack(spikes, inside, timesteps)[0] if count else None
        ctx.save_for_backward(inside, peak, counts, *weights)
        return tuple(outputs) if outputs else spikes

    @staticmethod
    def backward(ctx, *grads):
        inside, peak, counts, *weights = ctx.saved_tensors
        dtype = ctx.out_dtype
        with torch.autocast(peak.device.type, enabled=False):
            if ctx.count == 0:
                grad_spikes = grads[0]
                grad_weights, grad_biases = [], []
            else:
                grad_spikes, grad_weights, grad_biases = _linear_grads(
                    counts.to(dtype), peak, weights, grads, dtype, ctx.has_bias,
                    ctx.needs_input_grad[4:])
                grad_spikes = None if grad_spikes is None else grad_spikes.to(ctx.x_dtype)
            grad_x = None
            if grad_spikes is not None and ctx.needs_input_grad[0]:
                zero = torch.zeros((), dtype=grad_spikes.dtype, device=grad_spikes.device)
                grad_x = torch.where(inside, grad_spikes, zero)
                grad_x = grad_x * ctx.timesteps / peak.to(ctx.x_dtype)
        return (grad_x, None, None, None, *grad_weights, *grad_biases)


def _linear_grads(spikes, peak, weights, grads, dtype, has_bias, needs):
    """Gradients of ``F.linear(s, W_i, b_i)`` for every layer, as autograd forms them
    (``g W`` summed over the layers, ``g^T s``, ``sum_rows g``) in the layers' compute
    dtype. A batch whose threshold statistic is not finite (a NaN or inf input; its
    spikes held NaN, which the byte counts cannot) gets NaN weight gradients, as on the
    reference path, so ESPnet's trainer skips its update the same way."""
    count = len(weights)
    rows = spikes.reshape(-1, spikes.size(-1))
    used = [i for i, g in enumerate(grads) if g is not None]
    flat = {i: grads[i].reshape(-1, grads[i].size(-1)).to(dtype) for i in used}
    grad_spikes = None
    for i in used:
        weight = weights[i].to(dtype)
        grad_spikes = (flat[i].mm(weight) if grad_spikes is None
                       else grad_spikes.addmm_(flat[i], weight))
    if grad_spikes is not None:
        grad_spikes = grad_spikes.view(spikes.shape)
    poison = torch.where(torch.isfinite(peak).all(), 1.0, float("nan"))
    grad_weights: List[Optional[torch.Tensor]] = [None] * count
    grad_biases: List[Optional[torch.Tensor]] = [None] * count
    for i in used:
        if needs[i]:
            grad_weights[i] = (flat[i].t().mm(rows) * poison.to(dtype)).to(weights[i].dtype)
        if has_bias[i] and needs[count + i]:
            grad_biases[i] = flat[i].sum(0).to(weights[i].dtype)
    return grad_spikes, grad_weights, grad_biases


def fire_linear(
    neuron: InputAwareMultiLevelSpikeNeuron,
    x: torch.Tensor,
    valid: Optional[torch.Tensor],
    linears: Sequence[torch.nn.Linear] = (),
):
    """``neuron(x, valid)`` fed to each of ``linears``; returns their outputs (a tuple),
    or the spikes when ``linears`` is empty. The neuron's statistics update as in its
    own forward."""
    peak = imls_threshold(neuron, x, valid)
    if not torch.is_grad_enabled():  # inference: nothing to save
        spikes, _ = fire_with_mask(x, peak, neuron.timesteps)
        return tuple(layer(spikes) for layer in linears) if linears else spikes
    weights = [layer.weight for layer in linears]
    biases = [layer.bias for layer in linears]
    return _FireLinear.apply(x, peak, neuron.timesteps, len(weights), *weights, *biases)
