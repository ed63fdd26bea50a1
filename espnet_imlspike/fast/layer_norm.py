"""LayerNorm of a half-precision residual stream that keeps the input as it came.

Under autocast, ``torch.nn.LayerNorm`` runs in float32: a bfloat16 (or float16) input is
cast to a float32 copy, and that copy is what its backward keeps (4 bytes per element).
The residual stream of the spiking blocks is in the autocast dtype under autocast (ESPnet's
positional encoding casts its table to the input's dtype), so the reference path keeps a
float32 copy of every block input twice. :func:`layer_norm` computes the same float32
normalisation but keeps the half-precision input (2 bytes per element) and casts it again
in backward: outputs and gradients are bit-identical, the saved memory halves.
"""

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


class _CastLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = (x.size(-1),)
        out, mean, rstd = torch.native_layer_norm(x.float(), shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                  bias is not None and ctx.needs_input_grad[2]]
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
            grad_out, x.float(), (x.size(-1),), mean, rstd, weight, bias, wanted)
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)  # the gradient of the float32 cast
        return grad_x, grad_weight, grad_bias, None


def layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` over the last dimension; where CUDA's autocast would cast a
    half-precision ``x`` to float32 first and keep the copy, through
    :class:`_CastLayerNorm` (the CPU's autocast normalises in the input's dtype)."""
    autocast = x.is_cuda and torch.is_autocast_enabled("cuda")
    if (not autocast or x.dtype not in LOW_PRECISION or not torch.is_grad_enabled()
            or norm.normalized_shape != (x.size(-1),)):
        return norm(x)
    weight, bias = norm.weight, norm.bias
    if (weight is not None and weight.dtype != torch.float32) or (
            bias is not None and bias.dtype != torch.float32):
        return norm(x)
    return _CastLayerNorm.apply(x, weight, bias, norm.eps)
