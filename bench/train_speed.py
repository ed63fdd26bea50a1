"""Training-step speed and memory of the spiking encoders against ESPnet's Transformer.

Measured side by side in one process on one device: forward + backward + AdamW step of
the encoder alone (the decoder and CTC are the same for all models), random 80-dim
features with random lengths, CUDA-event timing after warm-up, peak memory from the
allocator. Ratios are against ESPnet's TransformerEncoder of the same size. Model names
as in ``bench/common.py`` (``@ref``: the reference path, fast paths off).

    python bench/train_speed.py --size aishell --batch 32 --frames 800 --out bench/out
    python bench/train_speed.py --size tiny --device cpu --steps 2   # smoke test
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import SIZES, build, path_for  # noqa: E402


def batch(batch_size: int, frames: int, device):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(frames * 3 // 4, frames + 1, (batch_size,), generator=generator)
    lengths[0] = frames
    xs = torch.randn(batch_size, frames, 80, generator=generator)
    return xs.to(device), lengths.to(device)


def measure(model, xs, lengths, steps: int, warmup: int, dtype, device, compiled: bool):
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out, olens, _ = forward(xs, lengths)
            loss = out.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            loss = step()
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1000 / steps
        memory = torch.cuda.max_memory_allocated() / 2**30
    else:
        begin = time.perf_counter()
        for _ in range(steps):
            loss = step()
        seconds = (time.perf_counter() - begin) / steps
        memory = float("nan")
    return {"step_s": seconds, "peak_gib": memory, "loss_finite": bool(torch.isfinite(loss))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--models", nargs="+", default=[
        "transformer", "iml_imls_t6@ref", "iml_imls_t6", "iml_imls_t4", "iml_imls_linear_t6",
        "iml_multistep_t6", "spike_driven_transformer_t6"])
    parser.add_argument("--compile", nargs="*", default=[],
                        help="models to also measure under torch.compile")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    xs, lengths = batch(args.batch, args.frames, device)
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for name in args.models:
            for compiled in ([False, True] if name in args.compile else [False]):
                torch.manual_seed(0)
                try:
                    with path_for(name):
                        result = measure(build(name, SIZES[args.size]), xs, lengths,
                                         args.steps, args.warmup, dtype, device, compiled)
                except torch.OutOfMemoryError:
                    result = {"step_s": float("nan"), "peak_gib": float("nan"),
                              "loss_finite": False, "error": "out of memory"}
                row = {"model": name + (" (compiled)" if compiled else ""),
                       "dtype": dtype_name, **result}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    lines = [f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; "
             f"size {args.size}, batch {args.batch} x up to {args.frames} frames; "
             f"torch {torch.__version__}", "",
             "| model | dtype | step (ms) | vs Transformer | peak memory (GiB) | vs Transformer |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["model"] == "transformer" and r["dtype"] == row["dtype"])
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['step_s'] * 1000:.1f} | "
            f"x{row['step_s'] / base['step_s']:.2f} | {row['peak_gib']:.2f} | "
            f"x{row['peak_gib'] / base['peak_gib']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_speed.json").write_text(json.dumps(rows, indent=2))
        (args.out / "train_speed.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
