"""GPU time of the first convolution's Triton kernels (fast/input_kernels.py) per block
configuration, beside the PyTorch operations they replace (cuDNN's convolution, the bias
add and the ReLU; the ReLU's backward and the convolution's weight and bias gradients),
on one chunk of the chunked input layer at LibriSpeech's size (64 utterances, conv2d6's
512 channels, 26 map rows) and AISHELL's (32 utterances, conv2d's 256 channels, 52 rows),
bf16. Each time is the GPU time of the kernels a call launches (PyTorch's
profiler), the mean of 20 calls.

    python bench/input_kernel_tune.py --out bench/out
"""

import argparse
import itertools
from pathlib import Path

import torch

from common import print_and_write

from espnet_imlspike.fast import input_kernels  # noqa: E402

CHUNKS = {"librispeech": (64, 53, 512), "aishell": (32, 107, 256)}  # batch, rows, channels
FORWARD = list(itertools.product((32, 64, 128), (64, 128, 256), (4, 8)))
BACKWARD = list(itertools.product((32, 64, 128), (32, 64, 128), (4, 8)))


def timed(function, reps=20):
    """GPU time (us) of the kernels one call launches, the mean over ``reps`` calls
    (PyTorch's profiler: launch gaps and the host's work not counted)."""
    for _ in range(3):
        function()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            function()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    return sum(e.self_device_time_total for e in kernels) / reps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    results = {"device": torch.cuda.get_device_name()}
    dtype, stride = torch.bfloat16, (2, 2)
    for name, (batch, rows, channels) in CHUNKS.items():
        x = torch.randn(batch, 1, rows, 80, device="cuda").to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = (torch.randn(channels, 1, 3, 3, device="cuda") / 3).to(dtype)
        bias = (torch.randn(channels, device="cuda") / 4).to(dtype)
        # channels-last as in the chunked layer (a one-channel x is also NCHW-contiguous,
        # so cuDNN's output would be NCHW; the kernels would then read a transposed copy)
        y = torch.nn.functional.conv2d(x, weight, bias, stride).relu_()
        y = y.contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(y)
        row = {"map_mb": y.numel() * y.element_size() / 1e6}
        row["pytorch_forward_us"] = timed(
            lambda: torch.nn.functional.conv2d(x, weight, bias, stride).relu_())
        row["pytorch_backward_us"] = timed(lambda: torch.ops.aten.convolution_backward(
            torch.ops.aten.threshold_backward(grad, y, 0), x, weight, [channels], [2, 2],
            [0, 0], [1, 1], False, [0, 0], 1, [False, True, True]))
        saved = {k: getattr(input_kernels, k) for k in (
            "_BLOCK_POSITIONS", "_BLOCK_CHANNELS", "_WARPS", "_BACKWARD_BLOCK_POSITIONS",
            "_BACKWARD_BLOCK_CHANNELS", "_BACKWARD_WARPS")}
        for block_p, block_c, warps in FORWARD:
            input_kernels._BLOCK_POSITIONS, input_kernels._BLOCK_CHANNELS = block_p, block_c
            input_kernels._WARPS = warps
            row[f"forward_{block_p}x{block_c}_w{warps}_us"] = timed(
                lambda: input_kernels.first_map(x, weight, bias, stride))
        for block_p, block_c, warps in BACKWARD:
            input_kernels._BACKWARD_BLOCK_POSITIONS = block_p
            input_kernels._BACKWARD_BLOCK_CHANNELS, input_kernels._BACKWARD_WARPS = (
                block_c, warps)
            row[f"backward_{block_p}x{block_c}_w{warps}_us"] = timed(
                lambda: input_kernels.first_map_backward(grad, y, x, weight, stride))
        for key, value in saved.items():
            setattr(input_kernels, key, value)
        row["default_forward_us"] = timed(lambda: input_kernels.first_map(x, weight, bias,
                                                                          stride))
        row["default_backward_us"] = timed(
            lambda: input_kernels.first_map_backward(grad, y, x, weight, stride))
        best_f = min((v, k) for k, v in row.items() if k.startswith("forward_"))
        best_b = min((v, k) for k, v in row.items() if k.startswith("backward_"))
        row["best_forward"], row["best_backward"] = best_f[1], best_b[1]
        results[name] = row
        print(name, {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()
                     if not k.startswith(("forward_", "backward_"))}, best_f, best_b,
              flush=True)
    print_and_write(results, args.out, "input_kernel_tune.json")


if __name__ == "__main__":
    main()
