"""The spiking block of Eq. 4 on the fast path: fused IMLS firing, memory-lean attention.

Same parameters, buffers, statistics updates, dropout draws and outputs as
:class:`~espnet_imlspike.layers.SpikingTransformerBlock` with IMLS neurons and
(HD-)RepSSA (``X' = X + Attn(SN(LN(X)))``, ``X'' = X' + SN(SN(LN(X')) W1) W2``); what
differs is what autograd keeps:

* every neuron and the linear layers it feeds are one node (:mod:`.firing`): spike
  counts and STE masks in one byte per element instead of two float tensors;
* softmax HD-RepSSA keeps only Q, K and V_s (the map is rebuilt in backward,
  :mod:`.long_attention`), at every length; linear HD-RepSSA uses the explicit map up to
  :data:`~.long_attention.LONG_MAP_ELEMENTS` and the chunked recurrence beyond;
* the LayerNorms keep a half-precision residual stream as it is, not autocast's float32
  copy (:mod:`.layer_norm`).

Blocks this path does not cover (MLS or multi-step neurons, SDSA-3, subclasses such as
the streaming attention, attention-weight dropout, hooks) run their reference forward.
"""

import torch

from espnet_imlspike.attention import HDRepSSA, merge_heads, split_heads
from espnet_imlspike.fast.firing import fire_linear
from espnet_imlspike.fast.layer_norm import layer_norm
from espnet_imlspike.fast.long_attention import (
    chunked_softmax_context,
    decayed_linear_context,
    use_long_path,
)
from espnet_imlspike.layers import SpikingChannelMLP, SpikingTransformerBlock
from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron


def supported(block: torch.nn.Module) -> bool:
    """Whether :func:`block_forward` computes exactly what ``block.forward`` does."""
    if type(block) is not SpikingTransformerBlock:
        return False
    attn, mlp = block.self_attn, block.feed_forward
    if type(attn) is not HDRepSSA or type(mlp) is not SpikingChannelMLP:
        return False
    if attn.fused_attention or (attn.training and attn.dropout.p > 0):
        return False
    neurons = (block.attn_input_neuron, block.mlp_input_neuron, attn.value_neuron,
               attn.attention_neuron, mlp.hidden_neuron)
    return all(type(n) is InputAwareMultiLevelSpikeNeuron for n in neurons)


def attention_context(attn: HDRepSSA, q, k, values, valid):
    """Context (N, H, L, d_k) of (HD-)RepSSA from per-head q, k and value spikes."""
    n, heads, length, _ = q.shape
    if attn.variant == "softmax":
        return chunked_softmax_context(q, k, values, valid, attn.decay, attn.d_k)
    if use_long_path(n, heads, length):
        return decayed_linear_context(q, k, values, valid, attn.decay, attn.linear_norm)
    return torch.matmul(attn._weights(q, k, valid), values)


def block_forward(
    block: SpikingTransformerBlock, x: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """``block(x, valid)`` on the fast path (see the module docstring)."""
    attn, mlp = block.self_attn, block.feed_forward
    before = block.normalize_before
    branch_in = layer_norm(block.norm1, x) if before else x
    q, k, v = fire_linear(block.attn_input_neuron, branch_in, valid,
                          (attn.linear_q, attn.linear_k, attn.linear_v))
    values = fire_linear(attn.value_neuron, v, valid)
    context = attention_context(attn, split_heads(q, attn.heads), split_heads(k, attn.heads),
                                split_heads(values, attn.heads), valid)
    (out,) = fire_linear(attn.attention_neuron, merge_heads(context), valid,
                         (attn.linear_out,))
    x = x + block.dropout(out)
    if not before:
        x = layer_norm(block.norm1, x)
    branch_in = layer_norm(block.norm2, x) if before else x
    (hidden,) = fire_linear(block.mlp_input_neuron, branch_in, valid, (mlp.w_1,))
    (out,) = fire_linear(mlp.hidden_neuron, hidden, valid, (mlp.w_2,))
    x = x + block.dropout(out)
    if not before:
        x = layer_norm(block.norm2, x)
    return x
