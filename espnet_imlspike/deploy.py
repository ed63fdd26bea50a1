"""Spike-driven inference form of IML-Spikeformer (paper Eq. 9, Eq. 11, Eq. 12 inference).

:func:`convert_encoder` turns a trained :class:`IMLSpikeformerEncoder` (firing ``imls`` or
``mls``) into :class:`IMLSpikeformerDeployEncoder`:

* IMLS thresholds are frozen to the running averages (Eq. 11): each neuron becomes a
  :class:`FrozenThresholdNeuron` with the same arithmetic as the training form's eval.
* HD-RepSSA's query and key weights are fused per head (Eq. 12, inference branch):
  ``W_QK,h = W_Q,h W_K,h^T``. ESPnet's linear layers have biases, which the paper's
  equation omits; they are fused too, exactly:
  ``A_h = X W_QK,h X^T + (X u_h) 1^T + 1 (X w_h)^T + c_h`` with ``u_h = W_Q,h b_K,h``,
  ``w_h = W_K,h b_Q,h``, ``c_h = b_Q,h . b_K,h`` (needed: the HDM multiplies every term).
* Spikes are integer counts with no per-channel scale (see neurons.py), so no scale has
  to be folded into any weight: every synaptic layer after the first receives spike counts.

With ``execution="spike_train"`` each synaptic layer expands a multi-level spike
``s in {0..T}`` into T binary spikes ``s[t] = [s >= t]`` (what an IF neuron with input at
the first step emits, Fig. 1a) and computes ``sum_t s[t] W`` (Eq. 9), counting the
accumulates the spikes trigger (:class:`OpCounter`). ``execution="multi_level"`` computes
``s W`` directly (same result, faster). Operations that stay non-spike-driven are counted
separately: the subsampling convolution and its linear layer (real-valued features), the
HDM product, softmax and its scaling, LayerNorms, residual additions and neuron updates.
"""

import math
from collections import defaultdict
from typing import Dict, Optional

import torch
from typeguard import typechecked

from espnet_imlspike.attention import SDSA3, HDRepSSA, hierarchical_decay_mask
from espnet_imlspike.attention import _merge_heads, _split_heads
from espnet_imlspike.encoder import IMLSpikeformerEncoder
from espnet_imlspike.neurons import (
    InputAwareMultiLevelSpikeNeuron,
    MultiLevelSpikeNeuron,
    multi_level_fire,
)

EXECUTION_MODES = ("spike_train", "multi_level")


class OpCounter:
    """Per-layer operation counts of the deploy form, over valid frames only.

    ``counts[layer][kind]`` with kinds ``ac`` (accumulates triggered by binary spikes),
    ``mac`` (multiply-accumulates of real-valued synaptic layers), ``spikes`` (binary
    spikes received), and ``other`` (non-synaptic element operations: LayerNorm,
    softmax, HDM product, residual additions, neuron updates).
    """

    def __init__(self):
        self.enabled = False
        self.counts: Dict[str, Dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, layer: str, kind: str, amount) -> None:
        if self.enabled:
            self.counts[layer][kind] += int(amount)

    def reset(self) -> None:
        self.counts.clear()

    def totals(self) -> Dict[str, int]:
        total: Dict[str, int] = defaultdict(int)
        for per_layer in self.counts.values():
            for kind, amount in per_layer.items():
                total[kind] += amount
        return dict(total)


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
        raise ValueError(f"{layer}: input is not integer spike counts in [0, {timesteps}]")


class _DeployModule(torch.nn.Module):
    """Base: a name for the op counter, the counter and the execution mode."""

    layer_name = ""
    counter: Optional[OpCounter] = None
    execution = "spike_train"
    timesteps = 1

    def count(self, kind: str, amount) -> None:
        if self.counter is not None:
            self.counter.add(self.layer_name, kind, amount)


class FrozenThresholdNeuron(_DeployModule):
    """Multi-level neuron with a frozen channel-wise threshold (Eq. 11 at inference).

    Fires ``floor(clip(x / divisor * scale, 0, T))``: for IMLS ``divisor = Lambda~`` and
    ``scale = T``, for MLS ``divisor = theta`` and ``scale = 1``, the same arithmetic as
    the training form, so spike counts are identical.

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


class SynapticLinear(_DeployModule):
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


class DeploySpikingChannelMLP(_DeployModule):
    """``SN(X W1) W2`` with synaptic layers that see spike counts."""

    def __init__(self, size: int, hidden_units: int, neuron):
        super().__init__()
        self.w_1 = SynapticLinear(size, hidden_units)
        self.hidden_neuron = neuron(hidden_units)
        self.w_2 = SynapticLinear(hidden_units, size)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.hidden_neuron(self.w_1(x, valid), valid), valid)


class FusedHDRepSSA(_DeployModule):
    """HD-RepSSA in its inference form: fused ``W_QK`` per head (Eq. 12) and spike trains.

    Parameters ``w_qk`` (H, D, D), ``q_bias_term`` u (H, D), ``k_bias_term`` w (H, D),
    ``bias_product`` c (H,), then ``linear_v`` and ``linear_out`` as in training.
    """

    def __init__(self, size, heads, variant, decay, neuron):
        super().__init__()
        self.heads = heads
        self.d_k = size // heads
        self.variant = variant
        self.decay = decay
        self.w_qk = torch.nn.Parameter(torch.zeros(heads, size, size))
        self.q_bias_term = torch.nn.Parameter(torch.zeros(heads, size))
        self.k_bias_term = torch.nn.Parameter(torch.zeros(heads, size))
        self.bias_product = torch.nn.Parameter(torch.zeros(heads))
        self.linear_v = SynapticLinear(size, size)
        self.linear_out = SynapticLinear(size, size)
        self.value_neuron = neuron(size)
        self.attention_neuron = neuron(size)

    @torch.no_grad()
    def load_from(self, trained: HDRepSSA) -> None:
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
        n, length, size = x.shape
        valid_count = valid.sum(1)  # (N,)
        xh = x.unsqueeze(1)  # (N, 1, L, D), shared by all heads
        if self.execution == "multi_level":
            projected = xh @ self.w_qk  # (N, H, L, D)
            scores = projected @ xh.transpose(-2, -1)
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
        q_term = (x.unsqueeze(1) @ self.q_bias_term.unsqueeze(-1))  # (N, H, L, 1)
        k_term = (x.unsqueeze(1) @ self.k_bias_term.unsqueeze(-1)).transpose(-2, -1)
        scores = scores + q_term + k_term + self.bias_product.view(1, -1, 1, 1)
        pairs = (valid_count.pow(2) * self.heads).sum()
        if self.decay is not None:
            scores = scores * hierarchical_decay_mask(
                length, self.decay, x.device, scores.dtype
            )
            self.count("other", pairs)
        key_padding = ~valid[:, None, None, :]
        if self.variant == "softmax":
            scores = scores / math.sqrt(self.d_k)
            scores = scores.masked_fill(key_padding, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1)
            self.count("other", 3 * pairs)  # scaling, exponent, normalisation
        else:
            weights = scores
        return weights.masked_fill(key_padding, 0.0)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        weights = self.attention_map(x, valid)
        values = self.value_neuron(self.linear_v(x, valid), valid)
        values_h = _split_heads(values, self.heads)
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
            self.attention_neuron(_merge_heads(context), valid), valid
        )


class DeploySDSA3(_DeployModule):
    """SDSA-3 with frozen thresholds and synaptic layers fed by spike counts."""

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
        qh, kh, vh = (_split_heads(t, self.heads) for t in (q, k, v))
        kv = kh.transpose(-2, -1) @ vh  # integer: spike counts times spike counts
        context = (qh @ kv) * self.scale
        if self.execution == "spike_train":
            d_k = x.size(-1) // self.heads
            # each key spike adds a value row (d_k); each query spike adds a kv row
            self.count("ac", (k * keep).sum() * d_k + (q * keep).sum() * d_k)
            self.count("other", valid.sum() * x.size(-1))  # the scale
        return self.linear_out(
            self.attention_neuron(_merge_heads(context), valid), valid
        )


class IMLSpikeformerDeployEncoder(IMLSpikeformerEncoder):
    """The spike-driven inference form of :class:`IMLSpikeformerEncoder`.

    Built from the same configuration (so ESPnet can build it from a config file), with
    ``execution`` added; training-only options are accepted and ignored. Load a converted
    state dict (see :func:`convert_encoder` and ``python -m espnet_imlspike.bin.deploy``).

    Args:
        input_size: Input feature dimension.
        execution: "spike_train" (binary spike trains, operations counted) or
            "multi_level" (multi-level spikes, faster, same outputs).
        **kwargs: The options of :class:`IMLSpikeformerEncoder`.
    """

    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        input_layer: str = "conv2d",
        normalize_before: bool = True,
        timesteps: int = 6,
        firing: str = "imls",
        attention: str = "hd_repssa_softmax",
        momentum: float = 0.1,
        threshold: float = 1.0,
        leak: float = 1.0,
        surrogate_alpha: float = 2.0,
        decay_layer_start: int = 1,
        sdsa_scale: float = 0.125,
        execution: str = "spike_train",
    ):
        if firing not in ("imls", "mls"):
            raise ValueError(
                f"deploy form needs firing imls or mls, got {firing!r} (multi-step "
                "neurons already emit binary spikes)"
            )
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        super().__init__(
            input_size, output_size, attention_heads, linear_units, num_blocks,
            dropout_rate, positional_dropout_rate, attention_dropout_rate, input_layer,
            normalize_before, timesteps, firing, attention, momentum, threshold, leak,
            surrogate_alpha, decay_layer_start, sdsa_scale,
        )
        scale = float(timesteps) if firing == "imls" else 1.0

        def neuron(channels):
            return FrozenThresholdNeuron(channels, timesteps, scale)

        for block in self.encoders:
            trained_attn = block.self_attn
            if isinstance(trained_attn, SDSA3):
                block.self_attn = DeploySDSA3(output_size, attention_heads, sdsa_scale, neuron)
            else:
                block.self_attn = FusedHDRepSSA(
                    output_size, attention_heads, trained_attn.variant,
                    trained_attn.decay, neuron,
                )
            block.attn_input_neuron = neuron(output_size)
            block.mlp_input_neuron = neuron(output_size)
            block.feed_forward = DeploySpikingChannelMLP(output_size, linear_units, neuron)
        self.counter = OpCounter()
        for name, module in self.named_modules():
            if isinstance(module, _DeployModule):
                module.layer_name = name
                module.counter = self.counter
                module.timesteps = timesteps
        self.set_execution(execution)

    def set_execution(self, execution: str) -> None:
        """Switch between "spike_train" and "multi_level" execution."""
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        self.execution = execution
        for module in self.modules():
            if isinstance(module, _DeployModule):
                module.execution = execution

    def forward(self, xs_pad, ilens, prev_states=None):
        """Encode (see :meth:`IMLSpikeformerEncoder.forward`); counts ops if enabled."""
        out, olens, states = super().forward(xs_pad, ilens, prev_states)
        if self.counter.enabled:
            self._count_dense_parts(xs_pad, ilens, olens)
        return out, olens, states

    def _count_dense_parts(self, xs_pad, ilens, olens) -> None:
        """MACs of the real-valued front and element ops outside the deploy modules."""
        from espnet_imlspike.energy.flops import conv_front_costs

        size = self.output_size()
        frames = int(olens.sum())
        counter = self.counter
        for in_frames in ilens.tolist():
            for cost in conv_front_costs(self.embed, in_frames, self.input_size):
                counter.add("embed", "mac", cost.flops)
        counter.add("embed", "other", frames * size)  # positional encoding
        norms = 2 * len(self.encoders) + (1 if self.normalize_before else 0)
        counter.add("layer_norm", "other", 5 * norms * frames * size)
        counter.add("residual", "other", 2 * len(self.encoders) * frames * size)


@torch.no_grad()
def convert_encoder(trained: IMLSpikeformerEncoder, execution: str = "spike_train"):
    """Build the deploy form of a trained encoder and load its converted weights.

    Args:
        trained: A trained IMLSpikeformerEncoder with firing imls or mls.
        execution: "spike_train" or "multi_level".

    Returns:
        IMLSpikeformerDeployEncoder in eval mode, on the trained encoder's device/dtype.
    """
    if type(trained) is not IMLSpikeformerEncoder:
        raise TypeError(
            f"expected an IMLSpikeformerEncoder, got {type(trained).__name__}"
        )
    if trained.firing not in ("imls", "mls"):
        raise ValueError(
            f"deploy form needs firing imls or mls, got {trained.firing!r} (multi-step "
            "neurons already emit binary spikes)"
        )
    deploy = IMLSpikeformerDeployEncoder(**encoder_config(trained), execution=execution)
    reference = next(trained.parameters())
    deploy.to(device=reference.device, dtype=reference.dtype)
    deploy.embed.load_state_dict(trained.embed.state_dict())
    if trained.normalize_before:
        deploy.after_norm.load_state_dict(trained.after_norm.state_dict())
    for ours, theirs in zip(deploy.encoders, trained.encoders):
        ours.norm1.load_state_dict(theirs.norm1.state_dict())
        ours.norm2.load_state_dict(theirs.norm2.state_dict())
        _freeze(ours.attn_input_neuron, theirs.attn_input_neuron)
        _freeze(ours.mlp_input_neuron, theirs.mlp_input_neuron)
        if isinstance(theirs.self_attn, SDSA3):
            for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
                getattr(ours.self_attn, name).load_from(getattr(theirs.self_attn, name))
            for name in ("query_neuron", "key_neuron", "value_neuron", "attention_neuron"):
                _freeze(getattr(ours.self_attn, name), getattr(theirs.self_attn, name))
        else:
            ours.self_attn.load_from(theirs.self_attn)
            _freeze(ours.self_attn.value_neuron, theirs.self_attn.value_neuron)
            _freeze(ours.self_attn.attention_neuron, theirs.self_attn.attention_neuron)
        mlp, trained_mlp = ours.feed_forward, theirs.feed_forward
        mlp.w_1.load_from(trained_mlp.w_1)
        mlp.w_2.load_from(trained_mlp.w_2)
        _freeze(mlp.hidden_neuron, trained_mlp.hidden_neuron)
    return deploy.eval()


def _freeze(frozen: FrozenThresholdNeuron, trained: torch.nn.Module) -> None:
    if isinstance(trained, InputAwareMultiLevelSpikeNeuron):
        frozen.divisor.copy_(trained.running_max.clamp(min=trained.eps))
    elif isinstance(trained, MultiLevelSpikeNeuron):
        frozen.divisor.fill_(trained.threshold)
    else:
        raise TypeError(f"cannot freeze a {type(trained).__name__}")


def encoder_config(encoder: IMLSpikeformerEncoder) -> Dict:
    """The constructor arguments of a built encoder (from its modules and attributes)."""
    first = encoder.encoders[0]
    attn = first.self_attn
    neuron = next(
        m for m in encoder.modules()
        if isinstance(m, (InputAwareMultiLevelSpikeNeuron, MultiLevelSpikeNeuron))
    )
    config = dict(
        input_size=encoder.input_size,
        output_size=encoder.output_size(),
        attention_heads=attn.heads,
        linear_units=first.feed_forward.w_1.out_features,
        num_blocks=len(encoder.encoders),
        input_layer=encoder.input_layer,
        normalize_before=encoder.normalize_before,
        timesteps=encoder.timesteps,
        firing=encoder.firing,
        attention=encoder.attention,
        decay_layer_start=encoder.decay_layer_start,
    )
    if isinstance(neuron, MultiLevelSpikeNeuron):
        config["threshold"] = neuron.threshold
    if isinstance(attn, SDSA3):
        config["sdsa_scale"] = attn.scale
    return config
