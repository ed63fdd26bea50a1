"""Our counts beside NeuroBench's: equal wherever both count (synaptic linear ACs, the
conv front's effective MACs, dense operations, activation sparsity), and the attention
products listed as what NeuroBench cannot count."""

from types import SimpleNamespace

import pytest
import torch

from espnet_imlspike.deploy.convert import convert_encoder
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.energy.measure import build_report, measure
from espnet_imlspike.energy.neurobench_metrics import (
    effective_macs,
    neurobench_metrics,
    ours_beside,
)


def test_effective_macs_by_hand():
    conv = torch.nn.Conv2d(1, 2, 2, stride=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]]))
    x = torch.tensor([[[[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]]])  # 1 x 1 x 2 x 3: 2 positions
    # position 0 sees [1, 0; 0, 3]: channel 0 pairs 2, channel 1 pairs 2
    # position 1 sees [0, 2; 3, 0]: channel 0 pairs 0, channel 1 pairs 2
    assert effective_macs(conv, x) == 6
    linear = torch.nn.Linear(3, 2, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 2.0]]))
    assert effective_macs(linear, torch.tensor([[0.5, 1.0, 0.0], [1.0, 0.0, 1.0]])) == 1 + 3


def test_ours_beside_neurobench():
    pytest.importorskip("neurobench")
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, output_size=32, attention_heads=4, linear_units=64,
                                    num_blocks=2)
    encoder.train()
    encoder(torch.randn(4, 60, 20), torch.tensor([60, 50, 40, 30]))
    deploy = convert_encoder(encoder.eval())
    feats = [("a", torch.randn(50, 20)), ("b", torch.randn(37, 20))]
    deploy.counter.enabled = True
    measured = measure(deploy, deploy, feats, lambda m, x, n: m(x, n), progress=False)
    deploy.counter.enabled = False
    report, _ = build_report(deploy, measured.recorder, measured.lengths, 1,
                             measured=deploy.counter.counts)
    results = neurobench_metrics(SimpleNamespace(encoder=deploy), feats, lambda x, n: (x, n))
    rows = {what.split(" (")[0]: (ours, theirs) for what, ours, theirs, _ in
            ours_beside(results, report, deploy)}
    assert len(rows) == 5
    for what, (ours, theirs) in rows.items():
        if what.startswith("Accumulates of the attention products"):
            assert theirs is None and ours > 0  # NeuroBench cannot count them
        else:
            assert ours == pytest.approx(theirs, rel=1e-12), what
    # the front's effective MACs are fewer than its dense FLOPs (ReLU zeros skipped)
    front = [c for c in report["models"][0]["layers"]]
    assert rows["Effective MACs of the convolutional front"][0] < rows[
        "Dense operations: front FLOPs + T x FLOPs of the synaptic linear layers"][0]
    assert front  # the ANN's per-layer list exists
