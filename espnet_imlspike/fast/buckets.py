"""Shape buckets of the encoder's CUDA graphs, and the bucket the ranks agree on.

A graph replays fixed shapes, so batches are zero-padded up to a few bucket shapes
(padding never changes the valid outputs). Under ``torch.distributed`` every rank
must issue the IMLS all-reduces in the same order, so in training the ranks take one
bucket together (:func:`agree_across_ranks`).
"""

from typing import Optional

import torch
import torch.distributed as dist

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)
MAX_FRAMES = 4096


def bucket_frames(frames: int) -> Optional[int]:
    """Input frames rounded up: multiples of 128 to 1024, of 256 to 2048, of 512 to
    :data:`MAX_FRAMES`; None above."""
    for step, limit in ((128, 1024), (256, 2048), (512, MAX_FRAMES)):
        if frames <= limit:
            return -(-frames // step) * step
    return None


def bucket_batch(batch: int) -> Optional[int]:
    """Batch size rounded up to the next of :data:`BATCH_BUCKETS` (None above)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), None)


def in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def agree_across_ranks(device: torch.device, batch: int, frames: int, eager: bool):
    """(batch, frames, eager) as every rank of the default process group sees it: the
    largest batch and length of any rank, and eager if any rank must run eagerly."""
    mine = torch.tensor([batch, frames, int(eager)], dtype=torch.long, device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    batch, frames, eager = mine.tolist()
    return batch, frames, bool(eager)
