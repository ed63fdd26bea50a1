"""How much the CUDA graphs' buckets pad ESPnet's batches (CPU, no model).

Builds stock_train.py's synthetic corpus (lengths only, no features written), batches it
with ESPnet's own batch sampler as ``asr_train`` does (AISHELL: ``folded``, 32, fold length
800; LibriSpeech: ``numel``, 8,000,000 feature bins), and for bucket schemes reports the
buckets the corpus needs, the batches no bucket takes (those run eagerly) and the frames
the encoder blocks compute over the valid frames (the Transformer pads each batch to its
longest utterance only). Frames are the input layer's output frames.

    python bench/bucket_padding.py --out bench/out
"""

import argparse
import collections
import importlib.util
import json
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _stock_train():
    spec = importlib.util.spec_from_file_location("stock_train", REPO / "bench/stock_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_doubling(value: int, steps: int, smallest: int) -> int:
    """``value`` rounded up to one of ``steps`` evenly spaced values per doubling."""
    if value <= smallest:
        return smallest
    step = max(1, 2 ** (math.floor(math.log2(value)) - int(math.log2(steps))))
    return -(-value // step) * step


def schemes():
    from espnet_imlspike.fast.buckets import bucket_batch, bucket_frames

    def frames_8(frames, scale):
        return -(-per_doubling(frames * scale, 8, 64) // scale)

    old = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)
    return {
        "batch buckets to 128 (before)": (
            lambda b: next((x for x in old if x >= b), None), bucket_frames),
        "the package's buckets": (bucket_batch, bucket_frames),
        "frames 8 a doubling": (bucket_batch, frames_8),
        "batch and frames 8 a doubling": (lambda b: per_doubling(b, 8, 8), frames_8),
    }


def batches(recipe: str, root: Path, utterances: int, pool: int):
    """The corpus's batches as ESPnet's sampler makes them (lists of input frames)."""
    from espnet2.samplers.build_batch_sampler import build_batch_sampler

    stock_train = _stock_train()
    _, _, (low, high), vocab, _ = stock_train.RECIPES[recipe]
    with mock.patch.object(np, "save", lambda *a, **k: None):  # shapes only
        stock_train.make_corpus(root, utterances, low, high, vocab=vocab, pool=pool)
    shapes = [str(root / "train/speech_shape"), str(root / "train/text_shape")]
    if recipe == "librispeech":
        sampler = build_batch_sampler(type="numel", batch_size=1, batch_bins=8_000_000,
                                      shape_files=shapes, min_batch_size=1)
    else:
        sampler = build_batch_sampler(type="folded", batch_size=32, batch_bins=0,
                                      shape_files=shapes, fold_lengths=[800, 150],
                                      min_batch_size=1)
    lengths = {}
    for line in (root / "train/speech_shape").read_text().split("\n"):
        if line:
            key, shape = line.split()
            lengths[key] = int(shape.split(",")[0])
    return [[lengths[key] for key in batch] for batch in sampler]


def padding(batches, scale, subsample, batch_bucket, frames_bucket):
    valid = sum(subsample(t) for b in batches for t in b)
    computed, eager, buckets = 0, 0, collections.Counter()
    for b in batches:
        frames = subsample(max(b))
        shape = (batch_bucket(len(b)), frames_bucket(frames, scale))
        if None in shape:
            eager += 1
            computed += len(b) * frames
        else:
            buckets[shape] += 1
            computed += shape[0] * shape[1]
    return {"buckets": len(buckets), "eager_batches": eager,
            "computed_over_valid": computed / valid}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    subsampling = {  # the input layer's output frames: conv2d (AISHELL), conv2d6
        "aishell": (4, lambda t: ((t - 1) // 2 - 1) // 2, 1200, 0),
        "librispeech": (6, lambda t: ((t - 1) // 2 - 2) // 3, 8000, 1500),
    }
    results, lines = {}, ["| corpus | scheme | buckets | eager batches | computed / valid frames |",
                          "|---|---|---|---|---|"]
    for recipe, (scale, subsample, utterances, pool) in subsampling.items():
        found = batches(recipe, args.out / f"corpus_{recipe}", utterances, pool)
        transformer = (sum(len(b) * subsample(max(b)) for b in found)
                       / sum(subsample(t) for b in found for t in b))
        results[recipe] = {"batches": len(found), "transformer_computed_over_valid": transformer}
        lines.append(f"| {recipe} ({len(found)} batches) | the Transformer (no buckets) | - | - "
                     f"| {transformer:.3f} |")
        for name, (batch_bucket, frames_bucket) in schemes().items():
            row = padding(found, scale, subsample, batch_bucket, frames_bucket)
            results[recipe][name] = row
            lines.append(f"| {recipe} | {name} | {row['buckets']} | {row['eager_batches']} | "
                         f"{row['computed_over_valid']:.3f} |")
    report = "\n".join(lines)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bucket_padding.json").write_text(json.dumps(results, indent=1))
    (args.out / "bucket_padding.md").write_text(report + "\n")
    return results


if __name__ == "__main__":
    main()
