"""bench/bucket_padding.py's arithmetic (the README's padding figures come from it)."""

import importlib.util

from helpers import REPO


def load():
    spec = importlib.util.spec_from_file_location("bucket_padding",
                                                  REPO / "bench/bucket_padding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eight_values_a_doubling():
    per_doubling = load().per_doubling
    assert [per_doubling(v, 8, 64) for v in (1, 64, 65, 128, 129, 300, 1000, 1025)] == [
        64, 64, 72, 128, 144, 320, 1024, 1152]


def test_computed_over_valid_frames_counts_bucket_padding_and_eager_batches():
    bucket_padding = load()
    batches = [[10, 8, 6], [4], [9] * 5]  # input frames = output frames (no subsampling)
    valid = 24 + 4 + 45

    def batch_bucket(b):
        return {1: 1, 3: 4}.get(b)  # a batch of 5 fits no bucket: eager, unpadded

    def frames_bucket(frames, scale):
        return -(-frames // 8) * 8

    row = bucket_padding.padding(batches, 1, lambda t: t, batch_bucket, frames_bucket)
    assert row == {"buckets": 2, "eager_batches": 1,
                   "computed_over_valid": (4 * 16 + 1 * 8 + 5 * 9) / valid}
