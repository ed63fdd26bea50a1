"""One bucket of the encoder's CUDA graphs (:mod:`.graphs`): its static tensors and
graphs, and the autograd node that replays them for a batch padded into the bucket."""

import math
import os
import weakref
from typing import Dict, List, Optional, Sequence

import torch


class StaticTensors:
    """Where the buckets' static tensors of one role (the blocks' input, or the gradient of
    their output) come from: by default views at offset 0 of one buffer per dtype and
    device, shared by every bucket; with ``IMLSPIKE_SHARED_STATIC=0`` a tensor per bucket.

    Sharing is safe because a bucket's static tensor is read only between its replay's
    copy-in and the end of that replay's backward, and no other graph replays meanwhile
    (:class:`~.graphs.EncoderGraphs` runs eagerly while a backward is pending). A bucket
    larger than the buffer gets a new buffer (with :data:`HEADROOM`); the graphs captured
    on the old one keep it alive through their views.
    """

    HEADROOM = 1.25

    def __init__(self):
        self.shared = os.environ.get("IMLSPIKE_SHARED_STATIC", "1") != "0"
        self.buffers: Dict[tuple, torch.Tensor] = {}

    def take(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device
             ) -> torch.Tensor:
        """A zero tensor of ``shape`` (a view into the shared buffer when sharing)."""
        if not self.shared:
            return torch.zeros(shape, dtype=dtype, device=device)
        numel, key = math.prod(shape), (dtype, torch.device(device))
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.zeros(math.ceil(numel * self.HEADROOM), dtype=dtype, device=device)
            self.buffers[key] = buffer
        return buffer[:numel].view(shape).zero_()


class Entry:
    """Static tensors and graphs of one bucket."""

    def __init__(self, batch: int, frames: int, xs: torch.Tensor, ilens: torch.Tensor,
                 inputs: StaticTensors):
        shape = (batch, frames) + tuple(xs.shape[2:])
        self.xs = inputs.take(shape, xs.dtype, xs.device)
        self.ilens = torch.zeros(batch, dtype=ilens.dtype, device=ilens.device)
        self.forward_graph = torch.cuda.CUDAGraph()
        self.backward_graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: Optional[torch.Tensor] = None
        self.grad_out: Optional[torch.Tensor] = None
        self.grad_xs: Optional[torch.Tensor] = None
        self.params: List[torch.nn.Parameter] = []
        self.has_grad: List[bool] = []

    def replay(self, xs: torch.Tensor, ilens: torch.Tensor) -> torch.Tensor:
        """The forward graph run on ``xs`` zero-padded into the bucket: a copy of the
        output's valid part (graphs without backward run this alone, no autograd node)."""
        batch, frames = xs.shape[:2]
        self.xs.zero_()
        self.xs[:batch, :frames].copy_(xs)
        self.ilens.zero_()
        self.ilens[:batch].copy_(ilens)
        self.forward_graph.replay()
        return self.out[:batch, :frames].clone()


class Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graphs, entry, xs, ilens, *params):
        out = entry.replay(xs, ilens)
        ctx.graphs, ctx.entry, ctx.batch, ctx.frames = graphs, entry, xs.size(0), xs.size(1)
        if entry.backward_graph is not None:
            ctx.token = _Token()
            graphs.pending = weakref.ref(ctx.token)
        return out

    @staticmethod
    def backward(ctx, grad):
        entry, batch = ctx.entry, ctx.batch
        entry.grad_out.zero_()
        entry.grad_out[:batch, :grad.size(1)].copy_(grad)
        entry.backward_graph.replay()
        ctx.graphs.pending = None
        grads = ctx.graphs.grad_copies()
        grads = [grads[id(p)] if has else None for p, has in zip(entry.params, entry.has_grad)]
        grad_xs = None
        if entry.grad_xs is not None:
            grad_xs = entry.grad_xs[:batch, :ctx.frames].clone()
        return (None, None, grad_xs, None, *grads)


class _Token:
    """Lives as long as a replayed forward's autograd node (backward still possible)."""
