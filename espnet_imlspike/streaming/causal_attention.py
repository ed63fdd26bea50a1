"""Causal HD-RepSSA: the decay mask reaches only the past, keys come from a cache.

The full-utterance HDM of Eq. 14 is symmetric, ``H[i, j] = phi^|i - j|``. The causal
variant keeps ``phi^(i - j)`` for ``j <= i`` and hides every future key (and, with a
bounded ``left_context``, keys ``left_context`` or more frames back): hidden keys get
weight 0 in both the softmax and the linear variant, as padded keys do. A query's
visible keys then never change once it is computed, so the encoder can be run chunk
by chunk: :meth:`CausalAttention.streaming` hands the module an
:class:`~espnet_imlspike.streaming.cache.AttentionCache` holding the past keys, and the
same code serves the full utterance (one chunk, empty cache) and every chunk.

In the linear variant with ``linear_attention_norm: valid_keys`` the divisor is the
number of keys the query sees (its causal reading).
"""

import math
from contextlib import contextmanager
from typing import Callable, Optional

import torch
from typeguard import typechecked

from espnet_imlspike.attention import HDRepSSA, merge_heads, split_heads
from espnet_imlspike.streaming.cache import AttentionCache
from espnet_imlspike.streaming.options import StreamingOptions


def causal_decay(distance: torch.Tensor, phi: float, dtype) -> torch.Tensor:
    """``phi^(i - j)`` for a (queries, keys) matrix of ``i - j`` (future entries: 1).

    Same arithmetic as :func:`espnet_imlspike.attention.hierarchical_decay_mask`
    (float32, float64 for a float64 map, then cast), so a past key's factor equals the
    symmetric mask's.
    """
    steps = distance.clamp(min=0).to(torch.promote_types(dtype, torch.float32))
    return torch.exp(steps * math.log(phi)).to(dtype)


def hidden_keys(
    query_pos: torch.Tensor, key_pos: torch.Tensor, key_valid: torch.Tensor, left_context: int
) -> torch.Tensor:
    """(N, 1, Lq, Lk) True where a query may not see a key: future, too old or padded."""
    distance = query_pos[:, None] - key_pos[None, :]
    hidden = distance < 0
    if left_context > 0:
        hidden = hidden | (distance >= left_context)
    return hidden[None, None] | ~key_valid[:, None, None, :]


def causal_weights(
    scores: torch.Tensor,
    query_pos: torch.Tensor,
    key_pos: torch.Tensor,
    key_valid: torch.Tensor,
    variant: str,
    decay: Optional[float],
    d_k: int,
    linear_norm: str = "none",
    left_context: int = 0,
) -> torch.Tensor:
    """Causal attention weights (N, H, Lq, Lk) from the raw map ``A`` (Eq. 13-15).

    Args:
        scores: ``A`` for the queries and keys (N, H, Lq, Lk).
        query_pos: Absolute positions of the queries (Lq,).
        key_pos: Absolute positions of the keys (Lk,).
        key_valid: (N, Lk) mask of unpadded keys.
        variant: "softmax" or "linear".
        decay: phi of the HDM, or None.
        d_k: Head dimension (softmax scaling).
        linear_norm: "none" or "valid_keys" (divide by the keys each query sees).
        left_context: Frames a query sees, itself included (0 = all).
    """
    hidden = hidden_keys(query_pos, key_pos, key_valid, left_context)
    if decay is not None:
        distance = query_pos[:, None] - key_pos[None, :]
        scores = scores * causal_decay(distance, decay, scores.dtype)
    if variant == "softmax":
        scores = scores / math.sqrt(d_k)
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
    else:
        weights = scores
        if linear_norm == "valid_keys":
            seen = (~hidden).sum(-1, keepdim=True).clamp(min=1).to(scores.dtype)
            weights = weights / seen
    return weights.masked_fill(hidden, 0.0)


class CausalAttention:
    """Mixin: the cache a causal attention module reads while streaming.

    Outside :meth:`streaming` every forward is a full utterance (a fresh cache).
    """

    left_context = 0
    _stream_cache: Optional[AttentionCache] = None

    @contextmanager
    def streaming(self, cache: AttentionCache):
        """Run the forwards inside with ``cache`` (past keys in, this chunk's added)."""
        self._stream_cache = cache
        try:
            yield self
        finally:
            self._stream_cache = None

    def current_cache(self) -> AttentionCache:
        if self._stream_cache is not None:
            return self._stream_cache
        return AttentionCache(self.left_context)


class CausalHDRepSSA(CausalAttention, HDRepSSA):
    """HD-RepSSA (Eq. 12-15) with a causal decay mask, in its training form.

    Same parameters (names, shapes) as :class:`~espnet_imlspike.attention.HDRepSSA`;
    the weights of a query are those of :func:`causal_weights`. Always the explicit
    map (the FlexAttention path of the parent knows only the symmetric mask).

    Args:
        size: Model dimension D.
        heads: Number of heads (must divide D).
        neuron: Factory returning a spiking neuron for D channels.
        variant: "softmax" or "linear".
        decay: phi(l) of the HDM, or None for plain RepSSA.
        dropout_rate: Dropout on the softmax attention weights.
        linear_norm: "none" or "valid_keys" (linear variant).
        left_context: Frames a query sees, itself included (0 = all past frames).
    """

    @typechecked
    def __init__(
        self,
        size: int,
        heads: int,
        neuron: Callable[[], torch.nn.Module],
        variant: str = "softmax",
        decay: Optional[float] = None,
        dropout_rate: float = 0.0,
        linear_norm: str = "none",
        left_context: int = 0,
    ):
        super().__init__(size, heads, neuron, variant, decay, dropout_rate, linear_norm)
        self.left_context = StreamingOptions(left_context).left_context
        self.fused_attention = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, causal, left_context={self.left_context}"

    def attention_map(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Causal weights per head (N, H, L, L) of a full utterance (for plots)."""
        q, k = self._queries_keys(x)
        positions = torch.arange(x.size(1), device=x.device)
        return causal_weights(
            torch.matmul(q, k.transpose(-2, -1)), positions, positions, valid,
            self.variant, self.decay, self.d_k, self.linear_norm, self.left_context,
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Attend to the cached and the current frames.

        Args:
            x: Input spikes (N, L, D) of the utterance or of the current chunk.
            valid: (N, L) bool mask of unpadded frames.

        Returns:
            Output (N, L, D) of ``W_out``.
        """
        q, k = self._queries_keys(x)
        values = split_heads(self.value_neuron(self.linear_v(x), valid), self.heads)
        keys, key_valid, query_pos, key_pos = self.current_cache().append(
            valid, keys=k, values=values
        )
        weights = causal_weights(
            torch.matmul(q, keys["keys"].transpose(-2, -1)), query_pos, key_pos, key_valid,
            self.variant, self.decay, self.d_k, self.linear_norm, self.left_context,
        )
        context = torch.matmul(self.dropout(weights), keys["values"])
        return self.linear_out(self.attention_neuron(merge_heads(context), valid))
