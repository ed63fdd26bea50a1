"""Where the time of one encoder training step goes: wall time vs GPU kernel time.

For each model on one fixed batch: the median wall time of ``--repeat`` steps (forward,
loss, backward, AdamW; synchronised), the GPU kernel time of a step from the PyTorch
profiler (sum of kernel durations), and the kernels that take the most GPU time. A step
whose wall time is far above its kernel time is bound by the CPU (kernel launches).
``--eval``: the inference call instead (eval mode, no grad, after three calibrating
training-mode forwards), as ``inference_speed.py`` times it.

    python bench/profile_step.py --out bench/out --dtype bfloat16
    python bench/profile_step.py --out bench/out --eval --frames 1200 [--compile]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import SIZES, build, path_for, synchronize, varied_batch

MODELS = ["transformer", "iml_imls_t6@ref", "iml_imls_t6@nographs", "iml_imls_t6"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=800)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", choices=["aishell", "librispeech"], default="aishell",
                        help="the encoder size of conf/asr/<size>/")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--eval", action="store_true", help="profile inference calls")
    parser.add_argument("--by-op", action="store_true",
                        help="also the operators that launched the most GPU time (their "
                        "input shapes; graph replays are not broken down: use @nographs)")
    parser.add_argument("--compile", action="store_true",
                        help="with --eval: the torch.compile'd model (compiled first)")
    args = parser.parse_args(argv)
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    xs, lengths = varied_batch(args.batch, args.frames, device)
    rows, text = [], []
    for name in args.models:
        torch.manual_seed(0)
        with path_for(name):
            model = build(name, SIZES[args.size]).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

            def step():
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    out, _, _ = model(xs, lengths)
                    loss = out.float().pow(2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            if args.eval:
                with torch.no_grad():  # calibrate the IMLS statistics, then evaluate
                    for _ in range(3):
                        model(xs, lengths)
                model.eval()
                forward = torch.compile(model) if args.compile else model

                def step():  # noqa: F811 (the inference call replaces the training step)
                    with torch.no_grad(), torch.autocast("cuda", dtype=dtype,
                                                         enabled=dtype != torch.float32):
                        forward(xs, lengths)

            for _ in range(4):
                step()
            times = []
            for _ in range(args.repeat):
                synchronize(device)
                start = time.perf_counter()
                step()
                synchronize(device)
                times.append(time.perf_counter() - start)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                         record_shapes=args.by_op) as prof:
                for _ in range(3):
                    step()
                synchronize(device)
        kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
        gpu = sum(e.self_device_time_total for e in kernels) / 3 / 1e6
        row = {"model": name, "dtype": args.dtype, "eval": args.eval,
               "wall_s": statistics.median(times),
               "gpu_kernel_s": gpu}
        rows.append(row)
        print(json.dumps(row), flush=True)
        top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:args.top]
        text.append(f"## {name}: wall {row['wall_s'] * 1e3:.1f} ms, GPU kernels "
                    f"{gpu * 1e3:.1f} ms per step")
        text += [f"{e.self_device_time_total / 3 / 1e3:8.2f} ms {e.count // 3:5d}x "
                 f"{e.key[:90]}" for e in top]
        print("\n".join(text[-args.top - 1:]), flush=True)
        if args.by_op:
            operators = [e for e in prof.key_averages(group_by_input_shape=True)
                         if e.device_type.name == "CPU" and e.self_device_time_total > 0]
            lines = [f"### {name}: operators by the GPU time of the kernels they launched"]
            lines += [f"{e.self_device_time_total / 3 / 1e3:8.2f} ms {e.count // 3:5d}x "
                      f"{e.key} {str(e.input_shapes)[:150]}" for e in sorted(
                          operators, key=lambda e: -e.self_device_time_total)[:args.top]]
            text += lines
            print("\n".join(lines), flush=True)
        del model, optimizer, prof, step
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = (f"profile_{'' if args.size == 'aishell' else args.size + '_'}"
                f"{'eval_' if args.eval else ''}"
                f"{'compiled_' if args.eval and args.compile else ''}{args.dtype}")
        (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
        (args.out / f"{stem}.txt").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
