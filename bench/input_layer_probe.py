"""The chunked input layer (fast/subsampling.py) against ESPnet's Conv2dSubsampling on
the GPU: how many of a set of ESPnet-like batch shapes give bit-identical outputs and the
largest relative difference, and the time and peak memory of forward + backward
(``--batch`` x ``--frames``, default 20 x 1536), fp32 and bf16 autocast, for ESPnet's
module, the chunked layer, and the chunked layer without the Triton kernels of its first
convolution (``chunked@noinputkernels``, fast/input_kernels.py). ``--size librispeech``:
conv2d6 with 512 channels.

    python bench/input_layer_probe.py --out bench/out
    python bench/input_layer_probe.py --size librispeech --batch 64 --frames 1536 --out bench/out
"""

import argparse
import json
from pathlib import Path

import torch

from common import SIZES, path_for, print_and_write

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder  # noqa: E402
from espnet_imlspike.fast import fast_mode, subsampling  # noqa: E402

SHAPES = [(1, 3000), (4, 1400), (8, 1100), (12, 900), (16, 1536), (20, 1536), (24, 1200),
          (32, 800), (40, 700), (64, 420), (3, 333), (17, 1021)]


# a mode's suffix is a switch of common.path_for, held over forward and backward
# (backward recomputes the first map)
MODES = ("module", "chunked@noinputkernels", "chunked")


def run(embed, xs, mode, autocast):
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast), fast_mode("1"):
        if mode == "module":
            return embed(xs, None)[0]
        return subsampling.subsample(embed, xs)


def profile(embed, batch, frames):
    xs = torch.randn(batch, frames, 80, device="cuda")
    for mode in MODES:
        with path_for(mode):
            for _ in range(3):
                run(embed, xs, mode, True).float().square().mean().backward()
            with torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    run(embed, xs, mode, True).float().square().mean().backward()
                torch.cuda.synchronize()
        print(f"## {mode}")
        events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:25]
        for event in events:  # per call of forward + backward
            print(f"{event.device_time_total / 5e3:8.3f} ms {event.count / 5:6.1f}x "
                  f"{event.key[:220]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--size", choices=["aishell", "librispeech"], default="aishell")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--frames", type=int, default=1536)
    parser.add_argument("--profile", action="store_true",
                        help="also print the GPU kernels of each, bf16")
    args = parser.parse_args()
    torch.manual_seed(0)
    embed = IMLSpikeformerEncoder(80, **SIZES[args.size]).embed.cuda().eval()
    shape = f"{args.batch}x{args.frames}"
    results = {"device": torch.cuda.get_device_name(), "size": args.size}
    for precision, autocast in (("fp32", False), ("bf16", True)):
        for mode in MODES[1:]:
            equal, worst = 0, 0.0
            for batch, frames in SHAPES:
                xs = torch.randn(batch, frames, 80, device="cuda")
                with torch.no_grad(), path_for(mode):
                    ref, out = run(embed, xs, "module", autocast), run(embed, xs, mode, autocast)
                equal += bool(torch.equal(ref, out))
                worst = max(worst, float((ref - out).abs().max() / ref.abs().max()))
            results[f"{precision}_{mode}"] = {"bit_identical_shapes": equal,
                                              "shapes": len(SHAPES), "max_rel_diff": worst}
        xs = torch.randn(args.batch, args.frames, 80, device="cuda")
        for mode in MODES:
            times = []
            for rep in range(12):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                with path_for(mode):
                    out = run(embed, xs, mode, autocast)
                    out.float().square().mean().backward()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
                embed.zero_grad(set_to_none=True)
                del out
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            results[f"{precision}_{mode}_{shape}"] = {
                "fwd_bwd_ms_median": sorted(times[2:])[len(times[2:]) // 2],
                "peak_allocated_mib": round(peak, 1)}
        print(json.dumps(results), flush=True)
    if args.profile:
        profile(embed, args.batch, args.frames)
    print_and_write(results, args.out, "input_layer_probe.json")


if __name__ == "__main__":
    main()
