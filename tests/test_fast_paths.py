"""The fast paths (espnet_imlspike.fast) equal the reference path, on the CPU.

Forward values are compared bit for bit (the fast path repeats the reference's
arithmetic); gradients up to the order in which float sums are taken; IMLS statistics
exactly. The chunked input layer (equal to rounding, tests in test_chunked_input_layer.py)
is off here, so that the blocks' fast paths are compared bit for bit. The CUDA graphs
themselves need a GPU (bench/fast_checks.py); what they rely on (padding to a bucket
leaves the real outputs unchanged) is tested here.
"""

import copy
import math
import os
import subprocess
import sys

import pytest
import torch

from espnet_imlspike import fast
from espnet_imlspike.attention import attention_weights
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.errors import OptionError
from espnet_imlspike.fast import fast_mode
from espnet_imlspike.fast import long_attention
from espnet_imlspike.fast.firing import fire_linear
from espnet_imlspike.fast.buckets import bucket_batch, bucket_frames
from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron

from helpers import REPO

SMALL = dict(output_size=32, attention_heads=4, linear_units=64, num_blocks=3)


@pytest.fixture(autouse=True)
def stock_input_layer(monkeypatch):
    monkeypatch.setenv("IMLSPIKE_CHUNKED_INPUT", "0")


def lengths_mask(lengths, frames):
    return torch.arange(frames)[None] < torch.tensor(lengths)[:, None]


def train_steps(encoder, xs, lengths, mode, steps=3, seed=0):
    """Outputs, gradients and buffers of a few training steps under a fast mode."""
    outputs, grads = [], []
    with fast_mode(mode):
        for step in range(steps):
            torch.manual_seed(seed + step)  # same dropout draws on both paths
            out, olens, _ = encoder(xs, lengths)
            (out * torch.linspace(-1, 1, out.size(-1), dtype=out.dtype)).sum().backward()
            outputs.append((out.detach().clone(), olens))
            grads.append([p.grad.clone() for p in encoder.parameters()])
            encoder.zero_grad()
    return outputs, grads, [b.clone() for b in encoder.buffers()]


def assert_same_training(reference, fast_copy, xs, lengths, rtol):
    ref_out, ref_grads, ref_buffers = train_steps(reference, xs, lengths, "0")
    out, grads, buffers = train_steps(fast_copy, xs, lengths, "1")
    for (a, la), (b, lb) in zip(ref_out, out):
        assert torch.equal(a, b) and torch.equal(la, lb)
    for step_ref, step in zip(ref_grads, grads):
        # relative to the largest gradient of the step: some are zero in exact arithmetic
        # (a key bias shifts every score of a row equally when there is no decay mask)
        scale = max(a.abs().max() for a in step_ref)
        for a, b in zip(step_ref, step):
            assert (a - b).abs().max() <= rtol * scale
    assert all(torch.equal(a, b) for a, b in zip(ref_buffers, buffers))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_imls_neuron_and_linears_equal_the_reference(dtype):
    torch.manual_seed(0)
    neuron = InputAwareMultiLevelSpikeNeuron(16, 6).to(dtype)
    layers = [torch.nn.Linear(16, 8).to(dtype) for _ in range(3)]
    neuron2, layers2 = copy.deepcopy(neuron), copy.deepcopy(layers)
    valid = lengths_mask([7, 5, 2], 7)
    for step in range(3):
        x = torch.randn(3, 7, 16, dtype=dtype) * 2
        x[0, 0, :3] = torch.tensor([-1.0, 0.0, 100.0], dtype=dtype)  # clip edges
        if step == 1:
            x[1, 1, 1] = float("nan")  # a NaN batch: skipped statistics, NaN gradients
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        weights = [torch.randn(3, 7, 8, dtype=dtype) for _ in layers]
        spikes = neuron(xa, valid)
        ref = [layer(spikes) for layer in layers]
        got = fire_linear(neuron2, xb, valid, layers2)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
        sum(((o * w).nan_to_num()).sum() for o, w in zip(ref, weights)).backward()
        sum(((o * w).nan_to_num()).sum() for o, w in zip(got, weights)).backward()
        eps = 1e-6 if dtype == torch.float32 else 1e-13  # sums of three layers' grads
        torch.testing.assert_close(xb.grad, xa.grad, rtol=0, equal_nan=True,
                                   atol=eps * xa.grad.nan_to_num().abs().max().item())
        for a, b in zip(layers, layers2):
            if step == 1:  # non-finite on both paths, so ESPnet skips the update alike
                assert not a.weight.grad.isfinite().all() and b.weight.grad.isnan().all()
            else:
                torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=0, atol=0)
            a.weight.grad = b.weight.grad = None
        assert torch.equal(neuron.running_max, neuron2.running_max)
        assert torch.equal(neuron.num_batches_tracked, neuron2.num_batches_tracked)
    neuron.eval(), neuron2.eval()
    with torch.no_grad():
        x = torch.randn(3, 7, 16, dtype=dtype)
        assert torch.equal(neuron(x, valid), fire_linear(neuron2, x, valid))


def test_fused_neuron_under_bf16_autocast_matches_the_reference():
    torch.manual_seed(0)
    neuron, layer = InputAwareMultiLevelSpikeNeuron(16, 6), torch.nn.Linear(16, 8)
    neuron2, layer2 = copy.deepcopy(neuron), copy.deepcopy(layer)
    x = torch.randn(3, 7, 16)
    valid = torch.ones(3, 7, dtype=torch.bool)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = layer(neuron(xa, valid))
        (got,) = fire_linear(neuron2, xb, valid, [layer2])
    assert ref.dtype == got.dtype == torch.bfloat16 and torch.equal(ref, got)
    ref.float().square().sum().backward()
    got.float().square().sum().backward()
    assert torch.equal(xa.grad, xb.grad)
    assert torch.equal(layer.weight.grad, layer2.weight.grad)


def attention_inputs(dtype, lengths=(37, 20), heads=2, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    n, length = len(lengths), max(lengths)
    q = torch.randn(n, heads, length, d, dtype=dtype, generator=generator)
    k = torch.randn(n, heads, length, d, dtype=dtype, generator=generator)
    v = torch.randint(0, 7, (n, heads, length, d), generator=generator).to(dtype)
    return q, k, v, lengths_mask(list(lengths), length)


@pytest.mark.parametrize("decay", [None, 1 - 2**-6, 0.9])
@pytest.mark.parametrize("variant,norm", [("softmax", "none"), ("linear", "none"),
                                          ("linear", "valid_keys")])
def test_memory_linear_attention_equals_the_explicit_map(decay, variant, norm):
    q, k, v, valid = attention_inputs(torch.float64)
    grad = torch.randn_like(q)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attention_weights(leaves[0] @ leaves[1].transpose(-2, -1), valid, variant,
                            decay, 8, norm) @ leaves[2]
    ref_grads = torch.autograd.grad((ref * grad).sum(), leaves)
    for chunk in (5, 8, 37):  # chunks across the end, inside, one chunk
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        if variant == "softmax":
            out = long_attention.chunked_softmax_context(*leaves, valid, decay, 8, chunk)
        else:
            out = long_attention.decayed_linear_context(*leaves, valid, decay, norm, chunk)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad((out * grad).sum(), leaves), ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_softmax_takes_per_head_views_as_the_blocks_pass_them():
    """The blocks pass q, k, v as per-head views of (N, L, D) tensors (not contiguous), and
    merging the heads hands backward a non-contiguous gradient; chunks of rows of them."""
    from espnet_imlspike.attention import merge_heads, split_heads

    generator = torch.Generator().manual_seed(5)
    lengths, heads = (37, 20), 2
    bases = [torch.randn(2, 37, heads * 8, dtype=torch.float64, generator=generator)
             for _ in range(3)]
    valid = lengths_mask(list(lengths), 37)
    grad = torch.randn(2, 37, heads * 8, dtype=torch.float64, generator=generator)
    leaves = [b.clone().requires_grad_() for b in bases]
    q, k, v = (split_heads(t, heads) for t in leaves)
    ref = merge_heads(attention_weights(q @ k.transpose(-2, -1), valid, "softmax", 0.9, 8) @ v)
    ref_grads = torch.autograd.grad((ref * grad).sum(), leaves)
    for chunk in (5, 16):
        leaves = [b.clone().requires_grad_() for b in bases]
        q, k, v = (split_heads(t, heads) for t in leaves)
        assert not q.is_contiguous()
        out = merge_heads(long_attention.chunked_softmax_context(q, k, v, valid, 0.9, 8, chunk))
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad((out * grad).sum(), leaves), ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_single_chunk_softmax_is_bit_identical_to_the_explicit_map():
    q, k, v, valid = attention_inputs(torch.float32)
    ref = attention_weights(q @ k.transpose(-2, -1), valid, "softmax", 0.97, 8) @ v
    assert torch.equal(long_attention.chunked_softmax_context(q, k, v, valid, 0.97, 8), ref)


@pytest.mark.parametrize("attention", ["hd_repssa_softmax", "hd_repssa_linear",
                                       "repssa_softmax", "repssa_linear"])
@pytest.mark.parametrize("normalize_before", [True, False])
def test_fast_encoder_training_equals_the_reference(attention, normalize_before):
    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, **SMALL, attention=attention, dropout_rate=0.1,
                                    normalize_before=normalize_before).double()
    xs = torch.randn(3, 60, 20, dtype=torch.float64)
    lengths = torch.tensor([60, 45, 30])
    assert_same_training(encoder, copy.deepcopy(encoder), xs, lengths, rtol=1e-10)


def test_fast_encoder_fp32_training_and_eval_equal_the_reference():
    torch.manual_seed(1)
    encoder = IMLSpikeformerEncoder(20, **SMALL)
    fast_copy = copy.deepcopy(encoder)
    xs, lengths = torch.randn(4, 80, 20), torch.tensor([80, 70, 33, 7])
    assert_same_training(encoder, fast_copy, xs, lengths, rtol=1e-4)
    encoder.eval(), fast_copy.eval()
    with torch.no_grad(), fast_mode("0"):
        ref, olens, _ = encoder(xs, lengths)
    with torch.no_grad(), fast_mode("1"):
        out, olens2, _ = fast_copy(xs, lengths)
    assert torch.equal(ref, out) and torch.equal(olens, olens2)


def test_long_path_switch_keeps_the_linear_encoder_equal(monkeypatch):
    monkeypatch.setattr(long_attention, "LONG_MAP_ELEMENTS", 0)  # every map is "long"
    torch.manual_seed(2)
    encoder = IMLSpikeformerEncoder(20, **SMALL, attention="hd_repssa_linear").double()
    fast_copy = copy.deepcopy(encoder)
    xs, lengths = torch.randn(2, 300, 20, dtype=torch.float64), torch.tensor([300, 170])
    torch.manual_seed(0)
    with fast_mode("0"):
        ref, _, _ = encoder(xs, lengths)
    torch.manual_seed(0)
    with fast_mode("1"):
        out, _, _ = fast_copy(xs, lengths)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("options", [dict(firing="mls"), dict(firing="multistep"),
                                     dict(attention="sdsa3")])
def test_blocks_the_fast_path_does_not_cover_run_the_reference(options):
    from espnet_imlspike.fast import block as fast_block

    encoder = IMLSpikeformerEncoder(20, **SMALL, **options)
    assert not any(fast_block.supported(b) for b in encoder.encoders)
    torch.manual_seed(0)
    xs, lengths = torch.randn(2, 40, 20), torch.tensor([40, 30])
    assert_same_training(encoder, copy.deepcopy(encoder), xs, lengths, rtol=0)


def test_hooked_neurons_see_every_call_on_the_fast_path():
    encoder = IMLSpikeformerEncoder(20, **SMALL)
    seen = []
    encoder.encoders[0].mlp_input_neuron.register_forward_hook(lambda *a: seen.append(1))
    with fast_mode("1"):
        encoder(torch.randn(2, 40, 20), torch.tensor([40, 30]))
    assert seen == [1]


def test_fast_path_keeps_less_for_backward():
    """Activation bytes autograd keeps for one block (parameters excluded): the fused
    nodes keep under 40% of the reference's (measured 30% at 256/2048 units, L = 99)."""
    torch.manual_seed(0)
    block = IMLSpikeformerEncoder(20, output_size=64, attention_heads=4,
                                  linear_units=512, num_blocks=1).encoders[0]
    x = torch.randn(4, 99, 64, requires_grad=True)
    valid = lengths_mask([99, 94, 87, 79], 99)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}

    def saved_bytes(mode):
        seen = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                seen[ptr] = t.untyped_storage().nbytes()
            return t

        with fast_mode(mode), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x, valid)
        return sum(seen.values())

    assert saved_bytes("1") < 0.4 * saved_bytes("0")


def test_padding_to_a_bucket_leaves_the_outputs_unchanged():
    torch.manual_seed(3)
    encoder = IMLSpikeformerEncoder(20, **SMALL).eval()
    xs, lengths = torch.randn(3, 70, 20), torch.tensor([70, 52, 9])
    with torch.no_grad(), fast_mode("1"):
        ref, olens, _ = encoder(xs, lengths)
        embedded, _, _ = encoder.embed_input(xs, lengths)  # (3, 16, D): eager in training
        # what a graph's static input is: the input layer's output, zero-padded
        batch, frames = bucket_batch(3), -(-bucket_frames(16 * 4) // 4)
        padded_xs = torch.zeros(batch, frames, embedded.size(-1))
        padded_xs[:3, :16] = embedded
        padded_lengths = torch.zeros(batch, dtype=torch.long)
        padded_lengths[:3] = olens
        padded = encoder._graph_core(padded_xs, padded_lengths)[:3, :16]
    assert embedded.size(1) == 16 and frames == 32 and padded.shape == ref.shape
    valid = lengths_mask(olens.tolist(), ref.size(1))
    torch.testing.assert_close(padded[valid], ref[valid], rtol=1e-5, atol=1e-5)


def test_buckets():
    assert [bucket_frames(n) for n in (1, 128, 129, 1000, 1025, 2049, 4096)] == [
        128, 128, 256, 1024, 1280, 2560, 4096]
    assert bucket_frames(4097) is None
    # conv2d6 (6 input frames a frame): 128 / 6, 256 / 6, 512 / 6 input frames rounded to
    # multiples of 16 frames (16, 48, 80), up to 1024, 2048, 4096 input frames
    assert [bucket_frames(n, 6) for n in (1, 17, 100, 170, 171, 341, 342, 682)] == [
        16, 32, 112, 176, 192, 384, 400, 720]
    assert bucket_frames(683, 6) is None
    # conv2d (4): multiples of 32, 64, 128 frames, i.e. the same 128, 256, 512 input frames
    assert [bucket_frames(n, 4) for n in (1, 33, 256, 257, 512, 513, 1024)] == [
        32, 64, 256, 320, 512, 640, 1024]
    for scale in (1, 2, 4, 6, 8):  # lengths aligned for the attention's products
        for n in range(1, 4096 // scale + 1):
            assert bucket_frames(n, scale) % 16 == 0 and bucket_frames(n, scale) >= n
    assert [bucket_batch(n) for n in (1, 5, 9, 17, 32, 33, 129, 285, 512)] == [
        1, 6, 10, 20, 32, 40, 160, 320, 512]
    assert bucket_batch(513) is None


def test_batches_beyond_the_buckets_run_eagerly_with_one_warning(caplog):
    """A batch larger than the last bucket, or a new bucket once MAX_GRAPHS are captured,
    runs the eager path; the user hears it once, not every step."""
    from espnet_imlspike.fast import graphs as graphs_module

    encoder = IMLSpikeformerEncoder(20, **SMALL)
    graphs = graphs_module.EncoderGraphs()
    graphs.watch = graphs_module.GraphWatch(encoder)
    calls = []

    def core(xs, ilens):
        calls.append(xs.shape)
        return xs

    xs, ilens = torch.zeros(2, 9, 32), torch.tensor([9, 7])
    with caplog.at_level("WARNING"):
        for _ in range(2):  # 600 utterances: above the last bucket (512)
            assert graphs._run(encoder, core, xs, ilens, 600, 9, False, 4) is xs
        assert graphs._run(encoder, core, xs, ilens, 600, 9, True, 4) is xs  # asked eager
    assert len(calls) == 3 and graphs.entries == {}
    assert [r.getMessage() for r in caplog.records] == [
        "spiking encoder: a batch of 600 x 9 frames is beyond the buckets; such batches run "
        "without CUDA graphs (slower)"]
    graphs.warned = False
    graphs.signature = graphs.watch.signature()
    graphs.entries = {("bucket", i): None for i in range(graphs_module.MAX_GRAPHS)}
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert graphs._run(encoder, core, xs, ilens, 2, 9, False, 4) is xs
    assert len(calls) == 4 and "64 buckets are captured already" in caplog.text


def test_switch_defaults_to_cuda_only_and_names_a_bad_value(monkeypatch):
    monkeypatch.delenv("IMLSPIKE_FAST", raising=False)
    assert not fast.enabled(torch.zeros(1))
    with fast_mode("1"):
        assert fast.enabled(torch.zeros(1))
    monkeypatch.setenv("IMLSPIKE_FAST", "yes")
    with pytest.raises(OptionError, match="IMLSPIKE_FAST"):
        fast.enabled(torch.zeros(1))
    with pytest.raises(OptionError, match="fast mode"):
        with fast_mode("fast"):
            pass


def test_graphs_are_not_copied_with_the_model():
    encoder = IMLSpikeformerEncoder(20, **SMALL)
    encoder._graphs.entries["key"] = object()
    assert copy.deepcopy(encoder)._graphs.entries == {}


def test_graph_captures_warm_up_once_per_mode_and_fall_back_to_a_warm_up(monkeypatch,
                                                                         caplog):
    """The capture decisions (the captures themselves need a GPU: bench/fast_checks.py
    compares a bucket captured without a warm-up with the reference there)."""
    from espnet_imlspike.fast.graphs import EncoderGraphs

    attempts, failing = [], set()

    def capture(self, module, core, xs, ilens, batch, frames, backward, warm):
        attempts.append((batch, warm))
        if warm in failing:
            raise RuntimeError(f"capture failed (warm={warm})")
        return f"entry {batch}"

    monkeypatch.setattr(EncoderGraphs, "_capture", capture)
    graphs = EncoderGraphs()

    def new_bucket(batch, mode="train"):
        return graphs._capture_or_none(None, None, None, None, batch, 64, True, mode)

    assert new_bucket(8) == "entry 8" and attempts == [(8, True)]
    assert new_bucket(16) == "entry 16" and attempts[-1] == (16, False)
    assert new_bucket(16, mode="eval") == "entry 16" and attempts[-1] == (16, True)
    failing.add(False)  # a capture without warm-up fails: retried with one
    assert new_bucket(20) == "entry 20" and attempts[-2:] == [(20, False), (20, True)]
    assert not graphs.disabled
    failing.add(True)  # both fail: eager from now on, with a warning naming the error
    assert new_bucket(24) is None and attempts[-2:] == [(24, False), (24, True)]
    assert graphs.disabled and "capture failed (warm=True)" in caplog.text
    assert new_bucket(8, mode="fp32") is None and attempts[-1] == (8, True)


def test_graphs_differentiate_the_blocks_parameters_not_the_eager_input_layers(monkeypatch):
    """The input layer runs before the graphs: its parameters get their gradients from the
    eager autograd and take no room in the graphs' gradient buffer."""
    from espnet_imlspike.fast.graphs import EncoderGraphs

    seen = {}

    def capture_graphs(self, module, core, xs, entry, autocast, backward, warm, params,
                       leaves):
        seen["params"] = params

    monkeypatch.setattr(EncoderGraphs, "_capture_graphs", capture_graphs)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)  # (needs a GPU)
    encoder = IMLSpikeformerEncoder(20, **SMALL)
    encoder.after_norm.bias.requires_grad_(False)  # frozen ones stay out too
    xs, ilens = torch.randn(2, 9, 32), torch.tensor([9, 7])
    EncoderGraphs()._capture(encoder, None, xs, ilens, 2, 16, True, False)
    expected = [p for name, p in encoder.named_parameters()
                if not name.startswith("embed.") and p.requires_grad]
    assert [id(p) for p in seen["params"]] == [id(p) for p in expected]
    assert len(expected) < len(list(encoder.parameters())) - 4  # embed: 2 convs, Linear


def test_buckets_share_their_static_tensors_unless_switched_off(monkeypatch):
    """By default every bucket's static input is a zeroed view at offset 0 of one buffer
    per dtype (so the graphs of all buckets read one address); a larger bucket gets a new
    buffer with headroom and the views taken before keep the old one; a view can be a
    leaf that requires grad (the input's gradient). IMLSPIKE_SHARED_STATIC=0: a tensor per
    bucket."""
    from espnet_imlspike.fast.graph_bucket import Entry, StaticTensors
    from espnet_imlspike.fast.graphs import EncoderGraphs

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: None)  # (needs a GPU)
    monkeypatch.setenv("IMLSPIKE_SHARED_STATIC", "0")
    graphs = EncoderGraphs()
    assert not graphs.inputs.shared and not graphs.output_grads.shared
    xs, ilens = torch.randn(3, 5, 8), torch.tensor([5, 4, 2])
    separate = [Entry(4, 8, xs, ilens, graphs.inputs).xs for _ in range(2)]
    assert separate[0].untyped_storage().data_ptr() != separate[1].untyped_storage().data_ptr()

    monkeypatch.delenv("IMLSPIKE_SHARED_STATIC")
    graphs = EncoderGraphs()
    assert graphs.inputs.shared and graphs.output_grads.shared
    first = Entry(4, 8, xs, ilens, graphs.inputs)
    first.xs.fill_(7.0)
    second = Entry(2, 16, xs, ilens, graphs.inputs)  # as many values: the same buffer
    assert second.xs.shape == (2, 16, 8) and not second.xs.any()  # zeroed when taken
    assert second.xs.data_ptr() == first.xs.data_ptr()
    assert not first.xs.any()  # one memory, one bucket at a time
    buffer = graphs.inputs.buffers[(torch.float32, torch.device("cpu"))]
    assert buffer.numel() == math.ceil(4 * 8 * 8 * StaticTensors.HEADROOM)
    larger = Entry(6, 16, xs, ilens, graphs.inputs)  # more than the buffer holds
    grown = graphs.inputs.buffers[(torch.float32, torch.device("cpu"))]
    assert grown.numel() == math.ceil(6 * 16 * 8 * StaticTensors.HEADROOM)
    assert larger.xs.data_ptr() == grown.data_ptr() != buffer.data_ptr()
    assert first.xs.data_ptr() == buffer.data_ptr()  # the graphs captured on it keep it
    half = Entry(4, 8, xs.half(), ilens, graphs.inputs)  # a buffer per dtype
    assert half.xs.dtype == torch.float16 and half.xs.data_ptr() != grown.data_ptr()
    grad_out = graphs.output_grads.take((4, 8, 8), torch.float32, torch.device("cpu"))
    assert grad_out.data_ptr() != grown.data_ptr()  # roles never share
    # the input's gradient: the view as a leaf that requires grad
    leaf = larger.xs.requires_grad_(True)
    weight = torch.randn(8, 3)
    (got,) = torch.autograd.grad((leaf @ weight).square().sum(), [leaf])
    with torch.no_grad():
        expected = 2 * (leaf @ weight) @ weight.t()
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_bench_scripts_smoke_on_cpu(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for script in ("replay_shapes.py", "long_utterances.py"):
        done = subprocess.run(
            [sys.executable, str(REPO / "bench" / script), "--smoke", "--out", str(tmp_path)],
            capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]


def test_parameter_aliases_share_storage_and_give_the_same_gradients():
    from espnet_imlspike.fast.ranks import parameter_aliases

    torch.manual_seed(0)
    encoder = IMLSpikeformerEncoder(20, output_size=16, attention_heads=2, linear_units=32,
                                    num_blocks=2, timesteps=4, dropout_rate=0.0,
                                    positional_dropout_rate=0.0).double().eval()
    encoder.embed.conv[0].weight.requires_grad_(False)  # frozen ones stay frozen
    xs, ilens = torch.randn(2, 40, 20, dtype=torch.float64), torch.tensor([40, 31])
    real = list(encoder.parameters())
    out = encoder(xs, ilens)[0]
    expected = torch.autograd.grad(out.square().sum(), [p for p in real if p.requires_grad])
    with parameter_aliases(encoder) as aliases:
        assert list(encoder.parameters()) == aliases
        assert all(a is not p and a.data_ptr() == p.data_ptr()
                   and a.requires_grad == p.requires_grad for a, p in zip(aliases, real))
        aliased = encoder(xs, ilens)[0]
        grads = torch.autograd.grad(aliased.square().sum(),
                                    [a for a in aliases if a.requires_grad])
    assert torch.equal(aliased, out)
    assert all(torch.equal(g, e) for g, e in zip(grads, expected))
    assert all(a is p for a, p in zip(encoder.parameters(), real))  # originals back


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norm_keeping_the_half_precision_input_equals_autocasts(dtype):
    """What CUDA's autocast does with a half-precision input (a float32 copy into
    LayerNorm), against _CastLayerNorm: same output and gradients bit for bit, while
    backward keeps the input itself instead of the float32 copy."""
    from espnet_imlspike.fast.layer_norm import _CastLayerNorm, layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(48, eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(3, 17, 48) * 5 + 2).to(dtype)
    grad = torch.randn(3, 17, 48)
    results = []
    for fused in (False, True):
        leaf = x.clone().requires_grad_()
        norm.zero_grad(set_to_none=True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append((t.dtype, t.shape)) or t, lambda t: t):
            out = (_CastLayerNorm.apply(leaf, norm.weight, norm.bias, norm.eps) if fused
                   else torch.nn.functional.layer_norm(leaf.float(), (48,), norm.weight,
                                                       norm.bias, norm.eps))
        out.backward(grad)
        results.append((out, leaf.grad, norm.weight.grad, norm.bias.grad, saved))
    (ref, *ref_grads, ref_saved), (out, *grads, fused_saved) = results
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert grads[0].dtype == dtype
    assert (torch.float32, x.shape) in ref_saved  # autocast's copy
    assert (torch.float32, x.shape) not in fused_saved and (dtype, x.shape) in fused_saved
    # on the CPU autocast normalises in the input's dtype: the module itself runs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer_norm(norm, x.to(torch.bfloat16)),
                           norm(x.to(torch.bfloat16)))
