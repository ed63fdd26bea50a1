"""The deploy form streams: binary spike trains chunk by chunk, equal to the training
form's causal outputs, with the accumulates of the causal map counted."""

import pytest
import torch

from espnet_imlspike.errors import OptionError
from espnet_imlspike.streaming.deploy import (
    IMLSpikeformerStreamingDeployEncoder,
    convert_streaming_encoder,
)
from test_streaming_encoder import SMALL, calibrated, chunked


def counts(encoder):
    return {layer: dict(kinds) for layer, kinds in encoder.counter.counts.items()}


@pytest.mark.parametrize("attention,left_context", [("hd_repssa_softmax", 0),
                                                    ("hd_repssa_linear", 4)])
def test_spike_trains_chunk_by_chunk_equal_the_training_form(attention, left_context):
    trained = calibrated(torch.float64, attention=attention, left_context=left_context)
    deploy = convert_streaming_encoder(trained, "spike_train")
    assert isinstance(deploy, IMLSpikeformerStreamingDeployEncoder)
    feats = torch.randn(1, 83, 20, dtype=torch.float64)
    with torch.no_grad():
        reference, _, _ = trained(feats, torch.tensor([83]))
        deploy.counter.enabled = True
        full, _, _ = deploy(feats, torch.tensor([83]))
        full_counts = counts(deploy)
        deploy.counter.counts.clear()
        out = chunked(deploy, feats, 12)
    torch.testing.assert_close(full, reference, atol=1e-12, rtol=0)
    torch.testing.assert_close(out, reference, atol=1e-12, rtol=0)
    chunk_counts = counts(deploy)
    # every synaptic layer counts the same events chunk by chunk; only the real-valued
    # conv front re-reads the input frames its windows share across chunk edges
    assert {k: v for k, v in chunk_counts.items() if k != "embed"} == {
        k: v for k, v in full_counts.items() if k != "embed"}
    assert chunk_counts["embed"]["mac"] > full_counts["embed"]["mac"]


def test_counted_accumulates_of_the_causal_map_by_hand():
    deploy = convert_streaming_encoder(calibrated(torch.float64), "spike_train")
    attn = deploy.encoders[0].self_attn
    assert attn.value_neuron.layer_name == "encoders.0.self_attn.value_neuron"
    feats = torch.randn(1, 60, 20, dtype=torch.float64)
    deploy.counter.enabled = True
    with torch.no_grad():
        chunked(deploy, feats, 8)
    counted = deploy.counter.counts["encoders.0.self_attn"]["ac"]
    # the spikes of the full utterance, then a brute-force count
    recorded = {}
    handles = [
        deploy.encoders[0].attn_input_neuron.register_forward_hook(
            lambda m, i, o: recorded.update(x=o[0])),
        attn.value_neuron.register_forward_hook(lambda m, i, o: recorded.update(v=o[0])),
    ]
    deploy.counter.enabled = False
    with torch.no_grad():
        deploy(feats, torch.tensor([60]))
    for handle in handles:
        handle.remove()
    x, v = recorded["x"], recorded["v"]  # (L, D) spike counts
    length, size, heads = x.size(0), x.size(1), attn.heads
    later = torch.arange(length, 0, -1, dtype=x.dtype)  # queries that see key j: L - j
    expected = (x.sum() * heads * (size + 2)  # X W_QK rows and the two bias terms
                + (x.sum(1) * later).sum() * heads  # (X W_QK) X^T, causal pairs only
                + (v.sum(1) * later).sum())  # weights x V_s, one d_k row per spike
    assert counted == int(expected)


def test_deploy_form_options_and_training_refused():
    with pytest.raises(OptionError, match="left_context"):
        IMLSpikeformerStreamingDeployEncoder(20, left_context=-2, **SMALL)
    with pytest.raises(OptionError, match="attention"):
        IMLSpikeformerStreamingDeployEncoder(20, attention="sdsa3", **SMALL)
    deploy = IMLSpikeformerStreamingDeployEncoder(20, left_context=3, **SMALL)
    assert deploy.encoder_conf()["left_context"] == 3
    with pytest.raises(OptionError, match="cannot be trained"):
        deploy.train()
