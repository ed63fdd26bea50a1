"""The iterative multi-timestep IF/LIF neuron (Eq. 1-3): the baseline firing.

Used by the Spike-driven Transformer baseline and the "IMLS -> multi-timestep" ablation
(``firing: multistep``); trained with backpropagation through time and the arctan
surrogate gradient of SpikingJelly's ``ATan``.
"""

import math
from typing import Optional

import torch
from typeguard import typechecked

from espnet_imlspike.errors import OptionError
from espnet_imlspike.neurons import SpikingNeuron, check_threshold, check_timesteps


class _AtanHeaviside(torch.autograd.Function):
    """Heaviside step with the arctan surrogate gradient (as in SpikingJelly's ATan)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow(2))
        return grad_output * grad, None


class MultiStepIFNeuron(SpikingNeuron):
    """Iterative T-step IF/LIF neuron with soft reset (Eq. 1-3), for BPTT training.

    The input holds T time steps folded into the leading dimension, ``(T * B, L, C)``
    with time outermost. Each step integrates ``v[t] = beta v[t-1] + x[t]``, fires the
    binary spike ``s[t] = H(v[t] - theta)`` and subtracts ``theta s[t]``. The Heaviside
    step is trained with the arctan surrogate gradient.

    Args:
        timesteps: T, the number of simulated steps.
        threshold: Firing threshold theta (> 0).
        leak: beta in [0, 1]; 1 gives the IF neuron, < 1 the LIF neuron.
        surrogate_alpha: Sharpness of the arctan surrogate gradient (>= 0).
    """

    multistep = True

    @typechecked
    def __init__(
        self,
        timesteps: int,
        threshold: float = 1.0,
        leak: float = 1.0,
        surrogate_alpha: float = 2.0,
    ):
        super().__init__()
        check_timesteps(timesteps)
        check_threshold(threshold)
        if not 0.0 <= leak <= 1.0:
            raise OptionError(f"leak must be in [0, 1], got {leak}")
        if not surrogate_alpha >= 0:
            raise OptionError(f"surrogate_alpha must be >= 0, got {surrogate_alpha}")
        self.timesteps = timesteps
        self.threshold = threshold
        self.leak = leak
        self.surrogate_alpha = surrogate_alpha

    def extra_repr(self) -> str:
        return (
            f"timesteps={self.timesteps}, threshold={self.threshold}, "
            f"leak={self.leak}"
        )

    def forward(
        self, x: torch.Tensor, valid: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Run the neuron over its T steps.

        Args:
            x: Pre-synaptic input (T * B, L, C), time outermost.
            valid: Unused; accepted for a common neuron interface.

        Returns:
            Binary spikes (T * B, L, C).
        """
        steps = x.reshape(self.timesteps, -1, *x.shape[1:])
        potential = torch.zeros_like(steps[0])
        spikes = []
        for t in range(self.timesteps):
            potential = self.leak * potential + steps[t]
            spike = _AtanHeaviside.apply(
                potential - self.threshold, self.surrogate_alpha
            )
            potential = potential - self.threshold * spike
            spikes.append(spike)
        return torch.stack(spikes).reshape(x.shape)
