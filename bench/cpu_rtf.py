"""CPU real-time factor of encoder inference: training form, deploy forms, Transformer.

Batch 1, eval, no grad, fp32, ``--threads`` intra-op threads; an utterance of ``s``
seconds is ``100 s`` input frames (10 ms shift). RTF = encoder time / audio duration
(median of ``--repeat`` calls after one warm-up). IMLS thresholds are calibrated by three
training-mode batches first; the deploy forms come from the stock converter
(``espnet_imlspike.deploy.convert.convert_encoder``).

    python bench/cpu_rtf.py --out bench/out
"""

import argparse
import json
from pathlib import Path

import torch

from common import SIZES, build, median_seconds, print_and_write_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5.0, 10.0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from espnet_imlspike.deploy.convert import convert_encoder
    from espnet_imlspike.fast import fast_mode

    torch.manual_seed(0)
    transformer = build("transformer", SIZES[args.size]).eval()
    spiking = build("iml_imls_t6", SIZES[args.size]).train()
    with torch.no_grad():
        for _ in range(3):
            spiking(torch.randn(4, 600, 80), torch.tensor([600, 550, 500, 450]))
    spiking.eval()
    forms = {
        "transformer": (transformer, "0"),
        "iml training form (eval)": (spiking, "0"),
        "iml training form (eval, fast path forced on)": (spiking, "1"),
        "iml deploy multi_level": (convert_encoder(spiking, "multi_level"), "0"),
        "iml deploy spike_train": (convert_encoder(spiking, "spike_train"), "0"),
    }
    rows = []
    for seconds in args.seconds:
        frames = int(seconds * 100)
        xs, lengths = torch.randn(1, frames, 80), torch.tensor([frames])
        for name, (model, mode) in forms.items():
            with torch.no_grad(), fast_mode(mode):
                encoder_s = median_seconds(lambda: model(xs, lengths), torch.device("cpu"),
                                           1, args.repeat)
            row = {"form": name, "audio_s": seconds, "encoder_s": encoder_s,
                   "rtf": encoder_s / seconds}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [f"CPU: {args.threads} threads, torch {torch.__version__}; batch 1, fp32, eval",
             "", "| form | audio (s) | encoder (s) | RTF | vs Transformer |",
             "|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["form"] == "transformer"
                    and r["audio_s"] == row["audio_s"])
        lines.append(f"| {row['form']} | {row['audio_s']:.0f} | {row['encoder_s']:.3f} | "
                     f"{row['rtf']:.3f} | x{row['rtf'] / base['rtf']:.2f} |")
    report = "\n".join(lines)
    print_and_write_report(report, rows, args.out, "cpu_rtf")


if __name__ == "__main__":
    main()
