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


def bucket_frames(frames: int, scale: int = 1) -> Optional[int]:
    """Input frames rounded up: multiples of 128 to 1024, of 256 to 2048, of 512 to
    :data:`MAX_FRAMES`; None above. With ``scale``, ``frames`` and the result count the
    frames of a layer that takes ``scale`` input frames per frame (a subsampling)."""
    for step, limit in ((128, 1024), (256, 2048), (512, MAX_FRAMES)):
        if frames * scale <= limit:
            rounded = -(-frames * scale // step) * step  # in input frames
            return -(-rounded // scale)
    return None


def bucket_batch(batch: int) -> Optional[int]:
    """Batch size rounded up to the next of :data:`BATCH_BUCKETS` (None above)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), None)
