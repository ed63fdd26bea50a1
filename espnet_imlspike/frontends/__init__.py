"""Front ends for ESPnet tasks (raw waveform in, features or spikes out)."""
