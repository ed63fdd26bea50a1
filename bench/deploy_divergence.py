"""How many spike counts differ between the training form's eval and the deploy form.

In float64 the two forms are equal exactly; in float32 the fused ``W_QK``, the binary-plane
sums and the summation order round differently, a potential within rounding error of a
threshold fires one spike more or less, and the difference spreads through the blocks. This
measures the share of differing spike counts per block, on random features, after the
thresholds were calibrated by a few training batches.

    python bench/deploy_divergence.py --blocks 6 --size 256 --timesteps 6 --device cpu
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from espnet_imlspike.deploy.convert import convert_encoder  # noqa: E402
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder  # noqa: E402
from espnet_imlspike.neurons import SpikingNeuron  # noqa: E402


def spike_counts(encoder, x, lengths):
    """Outputs of every neuron layer (by name) on valid frames."""
    outputs = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o))
               for n, m in encoder.named_modules() if isinstance(m, SpikingNeuron)]
    with torch.no_grad():
        encoder(x, lengths)
    for h in handles:
        h.remove()
    return outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--units", type=int, default=2048)
    parser.add_argument("--timesteps", type=int, default=6)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--execution", default="spike_train", choices=("spike_train", "multi_level"))
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    encoder = IMLSpikeformerEncoder(
        80, output_size=args.size, attention_heads=4, linear_units=args.units,
        num_blocks=args.blocks, timesteps=args.timesteps,
    ).to(args.device, dtype)
    lengths = torch.tensor([args.frames, args.frames * 3 // 4], device=args.device)
    encoder.train()
    for _ in range(5):
        encoder(torch.randn(2, args.frames, 80, device=args.device, dtype=dtype), lengths)
    encoder.eval()
    deploy = convert_encoder(encoder, args.execution)
    x = torch.randn(2, args.frames, 80, device=args.device, dtype=dtype)
    trained, deployed = spike_counts(encoder, x, lengths), spike_counts(deploy, x, lengths)
    per_block, total, differ = {}, 0, 0
    for name, spikes in trained.items():
        other = deployed[name]
        block = name.split(".")[1]
        d = int((spikes != other).sum())
        n = spikes.numel()
        per_block.setdefault(block, [0, 0])
        per_block[block][0] += d
        per_block[block][1] += n
        total, differ = total + n, differ + d
    result = {
        "config": vars(args),
        "differing_share_all": differ / total,
        "differing_share_per_block": {b: d / n for b, (d, n) in per_block.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
