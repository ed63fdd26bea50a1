"""Compiled inference over batches of new lengths: what the first passes over a test set
cost, compilation and CUDA-graph captures included.

A compiled model meets a new padded length at almost every batch of a decoding run. The
compiler recompiles once with symbolic lengths at the second length it meets; the spiking
encoder's blocks operator (``fast/compiled_blocks.py``) also compiles its blocks again then,
and captures a CUDA graph per length rounded up to 16 frames. Each model (one per process,
as in ``compiled_inference_ab.py``) is compiled and run on ``--batches`` batches whose
longest utterance is drawn from ``--min-frames`` .. ``--frames`` (seeded, the same draws
for every model), then on the same batches again (every length met before). Reported: each
pass's total and the median call of each pass.

    python bench/compiled_varied_lengths.py --out bench/out transformer
    python bench/compiled_varied_lengths.py --out bench/out iml_imls_t6
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import SIZES, build, device_name, path_for, print_and_write_report, synchronize


def batches(count, batch, low, high, device):
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        frames = int(torch.randint(low, high + 1, (1,), generator=generator))
        lengths = torch.randint(frames * 3 // 4, frames + 1, (batch,), generator=generator)
        lengths[0] = frames
        xs = torch.randn(batch, frames, 80, generator=generator)
        out.append((xs.to(device), lengths.to(device)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--min-frames", type=int, default=400)
    parser.add_argument("--frames", type=int, default=1600)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    data = batches(args.batches, args.batch, args.min_frames, args.frames, device)
    with path_for(args.model):
        torch.manual_seed(0)
        model = build(args.model, SIZES[args.size]).to(device).train()
        with torch.no_grad():  # calibrate the IMLS statistics
            for xs, lengths in data[:3]:
                model(xs, lengths)
        forward = torch.compile(model.eval())
        passes = []
        for _ in range(2):
            calls = []
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                for xs, lengths in data:
                    synchronize(device)
                    start = time.perf_counter()
                    forward(xs, lengths)
                    synchronize(device)
                    calls.append(time.perf_counter() - start)
            passes.append(calls)
    row = {"model": args.model, "batches": args.batches,
           "first_pass_s": sum(passes[0]), "first_pass_median_call_s":
           statistics.median(passes[0]), "first_call_s": passes[0][0],
           "second_call_s": passes[0][1], "second_pass_s": sum(passes[1]),
           "second_pass_median_call_s": statistics.median(passes[1]),
           "first_pass_calls_s": passes[0]}
    print(json.dumps(row), flush=True)
    report = (f"device: {device_name(device)}; torch {torch.__version__}; "
              f"{args.model} compiled, eval, bf16 autocast, {args.batches} batches of "
              f"{args.batch} x {args.min_frames}-{args.frames} frames ({args.size} size)\n\n"
              "| model | first pass (s) | its first / second call (s) | its median call (ms) "
              "| second pass (s) | its median call (ms) |\n|---|---|---|---|---|---|\n"
              f"| {args.model} | {row['first_pass_s']:.1f} | {row['first_call_s']:.1f} / "
              f"{row['second_call_s']:.1f} | {row['first_pass_median_call_s'] * 1e3:.1f} | "
              f"{row['second_pass_s']:.2f} | {row['second_pass_median_call_s'] * 1e3:.2f} |")
    print_and_write_report(report, [row], args.out, "compiled_varied_lengths")


if __name__ == "__main__":
    main()
