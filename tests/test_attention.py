"""HD-RepSSA (Eq. 12-15) and SDSA-3 (Eq. 5) against explicit per-element computations."""

import math

import numpy as np
import pytest
import torch

from espnet_imlspike.attention import (
    SDSA3,
    HDRepSSA,
    split_heads,
    decay_factor,
    hierarchical_decay_mask,
    make_attention,
)
from espnet_imlspike.neurons import MultiLevelSpikeNeuron

T, THETA = 4, 0.25


def mls_neuron():
    return MultiLevelSpikeNeuron(T, THETA)


def mls(values: np.ndarray) -> np.ndarray:
    return np.floor(np.clip(values / THETA, 0, T))


def weights(linear: torch.nn.Linear):
    return linear.weight.detach().numpy().T, linear.bias.detach().numpy()


def test_decay_factor_and_mask_eq14():
    assert decay_factor(1) == 1 - 2**-6 == 0.984375
    assert decay_factor(12) == 1 - 2**-17
    mask = hierarchical_decay_mask(4, 0.5, dtype=torch.float64)
    expected = [[0.5 ** abs(i - j) for j in range(4)] for i in range(4)]
    assert torch.allclose(mask, torch.tensor(expected, dtype=torch.float64))


def reference_repssa(module, x, valid, variant, phi):
    """Eq. 12-15 computed per head and per element with numpy."""
    wq, bq = weights(module.linear_q)
    wk, bk = weights(module.linear_k)
    wv, bv = weights(module.linear_v)
    wo, bo = weights(module.linear_out)
    n, length, dim = x.shape
    heads, d_k = module.heads, dim // module.heads
    out = np.zeros((n, length, dim))
    for b in range(n):
        xb = x[b]
        q, k = xb @ wq + bq, xb @ wk + bk
        v_s = mls(xb @ wv + bv)
        context = np.zeros((length, dim))
        for h in range(heads):
            cols = slice(h * d_k, (h + 1) * d_k)
            a = q[:, cols] @ k[:, cols].T  # Eq. 12, training branch
            if phi is not None:
                for i in range(length):
                    for j in range(length):
                        a[i, j] *= phi ** abs(i - j)  # Eq. 14-15
            keys = valid[b]
            if variant == "softmax":
                s = a / math.sqrt(d_k)
                s = np.where(keys[None, :], s, -np.inf)
                w = np.exp(s - s.max(axis=1, keepdims=True))
                w = w / w.sum(axis=1, keepdims=True)
            else:
                w = np.where(keys[None, :], a, 0.0)
            context[:, cols] = w @ v_s[:, cols]
        out[b] = mls(context) @ wo + bo  # Eq. 13
    return out


@pytest.mark.parametrize("variant", ["softmax", "linear"])
@pytest.mark.parametrize("phi", [None, 0.7])
def test_hd_repssa_matches_equations(variant, phi):
    torch.manual_seed(0)
    module = HDRepSSA(8, 2, mls_neuron, variant, phi).double().eval()
    x = torch.randint(0, T + 1, (2, 5, 8)).double()  # multi-level spike input
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out = module(x, valid).detach().numpy()
    expected = reference_repssa(module, x.numpy(), valid.numpy(), variant, phi)
    rows = valid.numpy()
    assert np.allclose(out[rows], expected[rows], atol=1e-9)


@pytest.mark.parametrize("variant", ["softmax", "linear"])
def test_padded_keys_never_influence_valid_outputs(variant):
    torch.manual_seed(1)
    module = HDRepSSA(8, 2, mls_neuron, variant, 0.9).double().eval()
    x = torch.randint(0, T + 1, (1, 6, 8)).double()
    valid = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    other = x.clone()
    other[:, 4:] = torch.randint(0, T + 1, (1, 2, 8)).double() + 3
    a = module(x, valid)[:, :4]
    b = module(other, valid)[:, :4]
    assert torch.equal(a, b)


def test_sdsa3_matches_eq5():
    torch.manual_seed(2)
    scale = 0.5
    module = SDSA3(8, 2, mls_neuron, scale).double().eval()
    x = torch.randint(0, 2, (1, 5, 8)).double()
    valid = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    out = module(x, valid).detach().numpy()[0]
    xb = x.numpy()[0]
    q_s = mls(xb @ weights(module.linear_q)[0] + weights(module.linear_q)[1])
    k_s = mls(xb @ weights(module.linear_k)[0] + weights(module.linear_k)[1])
    v_s = mls(xb @ weights(module.linear_v)[0] + weights(module.linear_v)[1])
    k_s[4] = 0.0  # padded key
    context = np.zeros((5, 8))
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        context[:, cols] = scale * (q_s[:, cols] @ k_s[:, cols].T) @ v_s[:, cols]
    wo, bo = weights(module.linear_out)
    expected = mls(context) @ wo + bo
    assert np.allclose(out[:4], expected[:4], atol=1e-9)


def test_make_attention_names_and_decay_layers():
    hd = make_attention("hd_repssa_linear", 8, 2, mls_neuron, layer=3)
    assert isinstance(hd, HDRepSSA) and hd.variant == "linear"
    assert hd.decay == 1 - 2**-8
    plain = make_attention("repssa_softmax", 8, 2, mls_neuron, layer=3)
    assert plain.decay is None and plain.variant == "softmax"
    assert isinstance(make_attention("sdsa3", 8, 2, mls_neuron, layer=1), SDSA3)
    with pytest.raises(ValueError, match="attention"):
        make_attention("softmax", 8, 2, mls_neuron, layer=1)
    with pytest.raises(ValueError, match="attention_heads=3"):
        make_attention("hd_repssa_softmax", 8, 3, mls_neuron, layer=1)


@pytest.mark.parametrize("phi", [None, 0.9])
def test_fused_flex_attention_context_equals_the_explicit_map(phi):
    """The FlexAttention path (used when compiling on CUDA) computes the same context."""
    torch.manual_seed(3)
    module = HDRepSSA(8, 2, mls_neuron, "softmax", phi).eval()
    x = torch.randint(0, T + 1, (2, 9, 8)).float()
    valid = torch.tensor([[1] * 9, [1] * 6 + [0] * 3], dtype=torch.bool)
    with torch.no_grad():
        values = split_heads(module.value_neuron(module.linear_v(x), valid), 2)
        explicit = module.attention_map(x, valid) @ values
        fused = module.fused_softmax_context(*module._queries_keys(x), valid, values)
    rows = valid[:, None, :, None].expand_as(fused)
    assert torch.allclose(fused[rows], explicit[rows], atol=1e-5)
    module.fused_attention = True
    with torch.no_grad():
        forced = module(x, valid)
    module.fused_attention = False
    with torch.no_grad():
        plain = module(x, valid)
    assert torch.allclose(forced[valid], plain[valid], atol=1e-5)
