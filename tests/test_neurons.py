"""Spiking neurons against the paper's equations worked by hand."""

import math

import pytest
import torch

from espnet_imlspike.neurons import (
    InputAwareMultiLevelSpikeNeuron,
    MultiLevelSpikeNeuron,
    make_neuron,
    multi_level_fire,
)
from espnet_imlspike.neurons_multistep import MultiStepIFNeuron


def iterative_if_spike_count(v1: float, theta: float, steps: int) -> int:
    """Eq. 1-3 with beta = 1, input only at t = 1, counted in plain Python (Fig. 1a)."""
    potential, count = 0.0, 0
    for t in range(steps):
        potential += v1 if t == 0 else 0.0
        if potential >= theta:
            count += 1
            potential -= theta
    return count


def test_mls_equals_iterative_if_with_first_step_input():
    theta, steps = 0.7, 4
    values = [-1.0, 0.0, 0.3, 0.69, 0.7, 1.39, 1.41, 2.0, 2.75, 3.5, 10.0]
    neuron = MultiLevelSpikeNeuron(steps, theta)
    out = neuron(torch.tensor(values, dtype=torch.float64).view(1, -1, 1))
    expected = [iterative_if_spike_count(v, theta, steps) for v in values]
    assert out.view(-1).tolist() == expected


def test_mls_hand_values_eq7():
    # floor(clip(v / theta, 0, T)) with theta = 0.5, T = 6
    x = torch.tensor([[[-0.2], [0.49], [0.5], [0.51], [1.74], [2.9], [3.1], [99.0]]])
    out = MultiLevelSpikeNeuron(6, 0.5)(x).view(-1).tolist()
    assert out == [0, 0, 1, 1, 3, 5, 6, 6]


def test_ste_gradient_eq8():
    theta, steps = 0.5, 4
    v = torch.tensor([-0.1, 0.0, 0.3, 1.0, 1.7, 2.0, 2.1, 5.0], requires_grad=True)
    MultiLevelSpikeNeuron(steps, theta)(v.view(1, -1, 1)).sum().backward()
    # 1/theta on [0, theta*T] (boundaries included), 0 elsewhere
    expected = [0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0]
    assert v.grad.tolist() == pytest.approx(expected)


def test_multi_level_fire_outputs_integers_and_keeps_dtype():
    u = torch.linspace(-3, 9, 101, dtype=torch.bfloat16)
    s = multi_level_fire(u, 6)
    assert s.dtype == torch.bfloat16
    assert torch.equal(s, torch.floor(u.float().clamp(0, 6)).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
def test_multi_level_fire_without_gradient_gives_the_training_forwards_values(dtype):
    """Inference (no gradient) skips the straight-through construction: the values are
    those of the graph-building forward and of floor(clip(u, 0, T)) worked in float64,
    for values on both sides of every level, the bounds, large values, infinities, NaN."""
    generator = torch.Generator().manual_seed(0)
    levels = torch.arange(-1, 8, dtype=torch.float64)
    u = torch.cat([torch.randn(4000, generator=generator, dtype=torch.float64) * 4,
                   levels, levels - 1e-3, levels + 1e-3,
                   torch.tensor([-0.0, 1e30, -1e30, math.inf, -math.inf, math.nan],
                                dtype=torch.float64)]).to(dtype)
    original = u.clone()
    with torch.no_grad():
        inference = multi_level_fire(u, 6)
    training = multi_level_fire(u.clone().requires_grad_(), 6)
    assert training.requires_grad and not inference.requires_grad
    expected = torch.floor(u.double().clamp(0, 6)).to(dtype)
    assert torch.equal(inference.isnan(), expected.isnan())
    keep = ~expected.isnan()
    assert torch.equal(inference[keep], expected[keep])
    assert torch.equal(inference[keep], training.detach()[keep])
    assert inference.dtype == dtype
    torch.testing.assert_close(u, original, rtol=0, atol=0, equal_nan=True)  # input kept


def test_imls_threshold_from_valid_frames_only_eq10():
    torch.manual_seed(0)
    steps = 4
    neuron = InputAwareMultiLevelSpikeNeuron(3, steps, momentum=0.5).train()
    x = torch.rand(2, 5, 3)
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    x[0, 3:] = 1000.0  # padding that must not set the threshold
    out = neuron(x, valid)
    peak = torch.cat([x[0, :3], x[1]]).amax(0)
    expected = torch.floor((x / peak * steps).clamp(0, steps))
    assert torch.equal(out[valid], expected[valid])
    # the largest valid input of every channel fires exactly T spikes
    assert torch.equal(out[valid].amax(0), torch.full((3,), float(steps)))
    assert torch.allclose(neuron.running_max, peak)  # first batch initialises


def test_imls_running_average_eq11_and_eval_uses_it():
    neuron = InputAwareMultiLevelSpikeNeuron(2, 6, momentum=0.25).train()
    neuron(torch.tensor([[[2.0, 4.0]]]))
    neuron(torch.tensor([[[6.0, 0.5]]]))
    # (1 - 0.25) * [2, 4] + 0.25 * [6, 0.5]
    assert neuron.running_max.tolist() == pytest.approx([3.0, 3.125])
    assert int(neuron.num_batches_tracked) == 2
    neuron.eval()
    before = neuron.running_max.clone()
    out = neuron(torch.tensor([[[1.0, 1.0], [3.1, 100.0]]]))
    # eval threshold Lambda~ / T: floor(6 * x / Lambda~)
    assert out.view(-1).tolist() == [2, 1, 6, 6]
    assert torch.equal(neuron.running_max, before)


def test_imls_nonpositive_channels_and_all_padding_do_not_produce_nan():
    neuron = InputAwareMultiLevelSpikeNeuron(3, 4).train()
    x = torch.tensor([[[0.0, -1.0, 2.0], [0.0, -3.0, 1.0]]], requires_grad=True)
    out = neuron(x, torch.tensor([[True, True]]))
    assert out[..., :2].abs().sum() == 0 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    everything_padded = neuron(x, torch.tensor([[False, False]]))
    assert torch.isfinite(everything_padded).all()
    assert torch.isfinite(neuron.running_max).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_imls_under_autocast_stays_finite(dtype):
    neuron = InputAwareMultiLevelSpikeNeuron(8, 6).train()
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 10, 8) * 50
    with torch.autocast("cpu", dtype=dtype):
        out = neuron(layer(x), torch.ones(4, 10, dtype=torch.bool))
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 6


def test_multistep_if_with_first_step_input_matches_mls():
    theta, steps = 0.6, 5
    v1 = torch.tensor([-0.5, 0.1, 0.6, 1.3, 2.5, 2.99, 7.0])
    inputs = torch.zeros(steps, 1, v1.numel(), 1)
    inputs[0, 0, :, 0] = v1
    spikes = MultiStepIFNeuron(steps, theta, leak=1.0)(inputs.flatten(0, 1))
    counts = spikes.view(steps, -1).sum(0)
    mls = MultiLevelSpikeNeuron(steps, theta)(v1.view(1, -1, 1)).view(-1)
    assert torch.equal(counts, mls)
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}


def test_multistep_lif_dynamics_eq1_to_3():
    # beta = 0.5, theta = 1, constant input 0.8: hand-worked potentials
    # t1: v=0.8 no spike; t2: v=0.4+0.8=1.2 spike -> 0.2; t3: v=0.1+0.8=0.9 no;
    # t4: v=0.45+0.8=1.25 spike -> 0.25
    neuron = MultiStepIFNeuron(4, 1.0, leak=0.5)
    spikes = neuron(torch.full((4, 1, 1), 0.8))
    assert spikes.view(-1).tolist() == [0.0, 1.0, 0.0, 1.0]


def test_multistep_surrogate_gradient_is_arctan():
    alpha = 2.0
    neuron = MultiStepIFNeuron(1, 1.0, surrogate_alpha=alpha)
    x = torch.tensor([[[0.5], [1.0], [1.5]]], requires_grad=True)
    neuron(x).sum().backward()
    expected = [
        alpha / 2 / (1 + (math.pi / 2 * alpha * (v - 1.0)) ** 2) for v in (0.5, 1.0, 1.5)
    ]
    assert x.grad.view(-1).tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(firing="lif"), "firing"),
        (dict(firing="mls", timesteps=0), "timesteps"),
        (dict(firing="imls", momentum=0.0), "momentum"),
        (dict(firing="mls", threshold=0.0), "threshold"),
        (dict(firing="multistep", leak=1.5), "leak"),
    ],
)
def test_bad_neuron_options_name_the_option(kwargs, option):
    args = dict(firing="imls", channels=4, timesteps=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=option):
        make_neuron(**args)
