"""Encoder training steps on ESPnet-like variable shapes, without ESPnet's data pipeline.

Replays a fixed sequence of batches shaped like ESPnet's length-sorted batches: each
batch has a longest utterance of 300-1600 frames, as many utterances as fit in
``--frames`` input frames (25.6k by default), the others 85-100% of the longest. Each
model runs the whole sequence from a fresh start: forward, loss, backward and AdamW of
the encoder alone, one model after the other on one device. Reported: total time over
the sequence (one-time costs such as CUDA-graph captures included), median step after
the first ``--warmup`` steps, peak allocated and reserved memory.

    python bench/replay_shapes.py --out bench/out --precision bf16 fp32
    python bench/replay_shapes.py --smoke --out /tmp/rs   # CPU, tiny, 4 steps
"""

import argparse
import logging
import json
import statistics
from pathlib import Path

import torch

from common import (SIZES, Clock, build, device_name, graph_pool_bytes, path_for,
                    peak_memory, print_and_write_report, reset_memory)

DEFAULT_MODELS = ["transformer", "iml_imls_t6@ref", "iml_imls_t6"]


def espnet_like_batches(steps: int, frames: int, low: int, high: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        longest = int(torch.randint(low, high + 1, (1,), generator=generator))
        size = max(1, frames // longest)
        lengths = torch.randint(int(0.85 * longest), longest + 1, (size,), generator=generator)
        lengths[0] = longest
        batches.append(lengths.sort(descending=True).values)
    return batches


def run(name, size, batches, dtype, device, warmup):
    torch.manual_seed(0)
    with path_for(name):
        model = build(name, SIZES[size]).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        inputs = [(torch.randn(len(lengths), int(lengths[0]), 80, device=device),
                   lengths.to(device)) for lengths in batches]
        reset_memory(device)
        times = []
        with Clock(device) as total:
            for xs, lengths in inputs:
                with Clock(device) as step:
                    with torch.autocast(device.type, dtype=dtype,
                                        enabled=dtype != torch.float32):
                        out, olens, _ = model(xs, lengths)
                        mask = torch.arange(out.size(1), device=device)[None] < olens[:, None]
                        loss = (out.float().pow(2) * mask[..., None]).sum() / mask.sum()
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                times.append(step.seconds)
        allocated, reserved = peak_memory(device)
    graphs = len(getattr(getattr(model, "_graphs", None), "entries", {}))
    pool = graph_pool_bytes() / 2**30 if device.type == "cuda" else float("nan")
    return {"model": name, "dtype": str(dtype)[6:], "steps": len(times),
            "total_s": total.seconds, "mean_step_s": total.seconds / len(times),
            "median_step_s_after_warmup": statistics.median(times[warmup:] or times),
            "first_step_s": times[0], "peak_allocated_gib": allocated,
            "peak_reserved_gib": reserved, "cuda_graphs": graphs, "graph_pool_gib": pool,
            "loss_finite": bool(torch.isfinite(loss))}


def table(rows, header):
    lines = [header, "", "| model | dtype | mean step incl. one-time (ms) | vs Transformer | "
             "median step (ms) | vs Transformer | peak allocated (GiB) | vs Transformer | "
             "peak reserved (GiB) | graphs |", "|" + "---|" * 10]
    for row in rows:
        base = next(r for r in rows if r["model"] == "transformer" and r["dtype"] == row["dtype"])
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['mean_step_s'] * 1e3:.1f} | "
            f"x{row['mean_step_s'] / base['mean_step_s']:.2f} | "
            f"{row['median_step_s_after_warmup'] * 1e3:.1f} | "
            f"x{row['median_step_s_after_warmup'] / base['median_step_s_after_warmup']:.2f} | "
            f"{row['peak_allocated_gib']:.2f} | "
            f"x{row['peak_allocated_gib'] / base['peak_allocated_gib']:.2f} | "
            f"{row['peak_reserved_gib']:.2f} | {row['cuda_graphs']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--frames", type=int, default=25600)
    parser.add_argument("--precision", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # graph captures
    if args.smoke:
        args.size, args.steps, args.warmup, args.frames, args.device = "tiny", 4, 1, 800, "cpu"
        args.precision = ["float32"]
    device = torch.device(args.device)
    low, high = (100, 200) if args.smoke else (300, 1600)
    batches = espnet_like_batches(args.steps, args.frames, low, high)
    rows = []
    for precision in args.precision:
        for name in args.models:
            row = run(name, args.size, batches, getattr(torch, precision), device, args.warmup)
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (f"device: {device_name(device)}; torch {torch.__version__}; {args.steps} "
              f"batches of <= {args.frames} input frames, longest 300-1600 frames")
    report = table(rows, header)
    print_and_write_report(report, rows, args.out, "replay_shapes")


if __name__ == "__main__":
    main()
