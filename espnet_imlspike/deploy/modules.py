"""Layers of the deploy form: frozen thresholds, synaptic layers fed by spike trains.

With ``execution="spike_train"`` each synaptic layer expands a multi-level spike
``s in {0..T}`` into T binary spikes ``s[t] = [s >= t]`` (what an IF neuron with input at
the first step emits, Fig. 1a) and computes ``sum_t s[t] W`` (Eq. 9), counting the
accumulates the spikes trigger (:class:`~espnet_imlspike.energy.ops.OpCounter`).
``execution="multi_level"`` computes ``s W`` directly (same result, faster). Operations
that stay non-spike-driven are counted separately (kind ``other``): the HDM product,
softmax and its scaling, bias additions and neuron updates.
"""

from typing import Optional

import torch
from typeguard import typechecked

from espnet_imlspike.attention import (
    attention_weights,
    decay_factor,
    merge_heads,
    sdsa_context,
    split_heads,
)
from espnet_imlspike.energy.ops import OpCounter
from espnet_imlspike.errors import InputError
from espnet_imlspike.neurons import SpikingNeuron, multi_level_fire

EXECUTION_MODES = ("spike_train", "multi_level")


def spike_planes(spikes: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Binary spike trains (T, ...) of multi-level spikes: plane t is ``spikes >= t``."""
    steps = torch.arange(1, timesteps + 1, device=spikes.device, dtype=spikes.dtype)
    return (spikes.unsqueeze(0) >= steps.view(-1, *([1] * spikes.dim()))).to(
        spikes.dtype
    )


def check_spike_counts(spikes: torch.Tensor, timesteps: int, layer: str) -> None:
    """Reject a synaptic input that is not an integer spike count in {0..T}."""
    if not (
        torch.equal(spikes, torch.floor(spikes))
        and bool((spikes >= 0).all())
        and bool((spikes <= timesteps).all())
    ):
        raise InputError(f"{layer}: input is not integer spike counts in [0, {timesteps}]")


class DeployModule(torch.nn.Module):
    """Mixin: a name for the op counter, the counter and the execution mode."""

    layer_name = ""
    counter: Optional[OpCounter] = None
    execution = "spike_train"
    timesteps = 1

    def count(self, kind: str, amount) -> None:
        if self.counter is not None:
            self.counter.add(self.layer_name, kind, amount)


class FrozenThresholdNeuron(DeployModule, SpikingNeuron):
    """Multi-level neuron with a frozen channel-wise threshold (Eq. 11 at inference).

    Fires ``floor(clip(x / divisor * scale, 0, T))``: for IMLS ``divisor = Lambda~`` and
    ``scale = T``, for MLS ``divisor = theta`` and ``scale = 1``, the same arithmetic as
    the training form's evaluation, so spike counts are identical (a channel that never
    fired in training has ``divisor = inf``: silent, as in the training form).

    Args:
        channels: Number of channels.
        timesteps: T.
        scale: T for IMLS, 1 for MLS.
    """

    @typechecked
    def __init__(self, channels: int, timesteps: int, scale: float):
        super().__init__()
        self.timesteps = timesteps
        self.scale = scale
        self.register_buffer("divisor", torch.ones(channels))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        self.count("other", valid.sum() * x.size(-1))  # one neuron update per channel
        return multi_level_fire(x / self.divisor.to(x.dtype) * self.scale, self.timesteps)


class SynapticLinear(DeployModule):
    """Linear layer fed by spike counts; spike-train execution of Eq. 9.

    The weights live in a bias-free ``synapse`` (a plain ``torch.nn.Linear``) that is
    called once per binary spike plane, so hook-based tools that watch Linear layers
    (e.g. NeuroBench) see the binary spikes; the bias is added once afterwards.

    Args:
        in_features: Input channels.
        out_features: Output channels.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.synapse = torch.nn.Linear(in_features, out_features, bias=False)
        self.bias = torch.nn.Parameter(torch.zeros(out_features))

    @torch.no_grad()
    def load_from(self, trained: torch.nn.Linear) -> None:
        """Copy a trained Linear layer's weight and bias."""
        self.synapse.weight.copy_(trained.weight)
        self.bias.copy_(trained.bias)

    def forward(self, spikes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.execution == "multi_level":
            out = self.synapse(spikes)
        else:
            check_spike_counts(spikes, self.timesteps, self.layer_name)
            out = 0
            for plane in spike_planes(spikes, self.timesteps):
                out = out + self.synapse(plane)
                self.count("spikes", plane[valid].sum())
                self.count("ac", plane[valid].sum() * self.out_features)
        self.count("other", valid.sum() * self.out_features)  # bias additions
        return out + self.bias


class DeploySpikingChannelMLP(DeployModule):
    """``SN(X W1) W2`` with synaptic layers that see spike counts."""

    def __init__(self, size: int, hidden_units: int, neuron):
        super().__init__()
        self.w_1 = SynapticLinear(size, hidden_units)
        self.hidden_neuron = neuron(hidden_units)
        self.w_2 = SynapticLinear(hidden_units, size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.hidden_neuron(self.w_1(x, valid), valid), valid)


class FusedHDRepSSA(DeployModule):
    """HD-RepSSA in its inference form: fused ``W_QK`` per head (Eq. 12) and spike trains.

    Parameters ``w_qk`` (H, D, D), ``q_bias_term`` u (H, D), ``k_bias_term`` w (H, D),
    ``bias_product`` c (H,), then ``linear_v`` and ``linear_out`` as in training.
    """

    kind = "repssa"

    def __init__(self, size, heads, variant, decay, neuron, linear_norm="none"):
        super().__init__()
        self.heads = heads
        self.d_k = size // heads
        self.variant = variant
        self.decay = decay
        self.linear_norm = linear_norm
        self.w_qk = torch.nn.Parameter(torch.zeros(heads, size, size))
        self.q_bias_term = torch.nn.Parameter(torch.zeros(heads, size))
        self.k_bias_term = torch.nn.Parameter(torch.zeros(heads, size))
        self.bias_product = torch.nn.Parameter(torch.zeros(heads))
        self.linear_v = SynapticLinear(size, size)
        self.linear_out = SynapticLinear(size, size)
        self.value_neuron = neuron(size)
        self.attention_neuron = neuron(size)

    @torch.no_grad()
    def load_from(self, trained) -> None:
        """Fuse a trained HD-RepSSA's query and key weights (and biases)."""
        wq, bq = trained.linear_q.weight, trained.linear_q.bias
        wk, bk = trained.linear_k.weight, trained.linear_k.bias
        for h in range(self.heads):
            rows = slice(h * self.d_k, (h + 1) * self.d_k)
            # torch Linear holds W^T: q = x Wq^T + bq, so W_Q,h = Wq[rows]^T
            self.w_qk[h] = wq[rows].t() @ wk[rows]
            self.q_bias_term[h] = wq[rows].t() @ bk[rows]
            self.k_bias_term[h] = wk[rows].t() @ bq[rows]
            self.bias_product[h] = bq[rows] @ bk[rows]
        self.linear_v.load_from(trained.linear_v)
        self.linear_out.load_from(trained.linear_out)

    def attention_map(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Attention weights (N, H, L, L) from spikes with the fused weights."""
        size = x.size(-1)
        valid_count = valid.sum(1)  # (N,)
        xh = x.unsqueeze(1)  # (N, 1, L, D), shared by all heads
        if self.execution == "multi_level":
            scores = (xh @ self.w_qk) @ xh.transpose(-2, -1)
        else:
            check_spike_counts(x, self.timesteps, self.layer_name)
            planes = spike_planes(xh, self.timesteps)
            projected = sum(plane @ self.w_qk for plane in planes)
            scores = sum(projected @ plane.transpose(-2, -1) for plane in planes)
            spikes_valid = (x * valid.unsqueeze(-1)).sum((1, 2))  # per utterance
            # X W_QK: each spike adds a row of D; P X^T: each key spike adds one value
            # of P per valid query row; the bias terms add one value per spike.
            self.count("spikes", spikes_valid.sum())
            self.count("ac", (spikes_valid * self.heads * size).sum())
            self.count("ac", (spikes_valid * self.heads * valid_count).sum())
            self.count("ac", (spikes_valid * self.heads * 2).sum())
        q_term = xh @ self.q_bias_term.unsqueeze(-1)  # (N, H, L, 1)
        k_term = (xh @ self.k_bias_term.unsqueeze(-1)).transpose(-2, -1)
        scores = scores + q_term + k_term + self.bias_product.view(1, -1, 1, 1)
        pairs = (valid_count.pow(2) * self.heads).sum()
        if self.decay is not None:
            self.count("other", pairs)  # the HDM product
        if self.variant == "softmax":
            self.count("other", 3 * pairs)  # scaling, exponent, normalisation
        return attention_weights(
            scores, valid, self.variant, self.decay, self.d_k, self.linear_norm
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = self.attention_map(x, valid)
        values = self.value_neuron(self.linear_v(x, valid), valid)
        values_h = split_heads(values, self.heads)
        if self.execution == "multi_level":
            context = weights @ values_h
        else:
            planes = spike_planes(values_h, self.timesteps)
            context = sum(weights @ plane for plane in planes)
            valid_rows = valid.sum(1)
            value_spikes = (values * valid.unsqueeze(-1)).sum((1, 2))
            self.count("spikes", value_spikes.sum())
            self.count("ac", (value_spikes * valid_rows).sum())
        return self.linear_out(
            self.attention_neuron(merge_heads(context), valid), valid
        )


class DeploySDSA3(DeployModule):
    """SDSA-3 with frozen thresholds and synaptic layers fed by spike counts."""

    kind = "sdsa3"

    def __init__(self, size, heads, scale, neuron):
        super().__init__()
        self.heads = heads
        self.scale = scale
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            setattr(self, name, SynapticLinear(size, size))
        for name in ("query_neuron", "key_neuron", "value_neuron", "attention_neuron"):
            setattr(self, name, neuron(size))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keep = valid.unsqueeze(-1).to(x.dtype)
        q = self.query_neuron(self.linear_q(x, valid), valid)
        k = self.key_neuron(self.linear_k(x, valid), valid) * keep
        v = self.value_neuron(self.linear_v(x, valid), valid)
        context = sdsa_context(*(split_heads(t, self.heads) for t in (q, k, v)), self.scale)
        if self.execution == "spike_train":
            d_k = x.size(-1) // self.heads
            # each key spike adds a value row (d_k); each query spike adds a kv row
            self.count("ac", (k * keep).sum() * d_k + (q * keep).sum() * d_k)
            self.count("other", valid.sum() * x.size(-1))  # the scale
        spikes = self.attention_neuron(merge_heads(context), valid)
        return self.linear_out(spikes.to(x.dtype), valid)


def deploy_factories(options, timesteps_scale: float):
    """Neuron, attention and MLP factories of the deploy form (see encoders.common)."""

    def neuron(channels: int) -> FrozenThresholdNeuron:
        return FrozenThresholdNeuron(channels, options.timesteps, timesteps_scale)

    def attention(index: int) -> torch.nn.Module:
        size, heads = options.output_size, options.attention_heads
        if options.attention == "sdsa3":
            return DeploySDSA3(size, heads, options.sdsa_scale, neuron)
        decay = (decay_factor(options.decay_layer_start + index)
                 if options.attention.startswith("hd_") else None)
        variant = options.attention.rsplit("_", 1)[1]
        return FusedHDRepSSA(size, heads, variant, decay, neuron,
                             options.linear_attention_norm)

    def mlp() -> DeploySpikingChannelMLP:
        return DeploySpikingChannelMLP(options.output_size, options.linear_units, neuron)

    return neuron, attention, mlp


