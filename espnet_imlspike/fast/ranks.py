"""CUDA graphs of the encoder under ``torch.distributed`` (NCCL).

Each IMLS neuron all-reduces its batch maximum in training, so every rank must issue
the same collectives in the same order, and NCCL collectives can be captured into a
graph. Three things make graphs safe across ranks:

* :func:`agree_across_ranks`: in training the ranks take one bucket per step (the
  largest batch and length of any rank; eager everywhere if any rank must be), so they
  capture, replay or run eagerly together (one 3-element all-reduce and a host read);
* the warm-up before a capture fires with rank-local maxima
  (:func:`~espnet_imlspike.neurons.rank_local_maxima`), so it issues no collective;
* :func:`parameter_aliases`: inside DistributedDataParallel a capture against the
  parameters themselves failed in backward (2 H200s: "operation would make the legacy
  stream depend on a capturing blocking stream"): DDP keeps each parameter's
  AccumulateGrad node, made on the default stream when DDP was built. The capture
  therefore runs against leaf aliases that share the parameters' storage, whose nodes
  are made on the capture stream; the replayed gradients are returned for the real
  parameters, and DDP's hooks reduce them as usual.

Measured on 2 H200s through ``asr_train --ngpu 2`` (``bench/README.md``): graphs captured
and replayed on both ranks, rank statistics bitwise equal after 300 iterations, the loss
as without graphs. On by default with NCCL; ``IMLSPIKE_DDP_GRAPHS=0`` runs the encoder
eagerly under a process group (as before). Set it if a capture fails on another set-up:
a failed capture turns the graphs off for that encoder (:mod:`.graphs`), but the failure
seen before the aliases also left the CUDA random generator unusable, which stopped the
training at its next dropout.
"""

import contextlib
import os
from typing import Iterator, List

import torch
import torch.distributed as dist


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def graphs_allowed_in_process_group() -> bool:
    """Whether the encoder may run as CUDA graphs under the current process group."""
    return (os.environ.get("IMLSPIKE_DDP_GRAPHS", "1") != "0"
            and dist.get_backend() == "nccl")


def agree_across_ranks(device: torch.device, batch: int, frames: int, eager: bool):
    """(batch, frames, eager) as every rank of the default process group sees it: the
    largest batch and length of any rank, and eager if any rank must run eagerly."""
    mine = torch.tensor([batch, frames, int(eager)], dtype=torch.long, device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    batch, frames, eager = mine.tolist()
    return batch, frames, bool(eager)


@contextlib.contextmanager
def parameter_aliases(module: torch.nn.Module) -> Iterator[List[torch.nn.Parameter]]:
    """Inside, every parameter of ``module`` is replaced by a new leaf that shares its
    storage (same data pointer, same ``requires_grad``); yields the aliases in the
    order of ``module.parameters()``. The originals are put back on exit."""
    real = list(module.parameters())
    aliases = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
               for p in real}
    slots = [(m, name, p) for m in module.modules()
             for name, p in m._parameters.items() if p is not None]
    try:
        for m, name, p in slots:
            m._parameters[name] = aliases[id(p)]
        yield [aliases[id(p)] for p in real]
    finally:
        for m, name, p in slots:
            m._parameters[name] = p
