"""LEAF's learnable filter bank: Gabor band-pass filters, then Gaussian low-pass pooling.

The front of Spiking-LEAF (Song et al., arXiv 2309.09469) is the learnable filter bank
of LEAF (Zeghidour et al., ICLR 2021): N complex Gabor filters on the waveform,

``phi_n(t) = exp(i eta_n t) exp(-t^2 / (2 sigma_n^2)) / (sqrt(2 pi) sigma_n)``,

with trainable centre frequency ``eta_n`` (radians per sample) and bandwidth
``sigma_n`` (samples), the squared modulus of each output (sub-band energy), and a
per-channel Gaussian low-pass window of trainable width that pools the energy down to
the frame rate (``w(t) = exp(-(t - (W-1)/2)^2 / (2 (width (W-1)/2)^2))``, stride
``hop``). Filters start on the mel scale as in LEAF: centres at mel-spaced frequencies
and each Gaussian's full width at half maximum equal to its mel band's width.
"""

import math

import torch
from typeguard import typechecked

from espnet_imlspike.errors import OptionError


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_gabor_init(n_filters: int, fs: int, min_freq: float, max_freq: float):
    """(eta, sigma) of Gabor filters matching a mel filter bank (LEAF's initialisation).

    Returns:
        Centre frequencies in radians per sample and time-domain standard deviations in
        samples, both (n_filters,).
    """
    edges = _hz(torch.linspace(_mel(torch.tensor(min_freq)), _mel(torch.tensor(max_freq)),
                               n_filters + 2, dtype=torch.float64))
    centres = edges[1:-1]
    fwhm = (edges[2:] - edges[:-2]) / 2  # half-maximum points of the triangular band
    eta = 2 * math.pi * centres / fs
    # Gaussian envelope: FWHM (cycles/sample) = 2 sqrt(2 ln 2) / (2 pi sigma)
    sigma = math.sqrt(2 * math.log(2)) / (math.pi * fwhm / fs)
    return eta.float(), sigma.float()


class GaborFilterbank(torch.nn.Module):
    """Learnable Gabor band-pass filters and Gaussian low-pass pooling (LEAF).

    Args:
        n_filters: Number of channels N.
        fs: Sampling rate (Hz).
        window_length: Filter and pooling window W in samples (odd; LEAF: 401 at 16 kHz).
        hop_length: Pooling stride in samples (frame shift).
        min_freq: Lowest initial centre band edge (Hz).
        max_freq: Highest initial band edge (Hz).
        pooling_width: Initial width of the pooling window (fraction of (W-1)/2).
    """

    @typechecked
    def __init__(
        self,
        n_filters: int = 40,
        fs: int = 16000,
        window_length: int = 401,
        hop_length: int = 160,
        min_freq: float = 60.0,
        max_freq: float = 7800.0,
        pooling_width: float = 0.4,
    ):
        super().__init__()
        if window_length < 3 or window_length % 2 == 0:
            raise OptionError(f"window_length must be odd and >= 3, got {window_length}")
        if not 0 <= min_freq < max_freq <= fs / 2:
            raise OptionError(
                f"need 0 <= min_freq < max_freq <= fs/2, got {min_freq}, {max_freq}, fs={fs}"
            )
        if hop_length < 1:
            raise OptionError(f"hop_length must be >= 1, got {hop_length}")
        eta, sigma = mel_gabor_init(n_filters, fs, min_freq, max_freq)
        self.center = torch.nn.Parameter(eta)
        self.bandwidth = torch.nn.Parameter(sigma)
        self.pooling_width = torch.nn.Parameter(torch.full((n_filters,), pooling_width))
        self.n_filters = n_filters
        self.window_length = window_length
        self.hop_length = hop_length

    def kernels(self) -> torch.Tensor:
        """(2N, 1, W): real and imaginary parts of the Gabor filters, interleaved."""
        half = (self.window_length - 1) / 2
        t = torch.arange(self.window_length, device=self.center.device) - half
        # LEAF's bounds keep each filter inside the window and in [0, pi]
        eta = self.center.clamp(0.0, math.pi)
        sigma = self.bandwidth.clamp(4 * math.sqrt(2 * math.log(2)) / math.pi, half)
        envelope = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
        envelope = envelope / (math.sqrt(2 * math.pi) * sigma[:, None])
        phase = eta[:, None] * t[None]
        real, imag = envelope * torch.cos(phase), envelope * torch.sin(phase)
        return torch.stack([real, imag], dim=1).reshape(2 * self.n_filters, 1, -1)

    def pooling_windows(self) -> torch.Tensor:
        """(N, 1, W): the Gaussian low-pass windows."""
        half = (self.window_length - 1) / 2
        t = torch.arange(self.window_length, device=self.center.device) - half
        width = self.pooling_width.clamp(2.0 / self.window_length, 0.5)
        return torch.exp(-0.5 * (t[None] / (width[:, None] * half)) ** 2).unsqueeze(1)

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Output frames for ``samples`` input samples: ceil(samples / hop)."""
        return torch.div(samples - 1, self.hop_length, rounding_mode="floor") + 1

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> pooled sub-band energies (B, frames, N)."""
        pad = self.window_length // 2
        x = waveform.unsqueeze(1)
        filtered = torch.nn.functional.conv1d(x, self.kernels().to(x.dtype), padding=pad)
        filtered = filtered.reshape(x.size(0), self.n_filters, 2, -1)
        energy = filtered.pow(2).sum(dim=2)  # squared modulus
        pooled = torch.nn.functional.conv1d(
            energy, self.pooling_windows().to(x.dtype), stride=self.hop_length,
            padding=pad, groups=self.n_filters,
        )
        return pooled.transpose(1, 2)

    def flops(self, samples: int) -> int:
        """Multiply-accumulates of filtering and pooling one utterance (real-valued input)."""
        frames = int(self.frames(torch.tensor(samples)))
        return (samples * 2 * self.n_filters * self.window_length
                + frames * self.n_filters * self.window_length)
