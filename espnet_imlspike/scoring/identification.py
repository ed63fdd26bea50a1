"""Closed-set speaker identification with a trained ESPnet speaker model (Table III).

ESPnet's SPK task trains a speaker classifier (the classification head is the loss module:
``aamsoftmax``, ``aamsoftmax_sc_topk`` or ``softmax``, each a matrix of class vectors
compared with the embedding by cosine similarity) but evaluates verification only. This
module scores identification: every test utterance of a speaker seen in training is
embedded as ``spk_embed_extract`` embeds it and assigned the class whose head vector is
the most cosine-similar; the accuracy is the fraction assigned to their own speaker.

Class index <-> speaker name. During training ESPnet's ``SpkPreprocessor`` (built by
``SpeakerTask`` with ``--spk2utt``, the path is stored in the training ``config.yaml``)
reads the spk2utt file line by line and gives the speaker named by the first
space-separated field of line ``i`` (counting from 0, every line counted, the file order
kept, not sorted) the label ``i``; the ``utt2spk`` speaker names are looked up in that
table to get the integer target of the loss. So row ``i`` of the head (rows ``i*K ..
i*K+K-1`` with ``K`` sub-centres) belongs to the speaker on line ``i`` of the training
spk2utt. :func:`speaker_label_mapping` rebuilds that table from the same file.
"""

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from espnet2.fileio.read_text import read_2columns_text
from typeguard import typechecked

from espnet_imlspike.errors import InputError


class IdentificationError(InputError):
    """Inputs that cannot be scored, with the reason."""


@typechecked
def speaker_label_mapping(spk2utt: Path) -> Dict[str, int]:
    """Speaker name -> class index, as ESPnet's SPK preprocessor assigns it in training.

    Line ``i`` of the file (0-based, file order) gives its first space-separated field
    the index ``i``. Unlike ESPnet, a repeated speaker or an empty line is refused: either
    leaves a class of the head that no speaker name maps to.

    Args:
        spk2utt: The spk2utt file given to ``spk_train --spk2utt``.

    Returns:
        Mapping from speaker name to class index; its length is the number of classes.
    """
    if not spk2utt.is_file():
        raise IdentificationError(f"{spk2utt}: no such file (the training spk2utt)")
    mapping: Dict[str, int] = {}
    with open(spk2utt) as f:
        for index, line in enumerate(f):
            speaker = line.strip().split(" ")[0]
            if not speaker:
                raise IdentificationError(f"{spk2utt}: line {index + 1} is empty")
            if speaker in mapping:
                raise IdentificationError(
                    f"{spk2utt}: speaker {speaker!r} on lines {mapping[speaker] + 1} "
                    f"and {index + 1}"
                )
            mapping[speaker] = index
    if not mapping:
        raise IdentificationError(f"{spk2utt} lists no speakers")
    return mapping


@typechecked
def evaluation_crops(audio: np.ndarray, target: int, num_eval: int) -> np.ndarray:
    """The fixed-length segments ESPnet's SPK preprocessor cuts for evaluation.

    An utterance shorter than ``target`` samples is first extended by repeating it from
    its start to ``target + 1`` samples; then ``num_eval`` windows of ``target`` samples
    start at evenly spaced offsets from 0 to ``len - target`` (rounded down).

    Args:
        audio: (samples,) waveform.
        target: Segment length in samples (> 0).
        num_eval: Number of segments (> 0).

    Returns:
        (num_eval, target) segments.
    """
    if audio.ndim != 1:
        raise IdentificationError(f"expected single-channel audio, got shape {audio.shape}")
    if target < 1 or num_eval < 1:
        raise IdentificationError("target length and num_eval must be positive")
    if len(audio) == 0:
        raise IdentificationError("empty audio")
    if len(audio) < target:
        audio = np.pad(audio, (0, target + 1 - len(audio)), mode="wrap")
    starts = np.linspace(0, len(audio) - target, num=num_eval).astype(np.int64)
    return np.stack([audio[s: s + target] for s in starts])


@typechecked
def head_class_vectors(loss: torch.nn.Module) -> torch.Tensor:
    """Class vectors of an ESPnet speaker model's classification head.

    Args:
        loss: ``model.loss`` of an ``ESPnetSpeakerModel``: ``AAMSoftmax``, ``Softmax``
            (weight (classes, dim)) or ``ArcMarginProduct_intertopk_subcenter`` (weight
            (classes * K, dim), the K sub-centres of a class on consecutive rows).

    Returns:
        (classes, K, dim) tensor (K = 1 without sub-centres).
    """
    weight = getattr(loss, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise IdentificationError(
            f"loss {type(loss).__name__} has no (classes, dim) weight matrix; "
            "supported: aamsoftmax, aamsoftmax_sc_topk, softmax"
        )
    sub_centres = int(getattr(loss, "K", 1))
    if weight.shape[0] % sub_centres:
        raise IdentificationError(
            f"head has {weight.shape[0]} rows, not a multiple of K={sub_centres}")
    return weight.detach().reshape(weight.shape[0] // sub_centres, sub_centres,
                                   weight.shape[1])


@typechecked
def class_scores(embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cosine score of each utterance against each class.

    The score of class ``c`` is the cosine similarity between a segment embedding and the
    closest of the class's sub-centres, averaged over the utterance's segments (the
    head's own rule, applied per segment, then the segment average that the
    verification scoring of this package uses too).

    Args:
        embeddings: (utterances, segments, dim) segment embeddings.
        classes: (classes, K, dim) head vectors from :func:`head_class_vectors`.

    Returns:
        (utterances, classes) scores in [-1, 1].
    """
    if embeddings.dim() != 3 or classes.dim() != 3 or embeddings.shape[-1] != classes.shape[-1]:
        raise IdentificationError(
            f"embeddings {tuple(embeddings.shape)} do not match head {tuple(classes.shape)}")
    unit_embeddings = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    unit_classes = torch.nn.functional.normalize(classes.double(), dim=-1)
    cosines = torch.einsum("usd,ckd->usck", unit_embeddings, unit_classes)
    return cosines.amax(dim=-1).mean(dim=1)


@torch.no_grad()
@typechecked
def embed_segments(model: torch.nn.Module, segments: Sequence[np.ndarray]) -> torch.Tensor:
    """Embeddings of equally long segments, as ``spk_embed_extract`` computes them.

    All segments of all utterances go through ``model(speech=..., extract_embd=True)``
    in one batch (no lengths: they are equally long), un-normalised.

    Args:
        model: ESPnetSpeakerModel in eval mode.
        segments: Per utterance a (num_eval, samples) array.

    Returns:
        (utterances, num_eval, dim) embeddings.
    """
    stacked = torch.from_numpy(np.stack(segments).astype(np.float32))
    flat = stacked.flatten(0, 1)
    return model(speech=flat, spk_labels=None, extract_embd=True).view(
        stacked.shape[0], stacked.shape[1], -1)


@typechecked
def read_test_set(data_dir: Path) -> Tuple[List[Tuple[str, str]], object]:
    """Utterance ids with speakers, and an ESPnet dataset that reads their audio.

    Args:
        data_dir: Kaldi-style dir with wav.scp and utt2spk.

    Returns:
        ([(utt, speaker), ...] in wav.scp order, ESPnetDataset with the ``speech`` key).
    """
    from espnet2.train.dataset import ESPnetDataset

    scp, utt2spk_path = data_dir / "wav.scp", data_dir / "utt2spk"
    for path in (scp, utt2spk_path):
        if not path.is_file():
            raise IdentificationError(f"{path}: no such file")
    utt2spk = read_2columns_text(utt2spk_path)
    wavs = read_2columns_text(scp)
    if not wavs:
        raise IdentificationError(f"{scp} lists no utterances")
    missing = [u for u in wavs if u not in utt2spk]
    if missing:
        raise IdentificationError(
            f"{len(missing)} utterances of {scp} have no speaker in {utt2spk_path}, "
            f"e.g. {missing[:3]}")
    dataset = ESPnetDataset([(str(scp), "speech", "sound")])
    return [(u, utt2spk[u].strip()) for u in wavs], dataset


@typechecked
def identify(
    model: torch.nn.Module, spk2label: Dict[str, int], data_dir: Path,
    target: int, num_eval: int, batch_size: int = 8,
) -> Dict[str, object]:
    """Closed-set identification of every utterance of ``data_dir``.

    Args:
        model: Trained ESPnetSpeakerModel.
        spk2label: Training speaker -> class index (:func:`speaker_label_mapping`).
        data_dir: Test data dir (wav.scp, utt2spk); its speakers must be training speakers.
        target: Segment length in samples.
        num_eval: Segments per utterance.
        batch_size: Utterances per forward pass.

    Returns:
        {"accuracy": %, "correct", "utterances", "speakers", "classes",
        "per_speaker": {spk: %}, "predictions": {utt: {"reference", "hypothesis",
        "score"}}}.
    """
    classes = head_class_vectors(model.loss)
    if classes.shape[0] != len(spk2label):
        raise IdentificationError(
            f"the head has {classes.shape[0]} classes but the training spk2utt lists "
            f"{len(spk2label)} speakers")
    utterances, dataset = read_test_set(data_dir)
    unseen = sorted({s for _, s in utterances} - set(spk2label))
    if unseen:
        raise IdentificationError(
            f"{data_dir}/utt2spk has speakers the model was not trained on: "
            f"{', '.join(unseen)} (closed-set identification needs training speakers)")
    wavs = read_2columns_text(data_dir / "wav.scp")
    absent = [f"{u} ({wavs[u]})" for u, _ in utterances
              if not wavs[u].endswith("|") and not Path(wavs[u]).is_file()]
    if absent:
        raise IdentificationError(f"{data_dir}/wav.scp names audio files that do not "
                                  f"exist: {absent[:3]}")
    label2spk = {label: spk for spk, label in spk2label.items()}
    model.eval()
    predictions: Dict[str, Dict[str, object]] = {}
    for first in range(0, len(utterances), batch_size):
        batch = utterances[first: first + batch_size]
        crops = [evaluation_crops(np.asarray(dataset[u][1]["speech"]), target, num_eval)
                 for u, _ in batch]
        scores = class_scores(embed_segments(model, crops), classes)
        best = scores.argmax(dim=1)
        for (utt, speaker), label, row in zip(batch, best.tolist(), scores):
            predictions[utt] = {"reference": speaker, "hypothesis": label2spk[label],
                                "score": float(row[label])}
    correct = sum(p["reference"] == p["hypothesis"] for p in predictions.values())
    per_speaker = {}
    for speaker in sorted({s for _, s in utterances}):
        mine = [p for p in predictions.values() if p["reference"] == speaker]
        per_speaker[speaker] = 100.0 * sum(
            p["hypothesis"] == speaker for p in mine) / len(mine)
    return {
        "accuracy": 100.0 * correct / len(predictions),
        "correct": correct,
        "utterances": len(predictions),
        "speakers": len(per_speaker),
        "classes": len(spk2label),
        "per_speaker": per_speaker,
        "predictions": predictions,
    }
