"""Per-layer FLOPs of an encoder for one utterance, from the actual sequence length.

FLOPs are counted as multiply-accumulates (MACs) of the synaptic operations: linear
layers, convolutions and the two attention products. Softmax, LayerNorm, residual
additions and neuron updates are not counted (the paper's convention); the deploy form's
counter reports them separately.

Each :class:`LayerCost` names the neuron layer whose spikes feed it (``source``), or
``None`` when its input is real-valued (the convolutional front, the continuous Q K^T map
of the training form, every layer of an ANN): those count as MACs.
"""

from typing import List

import torch

from espnet_imlspike.energy.ops import LayerCost, LayerShape, conv_front_costs, linear_shape


def _linear(name: str, length: int, fan_in: int, fan_out: int, source=None) -> LayerCost:
    return LayerCost(name, length * fan_in * fan_out, source,
                     linear_shape(length, fan_in, fan_out))


def _map_shapes(length: int, size: int, heads: int):
    """Shapes of ``Q K^T`` and ``A V`` of a softmax attention (real operands)."""
    scores = LayerShape(length, size, length, length * size, heads * length * length,
                        length * size)
    context = LayerShape(length, length, size, length * size, length * size,
                         heads * length * length)
    return scores, context


def transformer_block_costs(prefix: str, length: int, size: int, units: int,
                            heads: int = 1) -> List[LayerCost]:
    """An ANN Transformer block (ESPnet EncoderLayer): every operation is a MAC."""
    a = f"{prefix}.self_attn"
    scores, context = _map_shapes(length, size, heads)
    return [
        _linear(f"{a}.linear_q", length, size, size),
        _linear(f"{a}.linear_k", length, size, size),
        _linear(f"{a}.linear_v", length, size, size),
        LayerCost(f"{a}.scores", length * length * size, None, scores),
        LayerCost(f"{a}.context", length * length * size, None, context),
        _linear(f"{a}.linear_out", length, size, size),
        _linear(f"{prefix}.feed_forward.w_1", length, size, units),
        _linear(f"{prefix}.feed_forward.w_2", length, units, size),
    ]


def spiking_block_costs(
    prefix: str, block, length: int, size: int, units: int, fused_qk: bool
) -> List[LayerCost]:
    """A spiking block: each synaptic layer with the neuron layer that feeds it.

    HD-RepSSA with ``fused_qk`` (inference form, Eq. 12): ``X W_QK`` (H L D^2) and
    ``(X W_QK) X^T`` (H L^2 D) are both driven by the input spikes X. Without fusion
    (training form) ``X W_Q``, ``X W_K`` are spike-driven but ``Q K^T`` multiplies two
    real-valued matrices (MAC).
    """
    attn = block.self_attn
    x_in = f"{prefix}.attn_input_neuron"
    a = f"{prefix}.self_attn"
    costs = []
    heads = attn.heads
    if attn.kind == "sdsa3":
        d_k = size // heads
        costs += [
            _linear(f"{a}.linear_q", length, size, size, x_in),
            _linear(f"{a}.linear_k", length, size, size, x_in),
            _linear(f"{a}.linear_v", length, size, size, x_in),
            # each key spike adds a value row of its head (d_k) into K^T V
            LayerCost(f"{a}.key_value", length * size * d_k, f"{a}.key_neuron",
                      LayerShape(length, size, d_k, length * size, size * d_k,
                                 length * size)),
            # each query spike adds a row of K^T V (d_k)
            LayerCost(f"{a}.query_kv", length * size * d_k, f"{a}.query_neuron",
                      LayerShape(length, size, d_k, size * d_k, length * size,
                                 length * size)),
        ]
    else:
        if fused_qk:
            # X W_QK: each input spike adds a row of W_QK,h for every head (H D), and
            # the two bias terms (2H); (X W_QK) X^T: each key spike adds one value of
            # the projected map per head and valid query (H L)
            costs += [
                LayerCost(f"{a}.x_wqk", heads * length * size * size, x_in,
                          LayerShape(length, size, heads * size, heads * size * size,
                                     length * heads * size, length * size,
                                     event_extra=2 * heads)),
                LayerCost(f"{a}.scores", heads * length * length * size, x_in,
                          LayerShape(length, size, heads * length, length * heads * size,
                                     heads * length * length, length * size)),
            ]
        else:
            scores, _ = _map_shapes(length, size, heads)
            costs += [
                _linear(f"{a}.linear_q", length, size, size, x_in),
                _linear(f"{a}.linear_k", length, size, size, x_in),
                LayerCost(f"{a}.scores", length * length * size, None, scores),
            ]
        costs += [
            _linear(f"{a}.linear_v", length, size, size, x_in),
            # each value spike adds one attention weight per valid query row (L)
            LayerCost(f"{a}.context", length * length * size, f"{a}.value_neuron",
                      LayerShape(length, size, length, heads * length * length,
                                 length * size, length * size)),
        ]
    costs += [
        _linear(f"{a}.linear_out", length, size, size, f"{a}.attention_neuron"),
        _linear(f"{prefix}.feed_forward.w_1", length, size, units,
                f"{prefix}.mlp_input_neuron"),
        _linear(f"{prefix}.feed_forward.w_2", length, units, size,
                f"{prefix}.feed_forward.hidden_neuron"),
    ]
    return costs


def encoder_costs(
    encoder, in_frames: int, out_frames: int, ann: bool = False, fused_qk: bool = True
) -> List[LayerCost]:
    """All layer costs of one utterance.

    Args:
        encoder: Our spiking encoder (training or deploy form) or ESPnet's
            TransformerEncoder.
        in_frames: Feature frames of the utterance.
        out_frames: Frames after subsampling.
        ann: Count ``encoder``'s sizes as an ANN Transformer (all MACs).
        fused_qk: Count HD-RepSSA in its fused inference form.

    Returns:
        The list of layer costs.

    An encoder that is not a stack of Transformer-like blocks (e.g. the SMLP baselines)
    prices itself: it defines ``layer_costs(in_frames, out_frames, ann) -> List[LayerCost]``
    with ``source`` naming the neuron layer (a ``SpikingNeuron``) that feeds each layer.
    """
    if hasattr(encoder, "layer_costs"):
        return encoder.layer_costs(in_frames, out_frames, ann=ann)
    first = encoder.encoders[0]
    size = first.norm1.normalized_shape[0]  # model width (SPK MFA output_size() is wider)
    units = first.feed_forward.w_1.out_features
    features = _input_features(encoder)
    costs = conv_front_costs(encoder.embed, in_frames, features)
    for index, block in enumerate(encoder.encoders):
        prefix = f"encoders.{index}"
        if ann or not hasattr(block, "attn_input_neuron"):
            heads = getattr(block.self_attn, "heads", None) or getattr(block.self_attn, "h", 1)
            costs += transformer_block_costs(prefix, out_frames, size, units, heads)
        else:
            costs += spiking_block_costs(prefix, block, out_frames, size, units, fused_qk)
    return costs


def _input_features(encoder) -> int:
    if hasattr(encoder, "input_size"):
        return encoder.input_size
    embed = encoder.embed
    if isinstance(embed, torch.nn.Sequential):
        return embed[0].in_features
    # invert ESPnet's conv frequency arithmetic from the output linear's width
    freq = embed.out[0].in_features // embed.conv[0].out_channels
    for layer in reversed([m for m in embed.conv if isinstance(m, torch.nn.Conv2d)]):
        freq = (freq - 1) * layer.stride[0] + layer.kernel_size[0]
    return freq
