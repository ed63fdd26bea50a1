"""The baselines' neurons (LIF, GSU, IHC-LIF) against hand-worked equations, the
Spiking-LEAF filter bank and its rate regulariser."""

import math

import pytest
import torch

from espnet_imlspike.errors import InputError, OptionError
from espnet_imlspike.frontends.learnable_filterbank import GaborFilterbank
from espnet_imlspike.frontends.spiking_leaf import SpikingLeafFrontend, rate_loss
from espnet_imlspike.neurons import SpikingNeuron
from espnet_imlspike.neurons_ihc import IHCLIFNeuron
from espnet_imlspike.neurons_recurrent import GatedSpikingUnit, LIFNeuron


def frames(*values):
    """(1, L, C) tensor from per-frame lists of channel values."""
    return torch.tensor([list(v) for v in values], dtype=torch.float64).unsqueeze(0)


# ------------------------------------------------------------------------ LIF


def test_lif_follows_bittar_garner_equations_by_hand():
    # alpha 0.5, theta 1: u = 0.5 (u - s) + 0.5 I, s = [u > 1]
    # I = 4: u = 2 -> s 1;  I = 0: u = 0.5 (2 - 1) = 0.5 -> 0;
    # I = 4: u = 0.25 + 2 = 2.25 -> 1;  I = 4: u = 0.5 (1.25) + 2 = 2.625 -> 1;
    # I = 2: u = 0.5 (1.625) + 1 = 1.8125 -> 1;  I = 0: u = 0.40625 -> 0
    neuron = LIFNeuron(1, decay=0.5, threshold=1.0).double()
    out = neuron(frames([4], [0], [4], [4], [2], [0]))
    assert out.flatten().tolist() == [1, 0, 1, 1, 1, 0]
    assert isinstance(neuron, SpikingNeuron)
    assert neuron.timesteps == 1 and neuron.multistep is False


def test_lif_fires_only_above_threshold_and_boxcar_gradient():
    neuron = LIFNeuron(3, decay=0.5, threshold=1.0).double()
    x = frames([2.0, 2.4, 4.0]).requires_grad_()  # u = 1.0, 1.2, 2.0
    out = neuron(x)
    assert out.flatten().tolist() == [0, 1, 1]  # u == theta does not fire
    out.sum().backward()
    # ds/dx = (1 - alpha) * [-0.5 < u - theta <= 0.5]
    assert x.grad.flatten().tolist() == [0.5, 0.5, 0.0]


def test_recurrent_lif_adds_its_previous_spikes_through_v():
    neuron = LIFNeuron(2, decay=0.5, threshold=1.0, recurrent=True).double()
    with torch.no_grad():
        neuron.recurrent.weight.copy_(torch.tensor([[0.0, 3.0], [0.0, 0.0]]))
    # t0: u = (1, 2.4) -> s = (0, 1)
    # t1: I = (0 + 3 * 1, 0); u0 = 0.5 * 1 + 1.5 = 2 -> 1; u1 = 0.5 (2.4 - 1) = 0.7 -> 0
    out = neuron(frames([2.0, 4.8], [0.0, 0.0]))
    assert out[0].tolist() == [[0, 1], [1, 0]]


def test_lif_padding_is_silent_and_does_not_change_valid_frames():
    torch.manual_seed(0)
    neuron = LIFNeuron(4, decay=0.8, recurrent=True)
    x = torch.rand(1, 6, 4) * 3
    padded = torch.cat([x, torch.rand(1, 3, 4) * 3], dim=1)
    valid = torch.tensor([[True] * 6 + [False] * 3])
    alone, batch = neuron(x), neuron(padded, valid)
    assert torch.equal(batch[:, :6], alone)
    assert batch[:, 6:].abs().sum() == 0


def test_lif_rejects_bad_options():
    with pytest.raises(OptionError, match="decay"):
        LIFNeuron(2, decay=1.0)
    with pytest.raises(OptionError, match="threshold"):
        LIFNeuron(2, threshold=0.0)


# ------------------------------------------------------------------------ GSU


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_gsu_follows_the_gated_membrane_equations_by_hand():
    unit = GatedSpikingUnit(1).double()
    with torch.no_grad():
        unit.recurrent.weight.copy_(torch.tensor([[1.0], [-2.0]]))  # W_hh: gate, cell
    x = frames([0.0, 1.0], [0.0, 0.5], [2.0, -0.5])  # (gate, cell) pre-activations
    out = unit(x).flatten().tolist()
    # t0: f = sig(0) = .5, c = .5 * 0 + .5 * 1 = .5 -> s = 1
    # t1: g = 0 + 1, c~ = 0.5 - 2 = -1.5; f = sig(1); c = f .5 + (1 - f)(-1.5)
    f1 = sigmoid(1.0)
    c1 = f1 * 0.5 + (1 - f1) * -1.5
    # t2: s1 = [c1 >= 0]; g = 2 + s1, c~ = -0.5 - 2 s1
    s1 = float(c1 >= 0)
    f2 = sigmoid(2.0 + s1)
    c2 = f2 * c1 + (1 - f2) * (-0.5 - 2 * s1)
    assert out == [1.0, s1, float(c2 >= 0)]
    assert (c1 >= 0) is False  # the recurrent inhibition silences the unit at t1


def test_gsu_triangle_surrogate_gradient():
    unit = GatedSpikingUnit(2).double()
    with torch.no_grad():
        unit.recurrent.weight.zero_()
    # f = sig(0) = 0.5 -> c = 0.5 * cell input; c = 0.3 and 1.5
    x = frames([0.0, 0.0, 0.6, 3.0]).requires_grad_()
    unit(x).sum().backward()
    # ds/dc = max(0, 1 - |c|), dc/dcell = 0.5; dc/dgate = f(1-f)(c_prev - cell) = -0.25 cell
    grad = x.grad.flatten().tolist()
    assert grad[2:] == pytest.approx([0.5 * 0.7, 0.0])
    assert grad[:2] == pytest.approx([0.7 * -0.25 * 0.6, 0.0])


def test_gsu_checks_its_input_width_and_norm_option():
    with pytest.raises(InputError, match="expects input width 6, got 4"):
        GatedSpikingUnit(3)(torch.zeros(1, 2, 4))
    with pytest.raises(OptionError, match="membrane_norm"):
        GatedSpikingUnit(3, membrane_norm="batchnorm")


# -------------------------------------------------------------------- IHC-LIF


def test_ihc_lif_two_compartments_and_lateral_feedback_by_hand():
    neuron = IHCLIFNeuron(2, threshold=1.0, dendrite_reset=0.5).double()
    with torch.no_grad():  # a_d, a_s, b_d, b_s of both channels
        neuron.dynamics.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5])[:, None].logit().repeat(1, 2))
        neuron.lateral.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    out = neuron(frames([4.0, 1.0], [0.0, 0.0]))
    # t0: d = (4, 1); s_om = 0.5 d = (2, 0.5) -> s = (1, 0)
    # t1: d0 = .5*4 - .5*2 + 0 - .5*1 = 0.5; s_om0 = .5*2 + .5*.5 - 1 = 0.25 -> 0
    #     d1 = .5*1 - .5*.5 + 0 + 2*1 (lateral from channel 0) = 2.25;
    #     s_om1 = .5*.5 + .5*2.25 = 1.375 -> 1
    assert out[0].tolist() == [[1, 0], [0, 1]]


def test_ihc_lif_without_lateral_is_tc_lif_like_and_options_checked():
    neuron = IHCLIFNeuron(3, lateral=False)
    assert neuron.lateral is None
    coeffs = neuron.coefficients()
    assert coeffs.shape == (4, 3)
    assert coeffs[:, 0].tolist() == pytest.approx([0.9, 0.5, 0.5, 0.5])
    with pytest.raises(OptionError, match="soma_decay"):
        IHCLIFNeuron(3, soma_decay=1.0)


# ----------------------------------------------------------- Spiking-LEAF front


def test_gabor_filters_start_on_the_mel_scale_and_select_their_band():
    bank = GaborFilterbank(n_filters=20, window_length=401, hop_length=160)
    centres_hz = bank.center.detach() * 16000 / (2 * math.pi)
    mel = 2595 * torch.log10(1 + centres_hz / 700)
    steps = mel[1:] - mel[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)
    # a pure tone at channel 10's centre excites channel 10 most
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * float(centres_hz[10]) * t).unsqueeze(0)
    energy = bank(tone)
    assert energy.shape == (1, 100, 20)
    assert int(energy[0, 20:80].mean(0).argmax()) == 10


def test_rate_regulariser_gradient_equals_adding_it_to_the_loss():
    """Injected through backward, lambda L_SR acts as if added to the task loss."""
    torch.manual_seed(0)
    wave = torch.randn(2, 4000) * 0.1
    lengths = torch.tensor([4000, 3000])

    def grads(front, add_penalty):
        front.train()
        front.zero_grad()
        spikes, olens = front(wave, lengths)
        loss = (spikes * torch.linspace(-1, 1, spikes.size(-1))).sum()
        if add_penalty:  # L + lambda ReLU(R - R_target), written out
            valid = torch.arange(spikes.size(1))[None] < olens[:, None]
            loss = loss + 0.7 * rate_loss(spikes, valid, 0.0)[1]
        loss.backward()
        return {n: p.grad.clone() for n, p in front.named_parameters()}

    torch.manual_seed(1)
    injected = SpikingLeafFrontend(n_filters=8, window_length=101, rate_target=0.0,
                                   rate_weight=0.7)
    explicit = SpikingLeafFrontend(n_filters=8, window_length=101, rate_target=0.0,
                                   rate_weight=0.0)
    explicit.load_state_dict(injected.state_dict())
    a, b = grads(injected, False), grads(explicit, True)
    assert float(injected.last_rate_loss) > 0  # the penalty is active (target 0)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name
    # and the penalty does change the gradient (it is not a no-op)
    plain = grads(explicit, False)
    assert any(not torch.allclose(a[n], plain[n]) for n in a)


def test_spiking_leaf_output_lengths_and_padding():
    front = SpikingLeafFrontend(n_filters=8, window_length=101).eval()
    wave = torch.randn(2, 1600) * 0.1
    spikes, lengths = front(wave, torch.tensor([1600, 800]))
    assert spikes.shape == (2, 10, 8) and lengths.tolist() == [10, 5]
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert spikes[1, 5:].abs().sum() == 0
    with pytest.raises(InputError, match="single-channel"):
        front(torch.zeros(1, 2, 100), torch.tensor([100]))
