"""HD-RepSSA_S as one FlexAttention kernel: the decay mask and key padding as score_mod.

``softmax((A * H) / sqrt(d_k)) V_s`` with ``H[i, j] = phi^|i - j|`` (Eq. 14-15) never
materialises the (L, L) map: FlexAttention applies the decay and the padding to each
scaled score inside its fused kernel. It pays off under ``torch.compile`` with
half-precision tensor cores (fp32 measured slower on an H100), which is when
:class:`~espnet_imlspike.attention.HDRepSSA` uses it.
"""

import math
from typing import Optional

import torch


def flex_softmax_context(
    q: torch.Tensor,
    k: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    decay: Optional[float],
    d_k: int,
) -> torch.Tensor:
    """Context (N, H, L, d_k) of the softmax HD-RepSSA from per-head q, k, values."""
    from torch.nn.attention.flex_attention import flex_attention

    lengths = valid.sum(1)
    log_phi = None if decay is None else math.log(decay)

    def score_mod(score, batch, head, q_idx, kv_idx):
        if log_phi is not None:
            distance = (q_idx - kv_idx).abs().to(torch.float32)
            score = score * torch.exp(distance * log_phi).to(score.dtype)
        return torch.where(kv_idx < lengths[batch], score, float("-inf"))

    return flex_attention(
        q, k, values.to(q.dtype), score_mod=score_mod, scale=1 / math.sqrt(d_k)
    )
