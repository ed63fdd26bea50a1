"""Causal fused HD-RepSSA of the deploy form: binary spike trains, chunk by chunk.

:class:`CausalFusedHDRepSSA` is :class:`~espnet_imlspike.deploy.modules.FusedHDRepSSA`
(fused ``W_QK`` per head with ESPnet's biases folded in, Eq. 12; spike-train execution
of every synaptic product, Eq. 9) with the causal weights of :mod:`.causal_attention`.
Its cache holds what past frames give later queries: their input spikes (the keys of
``(X W_QK) X^T``), their key bias term ``X w_h`` and their value spikes, so a chunk
computes only its own rows. The accumulates counted are those the causal map
triggers: a key spike adds one value per query row that sees it, a value spike one row
of ``d_k`` per query row that sees it.
"""

import torch

from espnet_imlspike.attention import merge_heads, split_heads
from espnet_imlspike.deploy.modules import FusedHDRepSSA, check_spike_counts, spike_planes
from espnet_imlspike.streaming.causal_attention import (
    CausalAttention,
    causal_weights,
    hidden_keys,
)
from espnet_imlspike.streaming.options import StreamingOptions


class CausalFusedHDRepSSA(CausalAttention, FusedHDRepSSA):
    """Fused HD-RepSSA with causal weights and a cache of past spikes.

    Args:
        size: Model dimension D.
        heads: Number of heads.
        variant: "softmax" or "linear".
        decay: phi of the HDM, or None.
        neuron: channels -> FrozenThresholdNeuron.
        linear_norm: "none" or "valid_keys".
        left_context: Frames a query sees, itself included (0 = all).
    """

    def __init__(self, size, heads, variant, decay, neuron, linear_norm="none",
                 left_context: int = 0):
        super().__init__(size, heads, variant, decay, neuron, linear_norm)
        self.left_context = StreamingOptions(left_context).left_context

    def _project(self, xh: torch.Tensor) -> torch.Tensor:
        """``X W_QK`` per head (N, H, L, D) of spikes ``xh`` (N, 1, L, D)."""
        if self.execution == "multi_level":
            return xh @ self.w_qk
        return sum(plane @ self.w_qk for plane in spike_planes(xh, self.timesteps))

    def _times_spikes(self, left: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        """``left @ spikes`` with ``spikes`` multi-level, or as a sum over binary planes."""
        if self.execution == "multi_level":
            return left @ spikes
        return sum(left @ plane for plane in spike_planes(spikes, self.timesteps))

    def _query_side(self, xh: torch.Tensor):
        """``X W_QK`` (N, H, L, D) and the bias terms ``X u_h``, ``X w_h`` (N, H, L, 1)."""
        return (self._project(xh), xh @ self.q_bias_term.unsqueeze(-1),
                xh @ self.k_bias_term.unsqueeze(-1))

    def _raw_scores(self, projected, q_term, key_spikes, k_term) -> torch.Tensor:
        """``A = X W_QK X^T + X u 1^T + 1 (X w)^T + c`` (N, H, Lq, Lk)."""
        scores = self._times_spikes(projected, key_spikes.transpose(-2, -1))
        scores = scores + q_term + k_term.transpose(-2, -1)
        return scores + self.bias_product.view(1, -1, 1, 1)

    def _count(self, x, valid, keys, seen, values) -> None:
        """Accumulates the causal map triggers (spike-train execution)."""
        size = x.size(-1)
        spikes = (x * valid.unsqueeze(-1)).sum()
        rows_per_key = seen.sum(-2).squeeze(1)  # (N, Lk): query rows that see each key
        key_spikes = keys["spikes"].squeeze(1).sum(-1)  # (N, Lk)
        value_spikes = keys["values"].sum((1, 3))  # (N, Lk)
        pairs = seen.sum()
        self.count("spikes", spikes)
        self.count("ac", spikes * self.heads * (size + 2))  # X W_QK, both bias terms
        self.count("ac", (key_spikes * rows_per_key).sum() * self.heads)  # (X W_QK) X^T
        self.count("spikes", (values * valid.unsqueeze(-1)).sum())
        self.count("ac", (value_spikes * rows_per_key).sum())  # weights x V_s
        if self.decay is not None:
            self.count("other", pairs * self.heads)  # the HDM product
        if self.variant == "softmax":
            self.count("other", 3 * pairs * self.heads)

    def attention_map(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Causal weights (N, H, L, L) of a full utterance (for plots; nothing counted)."""
        xh = x.unsqueeze(1)
        projected, q_term, k_term = self._query_side(xh)
        positions = torch.arange(x.size(1), device=x.device)
        return causal_weights(self._raw_scores(projected, q_term, xh, k_term), positions,
                              positions, valid, self.variant, self.decay, self.d_k,
                              self.linear_norm, self.left_context)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Args: spikes (N, L, D) of the utterance or chunk, valid (N, L). Returns (N, L, D)."""
        if self.execution == "spike_train":
            check_spike_counts(x, self.timesteps, self.layer_name)
        xh = x.unsqueeze(1)
        projected, q_term, k_term = self._query_side(xh)
        values = self.value_neuron(self.linear_v(x, valid), valid)
        keys, key_valid, query_pos, key_pos = self.current_cache().append(
            valid, spikes=xh, k_term=k_term, values=split_heads(values, self.heads)
        )
        scores = self._raw_scores(projected, q_term, keys["spikes"], keys["k_term"])
        weights = causal_weights(scores, query_pos, key_pos, key_valid, self.variant,
                                 self.decay, self.d_k, self.linear_norm, self.left_context)
        context = self._times_spikes(weights, keys["values"])
        counting = self.counter is not None and self.counter.enabled
        if self.execution == "spike_train" and counting:
            seen = ~hidden_keys(query_pos, key_pos, key_valid, self.left_context)
            self._count(x, valid, keys, seen & valid[:, None, :, None], values)
        return self.linear_out(self.attention_neuron(merge_heads(context), valid), valid)
