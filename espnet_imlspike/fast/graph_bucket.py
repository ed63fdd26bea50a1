"""One bucket of the encoder's CUDA graphs (:mod:`.graphs`): its static tensors and
graphs, and the autograd node that replays them for a batch padded into the bucket."""

import weakref
from typing import List, Optional

import torch


class Entry:
    """Static tensors and graphs of one bucket."""

    def __init__(self, batch: int, frames: int, xs: torch.Tensor, ilens: torch.Tensor):
        shape = (batch, frames) + tuple(xs.shape[2:])
        self.xs = torch.zeros(shape, dtype=xs.dtype, device=xs.device)
        self.ilens = torch.zeros(batch, dtype=ilens.dtype, device=ilens.device)
        self.forward_graph = torch.cuda.CUDAGraph()
        self.backward_graph: Optional[torch.cuda.CUDAGraph] = None
        self.out: Optional[torch.Tensor] = None
        self.grad_out: Optional[torch.Tensor] = None
        self.grad_xs: Optional[torch.Tensor] = None
        self.params: List[torch.nn.Parameter] = []
        self.has_grad: List[bool] = []


class Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graphs, entry, xs, ilens, *params):
        batch, frames = xs.shape[:2]
        entry.xs.zero_()
        entry.xs[:batch, :frames].copy_(xs)
        entry.ilens.zero_()
        entry.ilens[:batch].copy_(ilens)
        entry.forward_graph.replay()
        ctx.graphs, ctx.entry, ctx.batch, ctx.frames = graphs, entry, batch, frames
        if entry.backward_graph is not None:
            ctx.token = _Token()
            graphs.pending = weakref.ref(ctx.token)
        return entry.out[:batch, :frames].clone()

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
