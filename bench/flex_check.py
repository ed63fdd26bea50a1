"""GPU check of the fused (FlexAttention) HD-RepSSA path against the explicit map:
context and gradients of one attention module, compiled fused vs eager explicit.

    python bench/flex_check.py
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from espnet_imlspike.attention import HDRepSSA, split_heads  # noqa: E402
from espnet_imlspike.neurons import MultiLevelSpikeNeuron  # noqa: E402


def main():
    torch.manual_seed(0)
    device = torch.device("cuda")
    module = HDRepSSA(256, 4, lambda: MultiLevelSpikeNeuron(6, 0.37), "softmax",
                      1 - 2**-6).to(device)
    x = torch.randint(0, 7, (4, 150, 256), device=device).float()
    valid = torch.arange(150, device=device)[None] < torch.tensor([150, 120, 90, 60],
                                                                  device=device)[:, None]
    values = split_heads(torch.randint(0, 7, (4, 150, 256), device=device).float(), 4)

    def explicit(x):
        return module.attention_map(x, valid) @ values

    fused = torch.compile(
        lambda x: module.fused_softmax_context(*module._queries_keys(x), valid, values))
    results = {}
    for name, fn in (("explicit", explicit), ("fused", fused)):
        module.zero_grad()
        out = fn(x)
        (out * valid[:, None, :, None]).pow(2).sum().backward()
        results[name] = (out.detach(), module.linear_q.weight.grad.clone())
    rows = valid[:, None, :, None].expand_as(results["fused"][0])
    out_diff = (results["fused"][0] - results["explicit"][0])[rows].abs().max()
    grad_rel = ((results["fused"][1] - results["explicit"][1]).norm()
                / results["explicit"][1].norm())
    report = {"context_max_abs_diff": float(out_diff), "grad_q_rel_diff": float(grad_rel)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
