"""Training step time and peak memory on one long utterance (batch 1), 1k to 64k frames.

For each input length and model: ``--warmup`` steps, then the median of ``--repeat``
timed steps (forward, loss, backward, AdamW of the encoder), peak allocated memory over
the timed steps, or "OOM". Models: the stock Transformer (softmax attention, quadratic
in length) and IML-Spikeformer with HD-RepSSA_S and HD-RepSSA_L on the default path.
Under CUDA graphs (inputs up to 4096 frames) the allocator's "allocated" peak does not
see the activations a replayed graph writes into its pool: name the models with
``@nographs`` to measure those lengths; "reserved" (also recorded) includes the pool.

    python bench/long_utterances.py --out bench/out
    python bench/long_utterances.py --smoke --out /tmp/lu   # CPU, tiny
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from common import (SIZES, Clock, build, device_name, path_for, peak_memory,
                    print_and_write_report, reset_memory)

LENGTHS = [1000, 2000, 4000, 8000, 16000, 32000, 64000]
MODELS = ["transformer", "iml_imls_t6", "iml_imls_linear_t6"]


def measure(model, optimizer, frames, dtype, device, warmup, repeat):
    xs = torch.randn(1, frames, 80, device=device)
    lengths = torch.tensor([frames], device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out, _, _ = model(xs, lengths)
            loss = out.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    reset_memory(device)
    times = []
    for _ in range(repeat):
        with Clock(device) as clock:
            step()
        times.append(clock.seconds)
    return statistics.median(times), *peak_memory(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.lengths, args.device, args.warmup, args.repeat = (
            "tiny", [400, 800], "cpu", 1, 1)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        with path_for(name):
            model = build(name, SIZES[args.size]).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            failed = False
            for frames in args.lengths:
                row = {"model": name, "frames": frames, "dtype": args.dtype}
                if failed:
                    row["error"] = "OOM at a shorter length"
                else:
                    try:
                        (row["step_s"], row["peak_allocated_gib"],
                         row["peak_reserved_gib"]) = measure(
                            model, optimizer, frames, dtype, device, args.warmup, args.repeat)
                    except torch.OutOfMemoryError:
                        row["error"], failed = "OOM", True
                        optimizer.zero_grad(set_to_none=True)
                rows.append(row)
                print(json.dumps(row), flush=True)
                reset_memory(device)
        del model, optimizer
    lines = [f"device: {device_name(device)}; torch {torch.__version__}; batch 1, "
             f"{args.dtype}, training step of the encoder", "",
             "| input frames | " + " | ".join(f"{m} step (s) | {m} peak (GiB)"
                                             for m in args.models) + " |",
             "|---|" + "---|---|" * len(args.models)]
    for frames in args.lengths:
        cells = []
        for name in args.models:
            row = next(r for r in rows if r["model"] == name and r["frames"] == frames)
            cells += ([row["error"], "-"] if "error" in row
                      else [f"{row['step_s']:.3f}", f"{row['peak_allocated_gib']:.2f}"])
        lines.append(f"| {frames} | " + " | ".join(cells) + " |")
    report = "\n".join(lines)
    print_and_write_report(report, rows, args.out, "long_utterances")


if __name__ == "__main__":
    main()
