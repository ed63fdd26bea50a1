"""ESPnet's conv-subsampling input layers on the fast path (espnet_imlspike.fast.subsampling):
the convolutions run over time chunks (outputs and gradients equal the stock module's up
to the order of float sums), and autograd keeps only the input features and the output
instead of the feature maps."""

import math

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.embedding import PositionalEncoding

from espnet_imlspike.encoders.common import CONV_SUBSAMPLING
from espnet_imlspike.errors import OptionError
from espnet_imlspike.fast import chunked_input_layer, fast_mode, subsampling
from helpers import LiveBytes

CHANNELS, FREQ = 16, 40


def layer(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return CONV_SUBSAMPLING[name](FREQ, CHANNELS, 0.0, PositionalEncoding(CHANNELS, 0.0)).to(dtype)


def geometry(embed):
    return subsampling._Geometry.of_layers(subsampling._convolutions(embed))


@pytest.fixture(params=["1", "0"], ids=["last_map_recomputed", "last_map_kept"])
def last_map(request, monkeypatch):
    """Both ways of backward: recomputing the last map, or keeping it from forward."""
    monkeypatch.setenv("IMLSPIKE_RECOMPUTE_LAST_MAP", request.param)
    return request.param == "1"


def grads(out, inputs, weight):
    return torch.autograd.grad((out * weight).sum(), inputs)


@pytest.mark.parametrize("name", sorted(CONV_SUBSAMPLING))
@pytest.mark.parametrize("budget", [1, 20_000, 1 << 25])  # one row, a few rows, one chunk
def test_chunked_input_layer_equals_espnets_module(name, budget, monkeypatch, last_map):
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", budget)
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    embed = layer(name)
    xs = torch.randn(3, 61, FREQ, dtype=torch.float64, requires_grad=True)
    with fast_mode("1"):
        assert subsampling.applies(embed, xs)
        out = subsampling.subsample(embed, xs)
    ref, _ = embed(xs, None)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13 * ref.abs().max().item())
    weight = torch.randn_like(ref)
    inputs = [xs, *embed.parameters()]
    for a, b in zip(grads(ref, inputs, weight), grads(out, inputs, weight)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * a.abs().max().item())
    chunks = geometry(embed).chunks(3, 61, FREQ)
    expected = {1: ref.size(1), 1 << 25: 1}.get(budget)
    if expected:
        assert len(chunks) == expected
    else:  # a few chunks, the last one shorter (zero-padded in backward)
        assert 1 < len(chunks) < ref.size(1)
        assert chunks[-1][1] - chunks[-1][0] < chunks[0][1] - chunks[0][0]


@pytest.mark.parametrize("name, units, macs", [("conv2d", 256, 3 * 3 * 256),
                                               ("conv2d", 512, 3 * 3 * 512),
                                               ("conv2d6", 256, 5 * 5 * 256),
                                               ("conv2d6", 512, 5 * 5 * 512)])
def test_backward_recomputes_the_last_map_where_its_convolution_is_cheap(name, units, macs,
                                                                         monkeypatch):
    """The last map is recomputed when its convolution costs at most 4096 multiply-adds per
    value (AISHELL's conv2d at 256 units: 2304), kept otherwise (LibriSpeech's conv2d6 at
    512: 12800); IMLSPIKE_RECOMPUTE_LAST_MAP=1/0 overrides."""
    embed = CONV_SUBSAMPLING[name](80, units, 0.0, PositionalEncoding(units, 0.0))
    shape = geometry(embed)
    monkeypatch.delenv("IMLSPIKE_RECOMPUTE_LAST_MAP", raising=False)
    assert shape.recomputes_last() == (macs <= 4096)
    for switch in ("1", "0"):
        monkeypatch.setenv("IMLSPIKE_RECOMPUTE_LAST_MAP", switch)
        assert shape.recomputes_last() == (switch == "1")
    monkeypatch.setenv("IMLSPIKE_RECOMPUTE_LAST_MAP", "yes")  # a typo is named, not ignored
    with pytest.raises(OptionError, match="IMLSPIKE_RECOMPUTE_LAST_MAP must be one of"):
        shape.recomputes_last()


def test_large_batches_get_chunks_of_at_least_eight_output_rows():
    """LibriSpeech's numel batches (conv2d6, 512 channels): 285 utterances of 300 frames
    fit one output row per 2^25-value map; chunks of 8 rows instead (26 rows of the first
    map), while AISHELL's batches of 32 keep the budget's 52-row chunks."""
    from espnet_imlspike.fast.subsampling import _Geometry

    conv2d6 = _Geometry(((3, 3), (5, 5)), ((2, 2), (3, 3)), (512, 512))
    chunks = conv2d6.chunks(285, 300, 80)
    assert [end - first for first, end, _, _ in chunks] == [8] * 6 + [1]
    assert chunks[0][3] - chunks[0][2] == 2 * 26 + 1  # input rows of 26 first-map rows
    conv2d = _Geometry(((3, 3), (3, 3)), ((2, 2), (2, 2)), (256, 256))
    assert {end - first for first, end, _, _ in conv2d.chunks(32, 1600, 80)[:-1]} == {52}


@pytest.mark.parametrize("name", ["conv2d", "conv2d6", "conv2d8"])
def test_chunks_cover_every_output_row_once_and_read_the_rows_it_needs(name):
    embed = layer(name)
    xs = torch.randn(2, 97, FREQ, dtype=torch.float64)
    with torch.no_grad():
        full = embed.conv(xs.unsqueeze(1))
        for budget, least in ((1, 1), (5_000, 1), (40_000, 1), (1, 8)):
            saved = subsampling.ELEMENTS_PER_CHUNK, subsampling.MIN_ROWS_PER_CHUNK
            subsampling.ELEMENTS_PER_CHUNK, subsampling.MIN_ROWS_PER_CHUNK = budget, least
            try:
                chunks = geometry(embed).chunks(2, 97, FREQ)
            finally:
                subsampling.ELEMENTS_PER_CHUNK, subsampling.MIN_ROWS_PER_CHUNK = saved
            assert all(end - first >= least for first, end, _, _ in chunks[:-1])
            assert [c[0] for c in chunks] == [0] + [c[1] for c in chunks[:-1]]
            assert chunks[-1][1] == full.size(2)
            for first, end, in_first, in_end in chunks:
                # the stock module on just these input rows gives just these output rows
                part = embed.conv(xs[:, in_first:in_end].unsqueeze(1))
                assert part.size(2) == end - first and in_end <= xs.size(1)
                torch.testing.assert_close(part, full[:, :, first:end], rtol=0, atol=1e-12)
                largest = max(t.numel() for t in _maps(embed, xs[:, in_first:in_end]))
                assert largest <= budget or end - first <= least


def _maps(embed, rows):
    h, maps = rows.unsqueeze(1), []
    for module in embed.conv:
        h = module(h)
        maps.append(h)
    return maps


def test_under_bf16_autocast_outputs_and_gradients_are_the_modules_to_rounding(monkeypatch,
                                                                              last_map):
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)
    embed = layer("conv2d", torch.float32)
    xs = torch.randn(2, 80, FREQ)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = embed(xs, None)
        with fast_mode("1"):
            out = subsampling.subsample(embed, xs)
    assert out.dtype == ref.dtype == torch.bfloat16
    # one bf16 rounding of the same float32 sums (accumulated in another order)
    torch.testing.assert_close(out, ref, rtol=2 ** -7, atol=1e-6)
    weight = torch.randn_like(ref, dtype=torch.float32)
    params = list(embed.parameters())
    for a, b in zip(grads(ref.float(), params, weight), grads(out.float(), params, weight)):
        assert b.dtype == a.dtype == torch.float32
        # bf16 partial sums per chunk: within a few bf16 roundings of the largest gradient
        torch.testing.assert_close(b, a, rtol=0, atol=2e-2 * a.abs().max().item())


def test_autograd_keeps_the_features_and_at_most_the_last_map(last_map):
    embed = layer("conv2d", torch.float32)
    xs = torch.randn(2, 101, FREQ)
    params = {p.untyped_storage().data_ptr() for p in embed.parameters()}

    def kept_bytes(chunked):
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fast_mode("1"):
            if chunked:
                subsampling.subsample(embed, xs)
            else:
                embed(xs, None)
        return sum(seen.values())

    first_map = 2 * CHANNELS * ((101 - 1) // 2) * ((FREQ - 1) // 2) * 4  # (B, C, T/2, F/2)
    flat = 2 * (((101 - 1) // 2 - 1) // 2) * CHANNELS * (((FREQ - 1) // 2 - 1) // 2) * 4
    # chunked: the features, and the last map unless backward recomputes it (as the rows
    # the output Linear reads: the bytes of ESPnet's flattening)
    assert kept_bytes(True) == xs.numel() * 4 + (0 if last_map else flat)
    # ESPnet's module: the first map and the flattened last map (the Linear's input) at least
    assert kept_bytes(False) >= first_map + flat


def chunked_params(embed):
    """The parameters the chunked layer takes: each convolution's, then the output Linear's."""
    linear, _ = subsampling._output_layers(embed)
    convs = subsampling._convolutions(embed)
    return [p for conv in convs for p in (conv.weight, conv.bias)] + [linear.weight, linear.bias]


def test_backward_holds_at_most_two_first_maps_of_a_chunk(monkeypatch, last_map):
    """The first layer's backward needs its map and the map's gradient (two first maps of a
    chunk); the ReLU's gradient is taken in place and nothing of a chunk outlives it, so
    the peak of the tensors backward creates stays under two first maps, plus the last
    map recomputed and its gradient, the chunk's input rows and output gradient, and the
    parameters' copies and gradients. Counted with the PyTorch operations (the CPU's path)."""
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 80_000)
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    embed = layer("conv2d", torch.float32)
    batch, frames = 4, 601
    xs = torch.randn(batch, frames, FREQ)
    shape = geometry(embed)
    chunks = shape.chunks(batch, frames, FREQ)
    assert len(chunks) > 2
    step = chunks[0][1] - chunks[0][0]
    in_rows, rows1, rows2 = shape.rows(step)
    freq1 = (FREQ - 3) // 2 + 1
    freq2 = (freq1 - 3) // 2 + 1
    first, second = (batch * CHANNELS * rows1 * freq1 * 4, batch * CHANNELS * rows2 * freq2 * 4)
    params = chunked_params(embed)
    bound = (2 * first + 2 * second + batch * in_rows * FREQ * 4 + batch * step * CHANNELS * 4
             + 4 * sum(p.numel() * 4 for p in params))
    out = chunked_input_layer.ChunkedInputLayer.apply(xs, shape, *params)
    grad = torch.randn_like(out)
    tracker = LiveBytes()
    with tracker:
        out.backward(grad)
    assert first > bound - 2 * first - second  # the bound tells two first maps from three
    assert 0 < tracker.peak <= bound, (tracker.peak, first, second, bound)


def test_a_non_finite_gradient_where_the_last_relu_is_off_stays_out_as_in_autograd(
        monkeypatch, last_map):
    """The last ReLU's backward is autograd's (``threshold_backward``): where the layer's
    output is 0, the incoming gradient is dropped, NaN or infinite included, so the weight
    gradients stay those of ESPnet's module under autograd (a product with the ReLU's mask
    turns NaN * 0 into NaN and poisons every weight gradient). Here a channel of the last
    map is off everywhere and the output Linear's weights that read it are huge: the
    forward is finite (they multiply zeros), the gradient reaching those zeros is not."""
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)
    monkeypatch.setattr(subsampling, "MIN_ROWS_PER_CHUNK", 1)
    embed = layer("conv2d")
    freq2 = ((FREQ - 3) // 2 + 1 - 3) // 2 + 1
    linear, _ = subsampling._output_layers(embed)
    with torch.no_grad():
        embed.conv[2].bias[0] = -1e6  # channel 0 of the last map: 0 everywhere
        linear.weight[:, :freq2] = 1e308  # the columns that read channel 0
    xs = torch.randn(2, 61, FREQ, dtype=torch.float64)
    params = chunked_params(embed)
    reference, _ = embed(xs, None)
    with fast_mode("1"):
        out = subsampling.subsample(embed, xs)
    assert reference.isfinite().all()
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-13 * reference.abs().max().item())
    grad = torch.randn_like(reference)
    assert not (grad.flatten(0, 1) @ linear.weight)[:, :freq2].isfinite().all()
    expected = torch.autograd.grad(reference, params, grad)
    got = torch.autograd.grad(out, params, grad)
    for a, b in zip(expected, got):
        assert a.isfinite().all()
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * a.abs().max().item())


def test_the_stock_module_runs_where_the_chunked_path_does_not_apply(monkeypatch):
    xs = torch.randn(2, 40, FREQ)
    embed = layer("conv2d", torch.float32)
    with fast_mode("1"):
        assert subsampling.applies(embed, xs)
        monkeypatch.setenv("IMLSPIKE_CHUNKED_INPUT", "0")
        assert not subsampling.applies(embed, xs)
        monkeypatch.delenv("IMLSPIKE_CHUNKED_INPUT")
        handle = embed.conv[0].register_forward_hook(lambda *a: None)  # energy counting
        assert not subsampling.applies(embed, xs)
        handle.remove()
        linear = torch.nn.Sequential(torch.nn.Linear(FREQ, CHANNELS))  # input_layer linear
        assert not subsampling.applies(linear, xs)
    with fast_mode("0"):
        assert not subsampling.applies(embed, xs)
    with fast_mode("auto"):
        assert not subsampling.applies(embed, xs)  # CPU tensors: off by default


def test_frozen_layers_get_no_gradient_and_the_others_the_modules(monkeypatch, last_map):
    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)
    # a recomputed layer, the last layer, every convolution (the output Linear alone
    # trains), the output Linear
    for frozen in ("conv.0", "conv.2", "conv.", "out.0"):
        embed = layer("conv2d")
        for name, p in embed.named_parameters():
            p.requires_grad_(not name.startswith(frozen))
        xs = torch.randn(2, 70, FREQ, dtype=torch.float64)
        trainable = [p for p in embed.parameters() if p.requires_grad]
        weight = torch.randn(2, 16, CHANNELS, dtype=torch.float64)
        ref = grads(embed(xs, None)[0], trainable, weight)
        with fast_mode("1"):
            out = subsampling.subsample(embed, xs)
        (out * weight).sum().backward()
        for a, p in zip(ref, trainable):
            torch.testing.assert_close(p.grad, a, rtol=0, atol=1e-12 * a.abs().max().item())
        assert all(p.grad is None for p in embed.parameters() if not p.requires_grad)


def test_encoder_training_with_the_chunked_input_layer_equals_the_stock_one(monkeypatch, last_map):
    import copy

    from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder

    monkeypatch.setattr(subsampling, "ELEMENTS_PER_CHUNK", 20_000)
    torch.manual_seed(0)
    stock = IMLSpikeformerEncoder(FREQ, output_size=32, attention_heads=4, linear_units=64,
                                  num_blocks=2).double()
    chunked = copy.deepcopy(stock)
    xs, lengths = torch.randn(3, 90, FREQ, dtype=torch.float64), torch.tensor([90, 71, 40])
    results = []
    for encoder, switch in ((stock, "0"), (chunked, "1")):
        monkeypatch.setenv("IMLSPIKE_CHUNKED_INPUT", switch)
        torch.manual_seed(1)  # the same dropout draws
        with fast_mode("1"):
            out, olens, _ = encoder(xs, lengths)
        (out * torch.linspace(-1, 1, out.size(-1), dtype=out.dtype)).sum().backward()
        results.append((out, olens, [p.grad for p in encoder.parameters()],
                        list(encoder.buffers())))
    (out_a, olens_a, grads_a, buffers_a), (out_b, olens_b, grads_b, buffers_b) = results
    assert torch.equal(olens_a, olens_b)
    torch.testing.assert_close(out_b, out_a, rtol=1e-10, atol=1e-10)
    scale = max(g.abs().max() for g in grads_a)
    assert max((a - b).abs().max() for a, b in zip(grads_a, grads_b)) <= 1e-10 * scale
    for a, b in zip(buffers_a, buffers_b):  # IMLS running statistics
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
