"""``torch.compile`` of the encoder in inference calls its blocks as one operator,
``imlspike::encoder_blocks`` (espnet_imlspike.fast.compiled_blocks), which compiles them
itself and replays them as CUDA graphs. On the CPU (no graphs) ``IMLSPIKE_COMPILED_GRAPHS=1``
turns it on: the operator then runs the compiled blocks alone. Most tests compile with
backends that run the traced code as traced (the outer one recording its graphs), so the
operator's output is the eager encoder's bit for bit; one uses the default compiler, as a
user does. The GPU check (graphs) is ``bench/fast_checks.py --parts compiled_blocks``."""

import copy
import gc

import pytest
import torch
from helpers import CompilerRecorder

from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.errors import OptionError
from espnet_imlspike.fast import compiled_blocks

OPERATOR = torch.ops.imlspike.encoder_blocks.default


def encoder(seed=0, **options):
    torch.manual_seed(seed)
    enc = IMLSpikeformerEncoder(40, output_size=32, attention_heads=2, linear_units=48,
                                num_blocks=2, **options)
    xs, lengths = batch()
    with torch.no_grad():
        enc.train()(xs, lengths)  # calibrate the IMLS statistics
    return enc.eval()


def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 90, 40, generator=generator), torch.tensor([90, 61, 30])


@pytest.fixture(autouse=True)
def operator_on(monkeypatch):
    """The operator on (the CPU has no graphs), its inner compiler running code as traced."""
    monkeypatch.setenv("IMLSPIKE_COMPILED_GRAPHS", "1")
    monkeypatch.setattr(compiled_blocks, "_compiled_core",
                        torch.compile(compiled_blocks._core, backend="eager"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_compiled_inference_calls_the_blocks_as_one_operator(autocast):
    enc, (xs, lengths) = encoder(), batch()
    recorder = CompilerRecorder()
    compiled = torch.compile(enc, backend=recorder, fullgraph=True)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out, olens, _ = compiled(xs, lengths)
        eager, eager_olens, _ = enc(xs, lengths)
    targets = recorder.targets()
    assert targets.count(OPERATOR) == 1
    # the blocks are not in the caller's graph: its one Linear is the input layer's
    assert targets.count(torch._C._nn.linear) == 1
    assert out.dtype == eager.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(out, eager) and torch.equal(olens, eager_olens)


def test_inference_mode_is_served_too():
    """``torch.inference_mode()`` (no gradient): the operator's thread reads its tensors."""
    enc, (xs, lengths) = encoder(), batch()
    recorder = CompilerRecorder()
    with torch.inference_mode():
        out = torch.compile(enc, backend=recorder, fullgraph=True)(xs, lengths)[0]
        eager = enc(xs, lengths)[0]
    assert OPERATOR in recorder.targets() and torch.equal(out, eager)


def test_the_default_compiler_matches_the_eager_encoder():
    """The user's path: ``torch.compile(encoder)`` with the default compiler, inside and out."""
    enc, (xs, lengths) = encoder(), batch()
    inner = torch.compile(compiled_blocks._core)
    compiled_blocks._compiled_core, saved = inner, compiled_blocks._compiled_core
    try:
        with torch.no_grad():
            out, olens, _ = torch.compile(enc)(xs, lengths)
            eager, _, _ = enc(xs, lengths)
    finally:
        compiled_blocks._compiled_core = saved
    valid = torch.arange(out.size(1))[None] < olens[:, None]
    torch.testing.assert_close(out[valid], eager[valid], rtol=0,
                               atol=1e-5 * eager.abs().max().item())


@pytest.mark.parametrize("case", ["gradients", "training", "switched_off"])
def test_the_blocks_are_traced_where_the_operator_does_not_apply(case, monkeypatch):
    enc, (xs, lengths) = encoder(), batch()
    if case == "training":
        enc.train()
    if case == "switched_off":
        monkeypatch.setenv("IMLSPIKE_COMPILED_GRAPHS", "0")
    recorder = CompilerRecorder()
    with torch.set_grad_enabled(case == "gradients"):
        torch.compile(enc, backend=recorder, fullgraph=True)(xs, lengths)
    targets = recorder.targets()
    assert OPERATOR not in targets
    assert targets.count(torch._C._nn.linear) > 1  # the blocks' projections traced


def test_a_bad_switch_is_named(monkeypatch):
    enc, (xs, lengths) = encoder(), batch()
    monkeypatch.setenv("IMLSPIKE_COMPILED_GRAPHS", "yes")
    with pytest.raises(OptionError, match="IMLSPIKE_COMPILED_GRAPHS must be one of"):
        with torch.no_grad():
            enc(xs, lengths)
    with pytest.raises(Exception, match="IMLSPIKE_COMPILED_GRAPHS must be one of"):
        with torch.no_grad():
            torch.compile(enc, backend="eager")(xs, lengths)


def test_a_copy_runs_its_own_weights():
    """The operator finds its encoder by identity: a copy whose weights then change runs
    those weights, not the original's."""
    enc, (xs, lengths) = encoder(), batch()
    twin = copy.deepcopy(enc)
    with torch.no_grad():
        for p in twin.encoders.parameters():
            p.mul_(1.5)
        original = torch.compile(enc, backend="eager")(xs, lengths)[0]
        copied = torch.compile(twin, backend="eager")(xs, lengths)[0]
        assert torch.equal(original, enc(xs, lengths)[0])
        assert torch.equal(copied, twin(xs, lengths)[0])
    assert not torch.equal(original, copied)


def test_the_registry_forgets_a_dead_encoder():
    enc = encoder()
    key = id(enc)
    assert compiled_blocks._encoders[key]() is enc
    del enc
    gc.collect()
    assert key not in compiled_blocks._encoders and key not in compiled_blocks._graphs
    with pytest.raises(RuntimeError, match="no live encoder"):
        compiled_blocks._encoder(key)


def test_the_operator_passes_torch_library_checks():
    """Schema, shape function (the output dtype probe) against the real output, and the
    operator's registrations (``torch.library.opcheck``), with and without autocast."""
    enc, (xs, lengths) = encoder(), batch()
    embedded, olens, _ = enc.embed_input(xs, lengths)
    for dtype in (None, torch.bfloat16):
        inputs = embedded.to(dtype) if dtype else embedded
        torch.library.opcheck(OPERATOR, (inputs.detach(), olens, id(enc), 4, dtype),
                              test_utils=("test_schema", "test_faketensor"))
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
            expected = enc._graph_core(inputs, olens).dtype
        assert compiled_blocks.output_dtype(id(enc), inputs, dtype) == expected
    # the compiler's own CUDA graphs (mode="reduce-overhead") leave the operator out
    assert torch.Tag.cudagraph_unsafe in OPERATOR.tags
