"""A generated 'tone language' corpus in Kaldi-style data dirs, for offline runs.

Each token (a letter) is a short harmonic tone with its own fundamental frequency;
an utterance is a random word of such tones separated by short gaps, with noise. Each
speaker scales all frequencies by its own factor and has its own loudness, so the
same corpus serves ASR (text) and speaker tasks (utt2spk). Nothing is downloaded.
"""

import argparse
from pathlib import Path
from typing import Dict

import numpy as np

from kaldi_data import SAMPLE_RATE, write_data_dir
LETTERS = "abcdef"
BASE_FREQUENCIES = {c: 220.0 * 2 ** (i / 3) for i, c in enumerate(LETTERS)}


def synthesize(word: str, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """Waveform (float32, 16 kHz) of one word spoken with a speaker's pitch factor."""
    pieces = [np.zeros(int(rng.uniform(0.05, 0.1) * SAMPLE_RATE))]
    for letter in word:
        duration = rng.uniform(0.09, 0.14)
        t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = BASE_FREQUENCIES[letter] * pitch
        tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3))
        envelope = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)
        pieces.append(tone * envelope)
        pieces.append(np.zeros(int(rng.uniform(0.02, 0.05) * SAMPLE_RATE)))
    pieces.append(np.zeros(int(rng.uniform(0.05, 0.1) * SAMPLE_RATE)))
    wave = np.concatenate(pieces) * rng.uniform(0.1, 0.3)
    wave += rng.normal(0.0, 0.003, wave.shape)
    return wave.astype(np.float32)


def make_corpus(
    out_dir: Path,
    sizes: Dict[str, int],
    num_speakers: int = 4,
    min_letters: int = 3,
    max_letters: int = 6,
    seed: int = 0,
) -> Dict[str, Path]:
    """Generate data dirs ``out_dir/data/<split>`` with ``sizes[split]`` utterances.

    Args:
        out_dir: Output directory.
        sizes: Number of utterances per split name.
        num_speakers: Speakers, each with its own pitch factor.
        min_letters: Shortest word.
        max_letters: Longest word.
        seed: Random seed (the corpus is deterministic given the arguments).

    Returns:
        Split name -> data dir.
    """
    if num_speakers < 1 or min_letters < 1 or max_letters < min_letters:
        raise ValueError("need num_speakers >= 1 and 1 <= min_letters <= max_letters")
    rng = np.random.default_rng(seed)
    pitches = np.linspace(0.8, 1.25, num_speakers)
    dirs = {}
    for split, count in sizes.items():
        utterances = []
        for index in range(count):
            speaker = index % num_speakers
            length = int(rng.integers(min_letters, max_letters + 1))
            word = "".join(rng.choice(list(LETTERS), size=length))
            spk_id = f"spk{speaker:02d}"
            utterances.append(
                {
                    "id": f"{spk_id}-{split}-{index:05d}",
                    "speaker": spk_id,
                    "text": word,
                    "wave": synthesize(word, float(pitches[speaker]), rng),
                }
            )
        dirs[split] = Path(out_dir) / "data" / split
        write_data_dir(dirs[split], utterances, Path(out_dir) / "wav" / split)
    return dirs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", type=Path, required=True)
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_valid", type=int, default=20)
    parser.add_argument("--num_test", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = {"train": args.num_train, "valid": args.num_valid, "test": args.num_test}
    for split, path in make_corpus(args.out_dir, sizes, seed=args.seed).items():
        print(f"{split}: {path}")


if __name__ == "__main__":
    main()
