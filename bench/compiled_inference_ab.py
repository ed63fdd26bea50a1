"""Compiled inference of several encoders timed in alternation, in one process.

``inference_speed.py`` times each model in turn; on a host whose speed drifts between
phases (the compiled calls launch hundreds of kernels and are partly bound by the host), two
models measured minutes apart can swap places. Here every model is compiled first, then
``--rounds`` rounds each time ``--calls`` calls of every model in turn; reported per model:
the median over rounds of each round's median call, its spread (lowest and highest round),
and the host time of a call (until the Python call returns, before the device is
synchronised: where it is near the wall time, the call is bound by launching kernels), and
the first call's time (the compilation, and for the spiking encoder its CUDA graph's capture).
One variant of a model per process: with ``iml_imls_t6@nochunk`` and ``iml_imls_t6`` in one
process both timed the same (bench/results/compiled_inference_h100/3_one_process/), the
compiler having run one variant's graph for both.

    python bench/compiled_inference_ab.py --out bench/out transformer iml_imls_t6@nochunk \
        iml_imls_t6
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import (SIZES, build, device_name, path_for, print_and_write_report,
                    synchronize, varied_batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=SIZES, default="aishell")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reduce-overhead", nargs="*", default=[], metavar="MODEL",
                        help="models compiled with mode='reduce-overhead' (the compiler's "
                        "CUDA graphs: no launch cost), the others with the default mode")
    args = parser.parse_args(argv)
    bases = [name.split("@")[0] for name in args.models]
    if len(set(bases)) < len(bases):
        parser.error("one variant of each model per process: the compiler may run one "
                     "variant's graph for another (the variant switches are environment "
                     "variables read while tracing; run each variant in its own process)")
    unknown = sorted(set(args.reduce_overhead) - set(args.models))
    if unknown:
        parser.error(f"--reduce-overhead names models not timed: {unknown}")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    xs, lengths = varied_batch(args.batch, args.frames, device)

    def context():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    compiled, first_calls = {}, {}
    for name in args.models:
        torch.manual_seed(0)
        with path_for(name):
            model = build(name, SIZES[args.size]).to(device).train()
            with torch.no_grad():  # calibrate the IMLS statistics
                for _ in range(3):
                    model(xs, lengths)
            model.eval()
            mode = "reduce-overhead" if name in args.reduce_overhead else None
            forward = torch.compile(model, mode=mode)
            start = time.perf_counter()
            with torch.no_grad(), context():
                forward(xs, lengths)  # compile (and capture)
                synchronize(device)
                first_calls[name] = time.perf_counter() - start
                for _ in range(2):  # warm up
                    forward(xs, lengths)
            synchronize(device)
        compiled[name] = forward
    # each model's environment switch (path_for) set again around its calls
    walls = {name: [] for name in args.models}
    hosts = {name: [] for name in args.models}
    for _ in range(args.rounds):
        for name, forward in compiled.items():
            round_walls, round_hosts = [], []
            with path_for(name), torch.no_grad(), context():
                for _ in range(args.calls):
                    synchronize(device)
                    start = time.perf_counter()
                    forward(xs, lengths)
                    returned = time.perf_counter()
                    synchronize(device)
                    round_walls.append(time.perf_counter() - start)
                    round_hosts.append(returned - start)
            walls[name].append(statistics.median(round_walls))
            hosts[name].append(statistics.median(round_hosts))
    rows = []
    for name in args.models:
        label = name + (" (reduce-overhead)" if name in args.reduce_overhead else "")
        rows.append({"model": label, "wall_s": statistics.median(walls[name]),
                     "wall_lowest_round_s": min(walls[name]),
                     "wall_highest_round_s": max(walls[name]),
                     "host_s": statistics.median(hosts[name]),
                     "first_call_s": first_calls[name]})
        print(json.dumps(rows[-1]), flush=True)
    first = rows[0]["wall_s"]
    lines = [f"device: {device_name(device)}; torch {torch.__version__}; torch.compile(model), "
             f"eval, {args.dtype} autocast, batch {args.batch} x up to {args.frames} frames "
             f"({args.size} size); {args.rounds} rounds of {args.calls} calls per model, "
             "models in turn", "",
             f"| model (compiled) | wall (ms), median of rounds | lowest / highest round | "
             f"vs {rows[0]['model']} | host time of a call (ms) | first call (s) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['wall_s'] * 1e3:.2f} | "
                     f"{row['wall_lowest_round_s'] * 1e3:.2f} / "
                     f"{row['wall_highest_round_s'] * 1e3:.2f} | "
                     f"x{row['wall_s'] / first:.2f} | {row['host_s'] * 1e3:.2f} | "
                     f"{row['first_call_s']:.1f} |")
    report = "\n".join(lines)
    print_and_write_report(report, rows, args.out, "compiled_inference_ab")


if __name__ == "__main__":
    main()
