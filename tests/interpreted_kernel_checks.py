"""The IMLS Triton kernels against the PyTorch operations they replace (Eq. 7, 8, 10, 11).

Collected only by ``test_triton_kernels.py``, which runs this file (and the fast-path
tests) in a subprocess where the kernels execute in Triton's CPU interpreter.
"""

import copy

import pytest
import torch

from espnet_imlspike.fast import kernels
from espnet_imlspike.fast.firing import _input_grad, fire_with_mask
from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_the_interpreter_runs_the_kernels():
    assert kernels.available(torch.zeros(1), 6)
    assert not kernels.available(torch.zeros(1, dtype=torch.float64), 6)
    assert not kernels.available(torch.zeros(1), kernels.MAX_TIMESTEPS + 1)


def edgy_input(shape, dtype, seed=0):
    """Random inputs with the edges of Eq. 7-8: NaN, +-inf, zero, -0, negatives."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 3
    flat = x.view(-1)
    flat[:6] = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -7.0])
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("timesteps", [1, 6, 127])
def test_fire_equals_the_pytorch_firing_and_its_backward(dtype, timesteps):
    x = edgy_input((3, 41, 37), dtype)
    peak = torch.rand(37) * 4 + 0.5
    peak[0] = float("inf")  # a silent channel, as eval_threshold gives
    peak[1] = x[..., 1].float().nan_to_num(neginf=0, posinf=0).max()  # the max fires T
    spikes_ref, inside_ref = fire_with_mask(x, peak, timesteps)
    spikes, code = kernels.fire(x, peak, timesteps, with_code=True)
    assert spikes.dtype == x.dtype
    assert torch.equal(spikes.nan_to_num(-1), spikes_ref.nan_to_num(-1))
    assert torch.equal(code >= kernels.INSIDE_BIT, inside_ref)
    counts = code & (kernels.INSIDE_BIT - 1)
    finite = ~spikes_ref.isnan()
    assert torch.equal(counts[finite], spikes_ref[finite].to(torch.uint8))
    assert (counts[~finite] == 0).all()
    assert int(counts.max()) == timesteps
    # spikes written directly in the dtype the next layer computes in
    half, _ = kernels.fire(x, peak, timesteps, spike_dtype=torch.bfloat16)
    assert torch.equal(half.nan_to_num(-1), spikes_ref.to(torch.bfloat16).nan_to_num(-1))
    # backward: Eq. 8 through x / Lambda, with the reference's roundings
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    grad_x, as_float = kernels.fire_backward(grad, code, peak, timesteps, dtype, torch.float32)
    expected = _input_grad(grad.to(dtype), inside_ref, peak, timesteps, dtype)
    assert grad_x.dtype == dtype and torch.equal(grad_x, expected)
    assert torch.equal(as_float[finite], spikes_ref[finite].float())


@pytest.mark.parametrize("dtype", DTYPES)
def test_fire_from_the_running_statistic_equals_the_eval_threshold(dtype):
    neuron = InputAwareMultiLevelSpikeNeuron(7, timesteps=6).eval()
    eps = neuron.eps
    neuron.running_max.copy_(torch.tensor([0.0, eps, eps * 1.5, 0.3, 2.0, 5.0, -1.0]))
    neuron.num_batches_tracked.fill_(3)
    x = edgy_input((4, 9, 7), dtype, seed=2)
    expected, _ = fire_with_mask(x, neuron.eval_threshold(), 6)
    spikes, _ = kernels.fire(x, neuron.running_max, 6, running_eps=eps)
    assert torch.equal(spikes.nan_to_num(-1), expected.nan_to_num(-1))
    assert (spikes[..., [0, 1, 6]].nan_to_num(0) == 0).all()  # silent channels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels,rows", [(37, 50), (200, 700), (1500, 20)])
@pytest.mark.parametrize("momentum", [0.1, 0.7])
def test_threshold_and_statistics_equal_the_neuron_methods(dtype, channels, rows, momentum):
    """Several programs per dimension (rows > 256, channels > 128, > 1024), the
    running average's two lerp forms, a skipped non-finite batch, padded rows."""
    reference = InputAwareMultiLevelSpikeNeuron(channels, 6, momentum=momentum)
    buffers = copy.deepcopy(reference)
    for step in range(4):
        x = torch.randn(2, rows, channels, generator=torch.Generator().manual_seed(step))
        x = (x * (step + 1)).to(dtype)
        valid = torch.ones(2, rows, dtype=torch.bool)
        valid[1, rows // 3:] = False
        x[1, rows // 3:] = 1e4  # padding larger than any valid frame: must not count
        x[:, :, 0] = -1.0  # a channel that never fires: floored at eps
        if step == 2:
            x[0, 1, 2] = float("nan")  # statistics skip this batch
        peak_ref = reference.batch_max(x, valid)
        reference.update_statistics(peak_ref)
        partials = kernels.partial_max(x, valid)
        peak = kernels.finish_threshold(partials, buffers.eps, buffers.running_max,
                                        buffers.num_batches_tracked, momentum)
        assert torch.equal(peak, peak_ref)
        assert torch.equal(buffers.running_max, reference.running_max)
        assert torch.equal(buffers.num_batches_tracked, reference.num_batches_tracked)
    assert int(reference.num_batches_tracked) == 3
    # without buffers: the threshold only (the multi-GPU path all-reduces it first)
    before = buffers.running_max.clone()
    assert torch.equal(kernels.finish_threshold(partials, buffers.eps, None, None), peak)
    assert torch.equal(buffers.running_max, before)


def test_no_valid_frame_gives_eps_and_no_mask_means_all_valid():
    x = torch.randn(2, 9, 5)
    none_valid = torch.zeros(2, 9, dtype=torch.bool)
    peak = kernels.finish_threshold(kernels.partial_max(x, none_valid), 1e-6, None, None)
    assert torch.equal(peak, torch.full((5,), 1e-6))
    peak = kernels.finish_threshold(kernels.partial_max(x, None), 1e-6, None, None)
    assert torch.equal(peak, x.reshape(-1, 5).amax(0))


def test_empty_inputs_launch_nothing():
    x = torch.zeros(0, 4, 5)
    spikes, code = kernels.fire(x, torch.ones(5), 6, with_code=True)
    assert spikes.shape == code.shape == x.shape
    grad_x, counts = kernels.fire_backward(x, code, torch.ones(5), 6, x.dtype, x.dtype)
    assert grad_x.shape == counts.shape == x.shape
    peak = kernels.finish_threshold(kernels.partial_max(x, None), 1e-6, None, None)
    assert torch.equal(peak, torch.full((5,), 1e-6))


def test_a_failing_tool_chain_falls_back_with_a_warning(monkeypatch, caplog):
    device = torch.device("cpu")
    assert kernels.kernels_work(device)  # the interpreter runs the probe kernel
    monkeypatch.setattr(kernels, "_working", {})

    def broken(*args, **kwargs):
        raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(kernels, "fire", broken)
    assert not kernels.kernels_work(device)
    assert "Failed to find C compiler" in caplog.text and "PyTorch operations" in caplog.text
    assert not kernels.kernels_work(device)  # tried once
