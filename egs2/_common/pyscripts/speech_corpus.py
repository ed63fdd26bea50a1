"""A synthetic spoken-digits corpus from espeak-ng voices, in Kaldi-style data dirs.

Each utterance is a string of 2-5 English digit words ("three one four") spoken by one of
several espeak-ng voices (accent + voice variant = speaker) at a random speed and pitch,
resampled to 16 kHz, with light background noise. Nothing is downloaded: espeak-ng is a
Debian package the set-up installs (``apt-get install espeak-ng``).
"""

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np
import soundfile
from scipy.signal import resample_poly

from kaldi_data import SAMPLE_RATE, write_data_dir

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = [
    "en-us+m3", "en-us+f2", "en-gb+m1", "en-gb+f3",
    "en-gb-scotland+m2", "en-029+f1", "en-gb-x-rp+m4", "en-gb-x-gbclan+f4",
]


def espeak_binary() -> str:
    """Path of espeak-ng, or a clear error saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(
            "espeak-ng not found: install it (Debian/Ubuntu: apt-get install espeak-ng) "
            "or run scripts/setup.sh, which does"
        )
    return path


def speak(text: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    """Synthesize ``text`` with espeak-ng; float32 waveform at 16 kHz."""
    out = workdir / f"{abs(hash((text, voice, speed, pitch)))}.wav"
    subprocess.run(
        [espeak_binary(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(out), text],
        check=True, capture_output=True,
    )
    wave, rate = soundfile.read(out, dtype="float32")
    out.unlink()
    if rate != SAMPLE_RATE:
        divisor = np.gcd(SAMPLE_RATE, rate)
        wave = resample_poly(wave, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return wave


def make_corpus(
    out_dir: Path,
    sizes: Dict[str, int],
    voices: List[str] = VOICES,
    min_digits: int = 2,
    max_digits: int = 5,
    seed: int = 0,
    workers: int = 4,
) -> Dict[str, Path]:
    """Generate ``out_dir/data/<split>`` with ``sizes[split]`` utterances each.

    Args:
        out_dir: Output directory.
        sizes: Utterances per split name.
        voices: espeak-ng voices (each one speaker).
        min_digits: Fewest digits per utterance.
        max_digits: Most digits per utterance.
        seed: Random seed (deterministic given the arguments and espeak-ng version).
        workers: Parallel espeak-ng processes.

    Returns:
        Split name -> data dir.
    """
    if not voices or min_digits < 1 or max_digits < min_digits:
        raise ValueError("need at least one voice and 1 <= min_digits <= max_digits")
    espeak_binary()
    rng = np.random.default_rng(seed)
    dirs = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        for split, count in sizes.items():
            plans = []
            for index in range(count):
                voice = voices[index % len(voices)]
                words = rng.choice(DIGITS, size=int(rng.integers(min_digits, max_digits + 1)))
                plans.append({
                    "speaker": f"spk{voices.index(voice):02d}",
                    "id": f"spk{voices.index(voice):02d}-{split}-{index:05d}",
                    "text": " ".join(words),
                    "voice": voice,
                    "speed": int(rng.integers(140, 200)),
                    "pitch": int(rng.integers(30, 70)),
                    "noise": float(rng.uniform(0.002, 0.01)),
                    "seed": int(rng.integers(1 << 31)),
                })
            waves = pool.map(
                lambda p: speak(p["text"], p["voice"], p["speed"], p["pitch"], Path(tmp)),
                plans,
            )
            utterances = []
            for plan, wave in zip(plans, waves):
                noise = np.random.default_rng(plan["seed"]).normal(0, plan["noise"], wave.shape)
                utterances.append({**plan, "wave": (wave + noise).astype(np.float32)})
            dirs[split] = Path(out_dir) / "data" / split
            write_data_dir(dirs[split], utterances, Path(out_dir) / "wav" / split)
    return dirs
