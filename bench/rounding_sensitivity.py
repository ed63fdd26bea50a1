"""How far a rounding difference in the input layer's output moves the spiking encoder.

The reference path (fast paths off) of the paper-size encoder (12 x 256, T = 6) takes one
training step (``fast_checks.steps``: forward, backward of a fixed linear loss) twice on
``fast_checks.batch``; the second time a forward hook changes about 0.04% of the input
layer's outputs by one bf16 ulp (relative 2^-8), the kind of difference another
convolution algorithm makes. Printed (``fast_checks.compare``): the largest output
difference and the share of outputs that differ, the largest gradient difference over the
largest gradient, and whether the IMLS statistics stayed equal. CPU, float32; compare with
``chunked_encoder_*`` of ``fast_checks.py`` (the chunked input layer vs ESPnet's module, GPU).

    python bench/rounding_sensitivity.py --out bench/out
"""

import argparse
import copy
from pathlib import Path

import torch

from common import SIZES, print_and_write
from fast_checks import batch, compare, steps

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder  # noqa: E402


def one_ulp_here_and_there(module, inputs, output):
    x, mask = output
    chosen = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) < 4e-4
    return x + chosen * x * 2.0 ** -8, mask


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(80, **SIZES["aishell"]).train()
    perturbed = copy.deepcopy(encoder)
    perturbed.embed.register_forward_hook(one_ulp_here_and_there)
    xs, lengths = batch(torch.device("cpu"))
    a = steps(encoder, xs, lengths, "0", torch.float32, 1, graphs=False)
    b = steps(perturbed, xs, lengths, "0", torch.float32, 1, graphs=False)
    print_and_write(compare(a, b, a[2]), args.out, "rounding_sensitivity.json")


if __name__ == "__main__":
    main()
