"""Shape buckets of the encoder's CUDA graphs.

A graph replays fixed shapes, so batches are zero-padded up to a few bucket shapes
(padding never changes the valid outputs).
"""

from typing import Optional

# up to 512: ESPnet's numel batches of short utterances hold hundreds (LibriSpeech's
# batch_bins of 1000 s of audio: 35-285 utterances of 3-24 s)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160,
                 192, 256, 320, 384, 512)
MAX_FRAMES = 4096
# bucket lengths are multiples of 16 frames: a key row of the attention's products in bf16
# is then 16-byte aligned (cuBLAS otherwise takes its slow align-1 kernels: about 20 ms of a
# LibriSpeech step at conv2d6's lengths, 128 / 6 frames) and Triton sees strides divisible
# by 16
ALIGN = 16


def bucket_frames(frames: int, scale: int = 1) -> Optional[int]:
    """Frames rounded up: to multiples of 128 input frames up to 1024, of 256 up to 2048,
    of 512 up to :data:`MAX_FRAMES`; None above. With ``scale``, ``frames`` and the result
    count the frames of a layer that takes ``scale`` input frames per frame (a
    subsampling); the multiple in those frames is then the step over ``scale`` rounded to
    a multiple of :data:`ALIGN` (conv2d6's 128 / 6 input frames: 16 frames): every bucket's
    length is a multiple of ALIGN."""
    for step, limit in ((128, 1024), (256, 2048), (512, MAX_FRAMES)):
        if frames * scale <= limit:
            multiple = ALIGN * max(1, round(step / scale / ALIGN))
            return -(-frames // multiple) * multiple
    return None


def aligned_frames(frames: int, scale: int = 1) -> Optional[int]:
    """Frames rounded up to a multiple of :data:`ALIGN` only (None above
    :data:`MAX_FRAMES` input frames): the buckets of compiled inference
    (:mod:`.compiled_blocks`), whose graphs hold no backward and where the padding of
    :func:`bucket_frames` (up to 13% more frames at LibriSpeech's lengths) cost more GPU time
    than the launches the graphs save."""
    if frames * scale > MAX_FRAMES:
        return None
    return -(-frames // ALIGN) * ALIGN


def bucket_batch(batch: int) -> Optional[int]:
    """Batch size rounded up to the next of :data:`BATCH_BUCKETS` (None above)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), None)
