"""Inference (eval, no grad) time of the encoders, eager and ``torch.compile``d.

One fixed batch (``--batch`` x ``--frames``, lengths 75-100% of the longest), under
autocast ``--dtype``; eager = the module as ESPnet's ``asr_inference`` runs it (for
IML-Spikeformer on CUDA: the fast path, CUDA graphs included), ``@ref`` = the reference
path, ``(compiled)`` = ``torch.compile(model)`` (its compile time reported). Median
of ``--repeat`` CUDA-event-timed calls after ``--warmup`` calls.

    python bench/inference_speed.py --out bench/out --compile transformer iml_imls_t6
"""

import argparse
import json
import time
from pathlib import Path

import torch

from common import (SIZES, build, device_name, median_seconds, path_for,
                    print_and_write_report, synchronize, varied_batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--models", nargs="+",
                        default=["transformer", "iml_imls_t6@ref", "iml_imls_t6"])
    parser.add_argument("--compile", nargs="*", default=[])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    xs, lengths = varied_batch(args.batch, args.frames, device)
    rows = []
    for name in args.models + [m + " (compiled)" for m in args.compile]:
        base = name.split(" ")[0]
        torch.manual_seed(0)
        with path_for(base):
            model = build(base, SIZES[args.size]).to(device)
            model.train()
            with torch.no_grad():  # calibrate IMLS statistics
                for _ in range(3):
                    model(xs, lengths)
            model.eval()
            forward = model
            compile_s, differs = None, None
            if name.endswith("(compiled)"):
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                                     enabled=dtype != torch.float32):
                    eager_out = model(xs, lengths)[0].float()
                forward = torch.compile(model)
                synchronize(device)
                start = time.perf_counter()
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                                     enabled=dtype != torch.float32):
                    compiled_out = forward(xs, lengths)[0].float()
                synchronize(device)
                compile_s = time.perf_counter() - start
                # the compiled model against the same model run eagerly (the compiler's
                # own roundings; spiking blocks turn a rounding into a spike count)
                gap = (compiled_out - eager_out).abs()
                differs = {"share": (gap > 0).float().mean().item(),
                           "max_of_largest": (gap.max() / eager_out.abs().max()).item()}
                del eager_out, compiled_out, gap

            def call():
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype,
                                                     enabled=dtype != torch.float32):
                    return forward(xs, lengths)

            seconds = median_seconds(call, device, args.warmup, args.repeat)
        row = {"model": name, "dtype": args.dtype, "step_s": seconds, "compile_s": compile_s,
               "compiled_vs_eager": differs}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, forward
        torch._dynamo.reset()
    lines = [f"device: {device_name(device)}; torch {torch.__version__}; eval, "
             f"{args.dtype} autocast, batch {args.batch} x up to {args.frames} frames", "",
             "| model | time (ms) | vs Transformer eager | vs Transformer compiled | "
             "compile (s) | compiled vs eager: values differing, largest gap |",
             "|---|---|---|---|---|---|"]
    eager = next(r for r in rows if r["model"] == "transformer")["step_s"]
    compiled = next((r for r in rows if r["model"] == "transformer (compiled)"), {}).get(
        "step_s", float("nan"))
    for row in rows:
        gap = row["compiled_vs_eager"]
        gap_text = (f"{gap['share']:.2%}, {gap['max_of_largest']:.2g} of the largest"
                    if gap else "-")
        lines.append(f"| {row['model']} | {row['step_s'] * 1e3:.2f} | "
                     f"x{row['step_s'] / eager:.2f} | x{row['step_s'] / compiled:.2f} | "
                     f"{row['compile_s'] or '-'} | {gap_text} |")
    report = "\n".join(lines)
    print_and_write_report(report, rows, args.out, "inference_speed")


if __name__ == "__main__":
    main()
