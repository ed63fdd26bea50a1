"""Kaldi-style data directories: writing wav.scp, text, utt2spk and spk2utt (reading
them is ESPnet's ``espnet2.fileio.read_text.read_2columns_text``)."""

from pathlib import Path
from typing import Dict, List, Sequence

import soundfile

SAMPLE_RATE = 16000


def write_data_dir(
    data_dir: Path, utterances: Sequence[Dict], wav_dir: Path
) -> None:
    """Write 16 kHz wav files and a Kaldi-style data dir, sorted by utterance id.

    Args:
        data_dir: Output data dir (wav.scp, text, utt2spk, spk2utt).
        utterances: Dicts with "id", "speaker", "text" and "wave" (float32 array).
        wav_dir: Where the wav files go.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    wav_dir.mkdir(parents=True, exist_ok=True)
    utterances = sorted(utterances, key=lambda u: u["id"])
    spk2utt: Dict[str, List[str]] = {}
    with open(data_dir / "wav.scp", "w") as scp, open(
        data_dir / "text", "w"
    ) as text, open(data_dir / "utt2spk", "w") as utt2spk:
        for utt in utterances:
            path = (wav_dir / f"{utt['id']}.wav").resolve()
            soundfile.write(path, utt["wave"], SAMPLE_RATE)
            scp.write(f"{utt['id']} {path}\n")
            text.write(f"{utt['id']} {utt['text']}\n")
            utt2spk.write(f"{utt['id']} {utt['speaker']}\n")
            spk2utt.setdefault(utt["speaker"], []).append(utt["id"])
    with open(data_dir / "spk2utt", "w") as f:
        for speaker in sorted(spk2utt):
            f.write(f"{speaker} {' '.join(spk2utt[speaker])}\n")
