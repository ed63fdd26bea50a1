"""Interleaved CPU A/B of multi-level firing in inference: the straight-through
construction (before) against ``floor(clip(u, 0, T))`` directly (after), on one calibrated
IML-Spikeformer (AISHELL size, eval, batch 1, 10 s of audio, 2 threads), beside ESPnet's
Transformer; medians of 15 calls each, taken in turn.

    python bench/results/cpu_rtf_inference_floor/ab_encoder.py
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/
from common import SIZES, build  # noqa: E402

import espnet_imlspike.neurons as neurons  # noqa: E402


def straight_through_fire(u, timesteps):
    """The firing as it was: the straight-through construction also without a gradient."""
    clipped = u.clamp(0.0, float(timesteps))
    return clipped + (torch.floor(clipped) - clipped).detach()


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    transformer = build("transformer", SIZES["aishell"]).eval()
    spiking = build("iml_imls_t6", SIZES["aishell"]).train()
    with torch.no_grad():  # calibrate the thresholds
        for _ in range(3):
            spiking(torch.randn(4, 600, 80), torch.tensor([600, 550, 500, 450]))
    spiking.eval()
    firing = {"before": straight_through_fire, "after": neurons.multi_level_fire}
    xs, lengths = torch.randn(1, 1000, 80), torch.tensor([1000])
    times = {"transformer": [], "before": [], "after": []}
    with torch.no_grad():
        outputs = []
        for name in ("before", "after"):
            neurons.multi_level_fire = firing[name]
            outputs.append(spiking(xs, lengths)[0])
        print("equal outputs:", torch.equal(*outputs))
        for _ in range(15):
            for name in times:
                model = transformer if name == "transformer" else spiking
                if name in firing:
                    neurons.multi_level_fire = firing[name]
                begin = time.perf_counter()
                model(xs, lengths)
                times[name].append(time.perf_counter() - begin)
    median = {name: statistics.median(values) for name, values in times.items()}
    print({name: round(value * 1000, 1) for name, value in median.items()},
          "before/T %.3f after/T %.3f" % (median["before"] / median["transformer"],
                                          median["after"] / median["transformer"]))


if __name__ == "__main__":
    main()
