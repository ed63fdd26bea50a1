"""``torch.compile`` in inference runs the chunked input layer (espnet_imlspike.fast.subsampling)
as one opaque operator, ``imlspike::conv_subsampling``: the compiled graph calls it instead
of tracing ESPnet's convolutions, its outputs are the eager chunked layer's bit for bit, and
a graph that needs gradients still traces ESPnet's module. The compiler backends here record
the traced graphs and run them as traced (no code generation on the CPU)."""

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding
from helpers import CompilerRecorder

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.encoders.common import CONV_SUBSAMPLING, conv_subsample
from espnet_imlspike.fast import fast_mode, subsampling

FREQ, UNITS = 40, 16
OPERATOR = torch.ops.imlspike.conv_subsampling.default


def geometry(embed):
    return subsampling._Geometry.of_layers(subsampling._convolutions(embed))


def layer(name, seed=0):
    torch.manual_seed(seed)
    return CONV_SUBSAMPLING[name](FREQ, UNITS, 0.0, PositionalEncoding(UNITS, 0.0)).eval()


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ["conv2d", "conv2d6", "conv2d8"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_compiled_inference_calls_the_chunked_layer_as_one_operator(name, autocast,
                                                                    monkeypatch):
    # several chunks, the same in training and in compiled inference (whose default budget
    # is larger: fewer launches)
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)
    monkeypatch.setattr(subsampling, "INFERENCE_ELEMENTS_PER_CHUNK", 20_000)
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    embed, xs = layer(name), torch.randn(3, 101, FREQ)
    recorder = CompilerRecorder()
    compiled = torch.compile(lambda x: conv_subsample(embed, x), backend=recorder,
                             fullgraph=True)
    with fast_mode("1"), torch.no_grad(), torch.autocast("cpu", torch.bfloat16,
                                                         enabled=autocast):
        eager = subsampling.subsample(embed, xs)
        out = compiled(xs)
        stock = embed(xs, None)[0]
    targets = recorder.targets()
    assert OPERATOR in targets and torch.nn.functional.conv2d not in targets
    assert len(geometry(embed).chunks(3, 101, FREQ)) > 1
    assert out.dtype == eager.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(out, eager)
    # and ESPnet's module to rounding (the chunked layer's contract)
    tolerance = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(out.float(), stock.float(), rtol=0,
                               atol=tolerance * stock.abs().max().item())


def test_one_dynamic_graph_serves_every_length():
    """The operator's shape function takes symbolic lengths: ``dynamic=True`` traces once."""
    embed = layer("conv2d6")
    recorder = CompilerRecorder()
    compiled = torch.compile(lambda x: conv_subsample(embed, x), backend=recorder,
                             dynamic=True, fullgraph=True)
    with fast_mode("1"), torch.no_grad():
        for frames in (101, 77, 150):
            xs = torch.randn(3, frames, FREQ)
            assert torch.equal(compiled(xs), subsampling.subsample(embed, xs))
    assert len(recorder.graphs) == 1


def test_a_compiled_graph_that_needs_gradients_traces_espnets_module():
    embed, xs = layer("conv2d"), torch.randn(2, 61, FREQ)
    embed.train()
    recorder = CompilerRecorder()
    compiled = torch.compile(lambda x: conv_subsample(embed, x), backend=recorder)
    with fast_mode("1"):
        out = compiled(xs)
    targets = recorder.targets()
    assert OPERATOR not in targets and torch.conv2d in targets
    assert torch.equal(out, embed(xs, None)[0])
    out.sum().backward()  # trainable through the traced module
    assert embed.conv[0].weight.grad is not None


def test_an_exported_program_keeps_espnets_operations():
    """torch.export (ONNX, other runtimes) gets the module's convolutions, not the operator
    only this package defines."""

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = layer("conv2d")

        def forward(self, xs):
            return conv_subsample(self.embed, xs)

    module, xs = Layer(), torch.randn(2, 61, FREQ)
    with fast_mode("1"), torch.no_grad():
        program = torch.export.export(module, (xs,))
        expected = module.embed(xs, None)[0]
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert OPERATOR not in targets
    assert torch.ops.aten.conv2d.default in targets or torch.ops.aten.convolution.default in targets
    torch.testing.assert_close(program.module()(xs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name, frames", [("conv2d", 61), ("conv2d6", 100), ("conv2d8", 97)])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_operator_output_matches_its_shape_function(name, frames, dtype):
    """torch.library.opcheck: the registered fake (shape and dtype, what the compiler plans
    with) against the real output, and the schema."""
    embed = layer(name)
    args = (torch.randn(2, frames, FREQ), [p.detach() for p in embed.parameters()],
            *geometry(embed).flat(), dtype)
    torch.library.opcheck(subsampling.conv_subsampling, args)
    out = subsampling.conv_subsampling(*args)
    assert out.dtype == (dtype or torch.float32)
    assert out.shape == embed(args[0], None)[0].shape


def test_compiled_inference_chunks_only_bound_the_maps_alive_at_once():
    """No backward to keep maps for: a batch of AISHELL's shape (32 x 1200 frames, conv2d
    at 256 units) is one chunk, not the six of training's budget."""
    embed = CONV_SUBSAMPLING["conv2d"](80, 256, 0.0, PositionalEncoding(256, 0.0))
    shape = geometry(embed)
    assert len(shape.chunks(32, 1200, 80, subsampling.INFERENCE_ELEMENTS_PER_CHUNK)) == 1
    assert len(shape.chunks(32, 1200, 80)) == 6
    # the first map of 32 x 1200 frames: 32 x 256 x 599 x 39 values, within 2^28 (and
    # above 2^25); a batch of twice as many utterances takes two chunks
    assert (1 << 25) < 32 * 256 * 599 * 39 <= (1 << 28)
    assert len(shape.chunks(64, 1200, 80, subsampling.INFERENCE_ELEMENTS_PER_CHUNK)) == 2


def test_compiled_encoder_inference_is_one_graph_equal_to_the_eager_fast_path():
    torch.manual_seed(1)
    encoder = IMLSpikeformerEncoder(FREQ, output_size=32, attention_heads=4,
                                    linear_units=64, num_blocks=2)
    xs, lengths = torch.randn(4, 80, FREQ), torch.tensor([80, 70, 33, 7])
    with fast_mode("1"), torch.no_grad():
        encoder(xs, lengths)  # calibrate the IMLS statistics
    encoder.eval()
    recorder = CompilerRecorder()
    compiled = torch.compile(encoder, backend=recorder, fullgraph=True)  # no graph break
    with fast_mode("1"), torch.no_grad():
        for frames in (80, 64):
            cut, lengths_cut = xs[:, :frames].contiguous(), lengths.clamp(max=frames)
            ref, ref_lengths, _ = encoder(cut, lengths_cut)
            out, out_lengths, _ = compiled(cut, lengths_cut)
            assert torch.equal(out, ref) and torch.equal(out_lengths, ref_lengths)
    assert recorder.graphs  # (a second length may recompile: ESPnet's positional encoding)
    for graph in recorder.graphs:
        assert [n.target for n in graph.graph.nodes].count(OPERATOR) == 1


def test_the_operator_keeps_its_weights_only_while_they_are_unchanged():
    """Compiled inference keeps the layer's cast and reordered weights between calls: an
    in-place change (a loaded checkpoint) or a new tensor makes them again."""
    embed, xs = layer("conv2d"), torch.randn(2, 60, FREQ)
    compiled = torch.compile(lambda x: conv_subsample(embed, x), backend=CompilerRecorder())
    weight = embed.conv[0].weight
    with fast_mode("1"), torch.no_grad():
        before = compiled(xs)
        assert torch.equal(before, subsampling.subsample(embed, xs))
        weight.mul_(2.0)  # in place: the same tensor, a new version
        changed = compiled(xs)
        assert torch.equal(changed, subsampling.subsample(embed, xs))
        assert not torch.equal(changed, before)
        linear = embed.out[0]
        linear.weight.data = linear.weight.data * 0.5  # a new tensor
        replaced = compiled(xs)
        assert torch.equal(replaced, subsampling.subsample(embed, xs))
        assert not torch.equal(replaced, changed)
        assert torch.equal(compiled(xs), replaced)  # and kept again
