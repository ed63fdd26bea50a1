"""Spiking self-attention: HD-RepSSA (paper Sec. V) and SDSA-3 (Eq. 5).

Both modules take spikes ``x`` (N, L, D) from the block's input neuron and a ``(N, L)``
bool mask of valid frames, and return the real-valued output of ``W_out``. Their linear
layers carry ESPnet's names and shapes (``linear_q``, ``linear_k``, ``linear_v``,
``linear_out``, with biases), so parameter counts equal ESPnet's MultiHeadedAttention.
"""

import math
from typing import Callable, Optional

import torch
from typeguard import typechecked

from espnet_imlspike.errors import OptionError

ATTENTION_TYPES = (
    "hd_repssa_softmax",
    "hd_repssa_linear",
    "repssa_softmax",
    "repssa_linear",
    "sdsa3",
)
LINEAR_NORMS = ("none", "valid_keys")


def decay_factor(layer: int) -> float:
    """Layer-specific decay factor of the hierarchical decay mask: 1 - 2^(-5-l)."""
    return 1.0 - 2.0 ** (-5 - layer)


def hierarchical_decay_mask(
    length: int, phi: float, device=None, dtype=torch.float32
) -> torch.Tensor:
    """HDM of Eq. 14: ``H[i, j] = phi ** |i - j|`` as an (L, L) tensor (computed in
    float32, or float64 for a float64 map)."""
    pos = torch.arange(length, device=device, dtype=torch.promote_types(dtype, torch.float32))
    distance = (pos[:, None] - pos[None, :]).abs()
    return torch.exp(distance * math.log(phi)).to(dtype)


def attention_weights(
    scores: torch.Tensor,
    valid: torch.Tensor,
    variant: str,
    decay: Optional[float],
    d_k: int,
    linear_norm: str = "none",
) -> torch.Tensor:
    """Weights (N, H, L, L) from the raw map ``A``: HDM (Eq. 15), then softmax or linear.

    Padded keys get weight 0 in both variants (a row with no valid key stays finite).
    Shared by the training form and the fused inference form.
    """
    if decay is not None:
        scores = scores * hierarchical_decay_mask(scores.size(-1), decay, scores.device,
                                                  scores.dtype)
    key_padding = ~valid[:, None, None, :]
    if variant == "softmax":
        scores = scores / math.sqrt(d_k)
        scores = scores.masked_fill(key_padding, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
    else:
        weights = scores
        if linear_norm == "valid_keys":
            keys = valid.sum(-1).clamp(min=1).to(scores.dtype)
            weights = weights / keys[:, None, None, None]
    return weights.masked_fill(key_padding, 0.0)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, D) -> (N, H, L, D / H)."""
    n, length, dim = x.shape
    return x.view(n, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(N, H, L, d_k) -> (N, L, H d_k)."""
    n, heads, length, d_k = x.shape
    return x.transpose(1, 2).reshape(n, length, heads * d_k)


class HDRepSSA(torch.nn.Module):
    """(HD-)RepSSA, Eq. 12-15, in its training form.

    ``A = (X W_Q)(X W_K)^T`` is a continuous map per head (Eq. 12, training branch),
    optionally modulated by the hierarchical decay mask ``A' = A * H(l)`` (Eq. 15).
    The values are spikes ``V_s = SN(X W_V)``. Softmax variant (RepSSA_S):
    ``SN(softmax(A' / sqrt(d_k)) V_s) W_out``; linear variant (RepSSA_L):
    ``SN(A' V_s) W_out`` (Eq. 13). Padded keys are excluded from both; the attention
    neuron sees the merged heads (N, L, D) so its channels are the model channels.

    Args:
        size: Model dimension D.
        heads: Number of heads (must divide D).
        neuron: Factory returning a spiking neuron for D channels.
        variant: "softmax" or "linear".
        decay: phi(l) of the HDM, or None for plain RepSSA.
        dropout_rate: Dropout on the softmax attention weights.
        linear_norm: Linear variant only: "none" (Eq. 13 as written, the default:
            exact to the paper) or "valid_keys" (``A' V_s`` divided by the number of
            valid keys, so the attention neuron's input, and with a frozen eval
            threshold its saturation, does not grow with the utterance length).
    """

    kind = "repssa"  # read by the FLOPs counter (energy report)

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
    ):
        super().__init__()
        if size % heads != 0:
            raise OptionError(f"attention_heads={heads} must divide output_size={size}")
        if variant not in ("softmax", "linear"):
            raise OptionError(f"variant must be softmax or linear, got {variant!r}")
        if decay is not None and not 0.0 < decay <= 1.0:
            raise OptionError(f"decay factor must be in (0, 1], got {decay}")
        if linear_norm not in LINEAR_NORMS:
            raise OptionError(
                f"linear_attention_norm must be one of {LINEAR_NORMS}, got {linear_norm!r}"
            )
        self.heads = heads
        self.d_k = size // heads
        self.variant = variant
        self.decay = decay
        self.linear_norm = linear_norm
        self.linear_q = torch.nn.Linear(size, size)
        self.linear_k = torch.nn.Linear(size, size)
        self.linear_v = torch.nn.Linear(size, size)
        self.linear_out = torch.nn.Linear(size, size)
        self.value_neuron = neuron()
        self.attention_neuron = neuron()
        self.dropout = torch.nn.Dropout(dropout_rate)
        # None (auto): a fused FlexAttention kernel when compiling on CUDA in half
        # precision, the explicit map otherwise; True/False force one path.
        self.fused_attention: Optional[bool] = None

    def extra_repr(self) -> str:
        return f"variant={self.variant}, decay={self.decay}, linear_norm={self.linear_norm}"

    def _use_fused(self, x: torch.Tensor, queries: torch.Tensor) -> bool:
        if self.variant != "softmax" or (self.training and self.dropout.p > 0):
            return False
        if self.fused_attention is not None:
            return self.fused_attention
        # FlexAttention only pays off with half-precision tensor cores (fp32 measured slower)
        half = queries.dtype in (torch.float16, torch.bfloat16)
        return half and x.is_cuda and torch.compiler.is_compiling()

    def _queries_keys(self, x: torch.Tensor):
        return (split_heads(self.linear_q(x), self.heads),
                split_heads(self.linear_k(x), self.heads))

    def fused_softmax_context(
        self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """``softmax((A * H) / sqrt(d_k)) V_s`` in one FlexAttention kernel (the same map
        as :meth:`attention_map`, never materialised; see :mod:`.attention_flex`)."""
        from espnet_imlspike.attention_flex import flex_softmax_context

        return flex_softmax_context(q, k, values, valid, self.decay, self.d_k)

    def attention_map(
        self, x: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Attention weights per head, (N, H, L, L): softmax weights or ``A'``.

        Padded keys get weight 0 in both variants.
        """
        return self._weights(*self._queries_keys(x), valid)

    def _weights(self, q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-2, -1))
        return attention_weights(
            scores, valid, self.variant, self.decay, self.d_k, self.linear_norm
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Apply attention.

        Args:
            x: Input spikes (N, L, D).
            valid: (N, L) bool mask of unpadded frames.

        Returns:
            Output (N, L, D) of ``W_out``.
        """
        q, k = self._queries_keys(x)
        values = split_heads(self.value_neuron(self.linear_v(x), valid), self.heads)
        if self._use_fused(x, q):
            context = self.fused_softmax_context(q, k, valid, values)
        else:
            context = torch.matmul(self.dropout(self._weights(q, k, valid)), values)
        return self.linear_out(self.attention_neuron(merge_heads(context), valid))


class SDSA3(torch.nn.Module):
    """Spike-driven self-attention SDSA-3 (Eq. 5) without BatchNorm, as the paper ran it.

    ``Q_s = SN(X W_Q)``, ``K_s = SN(X W_K)``, ``V_s = SN(X W_V)`` per head, then
    ``SN(scale * Q_s (K_s^T V_s)) W_out``: linear in sequence length. Padded keys
    are zeroed before ``K_s^T V_s``. ``scale`` keeps the un-normalised product in the
    firing range of fixed-threshold neurons (0.125 in the Spike-driven Transformer V2
    code); it is a configuration choice, not part of Eq. 5.

    Args:
        size: Model dimension D.
        heads: Number of heads (must divide D).
        neuron: Factory returning a spiking neuron for D channels.
        scale: Multiplier of ``Q_s K_s^T V_s`` (> 0).

    The products are formed in float32 even under autocast: with multi-level spike
    counts ``Q_s (K_s^T V_s)`` exceeds the float16 range at a few hundred frames.
    """

    kind = "sdsa3"  # read by the FLOPs counter (energy report)

    @typechecked
    def __init__(
        self,
        size: int,
        heads: int,
        neuron: Callable[[], torch.nn.Module],
        scale: float = 0.125,
    ):
        super().__init__()
        if size % heads != 0:
            raise OptionError(f"attention_heads={heads} must divide output_size={size}")
        if not scale > 0:
            raise OptionError(f"sdsa_scale must be > 0, got {scale}")
        self.heads = heads
        self.scale = scale
        self.linear_q = torch.nn.Linear(size, size)
        self.linear_k = torch.nn.Linear(size, size)
        self.linear_v = torch.nn.Linear(size, size)
        self.linear_out = torch.nn.Linear(size, size)
        self.query_neuron = neuron()
        self.key_neuron = neuron()
        self.value_neuron = neuron()
        self.attention_neuron = neuron()

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Apply SDSA-3.

        Args:
            x: Input spikes (N, L, D).
            valid: (N, L) bool mask of unpadded frames.

        Returns:
            Output (N, L, D) of ``W_out``.
        """
        keep = valid.unsqueeze(-1).to(x.dtype)
        q = split_heads(self.query_neuron(self.linear_q(x), valid), self.heads)
        k = split_heads(self.key_neuron(self.linear_k(x), valid) * keep, self.heads)
        v = split_heads(self.value_neuron(self.linear_v(x), valid), self.heads)
        context = sdsa_context(q, k, v, self.scale)
        spikes = self.attention_neuron(merge_heads(context), valid)
        return self.linear_out(spikes.to(x.dtype))


def sdsa_context(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """``scale * Q (K^T V)`` per head, in float32 whatever the autocast dtype."""
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        return torch.matmul(q * scale, torch.matmul(k.transpose(-2, -1), v))


@typechecked
def make_attention(
    attention: str,
    size: int,
    heads: int,
    neuron: Callable[[], torch.nn.Module],
    layer: int,
    dropout_rate: float = 0.0,
    sdsa_scale: float = 0.125,
    linear_norm: str = "none",
) -> torch.nn.Module:
    """Build a spiking self-attention module by name.

    Args:
        attention: One of ``ATTENTION_TYPES``.
        size: Model dimension.
        heads: Number of heads.
        neuron: Neuron factory.
        layer: Layer index l of the HDM decay factor ``phi(l) = 1 - 2^(-5-l)``.
        dropout_rate: Attention-weight dropout (softmax variants).
        sdsa_scale: Scale of SDSA-3.
        linear_norm: Normalisation of the linear HD-RepSSA variants.

    Returns:
        The attention module.
    """
    if attention == "sdsa3":
        return SDSA3(size, heads, neuron, sdsa_scale)
    if attention in ATTENTION_TYPES:
        decay = decay_factor(layer) if attention.startswith("hd_") else None
        variant = attention.rsplit("_", 1)[1]
        return HDRepSSA(size, heads, neuron, variant, decay, dropout_rate, linear_norm)
    raise OptionError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
