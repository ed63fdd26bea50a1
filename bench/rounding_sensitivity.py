"""How far a rounding difference in the input layer's output moves the spiking encoder.

The reference path (fast paths off) of the paper-size encoder (12 x 256, T = 6) is run twice
on one batch, one training step each (forward, backward of a fixed linear loss); the second
time a forward hook changes about 0.04% of the input layer's outputs by one bf16 ulp
(relative 2^-8), the kind of difference another convolution algorithm makes. Printed: the
largest output difference and the share of outputs that differ, the largest gradient
difference over the largest gradient, and whether the IMLS statistics stayed equal. CPU,
float32; compare with ``chunked_encoder_*`` of ``fast_checks.py`` (the chunked input layer vs
ESPnet's module, GPU).

    python bench/rounding_sensitivity.py --out bench/out
"""

import argparse
import copy
import json
from pathlib import Path

import torch

from common import SIZES

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder  # noqa: E402
from espnet_imlspike.fast import fast_mode  # noqa: E402

LENGTHS = (600, 580, 560, 500, 450, 400, 350, 301)  # fast_checks.py's batch


def one_step(encoder, xs, lengths, perturb):
    def hook(module, inputs, output):
        x, mask = output
        generator = torch.Generator().manual_seed(5)
        chosen = torch.rand(x.shape, generator=generator) < 4e-4
        return x + chosen * x * 2.0 ** -8, mask

    handle = encoder.embed.register_forward_hook(hook) if perturb else None
    torch.manual_seed(0)  # the same dropout draws
    with fast_mode("0"):
        out, olens, _ = encoder(xs, lengths)
    (out * torch.linspace(-1, 1, out.size(-1))).sum().backward()
    if handle:
        handle.remove()
    return out.detach(), olens, [p.grad for p in encoder.parameters()], list(encoder.buffers())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(80, **SIZES["aishell"]).train()
    generator = torch.Generator().manual_seed(0)
    xs = torch.randn(len(LENGTHS), max(LENGTHS), 80, generator=generator)
    lengths = torch.tensor(LENGTHS)
    a = one_step(encoder, xs, lengths, False)
    b = one_step(copy.deepcopy(encoder), xs, lengths, True)
    valid = torch.arange(a[0].size(1))[None] < a[1][:, None]
    diff = (a[0] - b[0])[valid].abs()
    scale = max(g.abs().max() for g in a[2])
    result = {
        "output_max_abs_diff": float(diff.max()),
        "output_share_differing": float((diff > 0).float().mean()),
        "grad_max_diff_over_max_grad": float(max((x - y).abs().max()
                                                 for x, y in zip(a[2], b[2])) / scale),
        "statistics_equal": all(torch.equal(x, y) for x, y in zip(a[3], b[3])),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rounding_sensitivity.json").write_text(text)


if __name__ == "__main__":
    main()
