"""The key/value cache of one causal attention layer, and the state of a whole stream.

An :class:`AttentionCache` keeps what the past frames contribute to later queries (the
training form: keys and value spikes; the deploy form: the key spikes, their bias term
and the value spikes), with absolute positions, so a chunk's queries see exactly the
keys the full-utterance causal model shows them. With a bounded ``left_context`` only
the last ``left_context - 1`` frames are kept.
"""

from typing import Dict, List, Optional, Tuple

import torch


class AttentionCache:
    """Past keys/values of one attention layer (tensors with time at dim -2).

    Args:
        left_context: Frames a query may attend to, itself included (0 = all).
    """

    def __init__(self, left_context: int = 0):
        self.left_context = left_context
        self.tensors: Dict[str, torch.Tensor] = {}
        self.valid: Optional[torch.Tensor] = None  # (N, cached frames)
        self.start = 0  # absolute position of the first cached frame
        self.length = 0  # frames seen so far: the position of the next query

    def append(
        self, valid: torch.Tensor, **tensors: torch.Tensor
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Add a chunk's frames.

        Args:
            valid: (N, chunk) mask of the chunk's unpadded frames.
            **tensors: Per-frame tensors (..., chunk, C) to keep for later queries.

        Returns:
            Every key tensor the chunk's queries may see (cached + chunk), their valid
            mask (N, keys), the queries' absolute positions (chunk,) and the keys'
            absolute positions (keys,).
        """
        chunk = valid.size(1)
        for name, tensor in tensors.items():
            old = self.tensors.get(name)
            self.tensors[name] = tensor if old is None else torch.cat([old, tensor], dim=-2)
        self.valid = valid if self.valid is None else torch.cat([self.valid, valid], dim=1)
        query_pos = torch.arange(self.length, self.length + chunk, device=valid.device)
        key_pos = torch.arange(self.start, self.length + chunk, device=valid.device)
        self.length += chunk
        keys, key_valid = dict(self.tensors), self.valid
        self._trim()
        return keys, key_valid, query_pos, key_pos

    def _trim(self) -> None:
        if self.left_context <= 0:
            return
        drop = (self.length - self.start) - (self.left_context - 1)
        if drop > 0:
            self.tensors = {name: t[..., drop:, :] for name, t in self.tensors.items()}
            self.valid = self.valid[:, drop:]
            self.start += drop

    def frames(self) -> int:
        """Frames held."""
        return self.length - self.start


class StreamState:
    """Everything an encoder carries from one chunk to the next.

    Attributes:
        features: Input frames the subsampling has not consumed yet (N, F_left, D_in).
        consumed: Input frames consumed so far.
        emitted: Encoder frames output so far (the positional-encoding offset).
        layers: One :class:`AttentionCache` per block.
    """

    def __init__(self, num_blocks: int, left_context: int):
        self.features: Optional[torch.Tensor] = None
        self.consumed = 0
        self.emitted = 0
        self.layers: List[AttentionCache] = [
            AttentionCache(left_context) for _ in range(num_blocks)
        ]
