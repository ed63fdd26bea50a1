"""Speaker verification scoring: cosine similarity of embeddings, equal error rate.

The trial list is ESPnet's ``trial_label`` (``enroll*test label`` per line, label 1 for
a same-speaker trial), as ``spk.sh`` writes it; embeddings are those of
``spk_embed_extract`` (per utterance, one or several segment embeddings).
"""

from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
from espnet2.fileio.read_text import read_2columns_text

from espnet_imlspike.errors import InputError


def cosine_score(enroll: np.ndarray, test: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of segment embeddings of two utterances.

    Args:
        enroll: (segments, dim) or (dim,) embeddings of one utterance.
        test: The same for the other utterance.
    """
    a = np.atleast_2d(np.asarray(enroll, dtype=np.float64))
    b = np.atleast_2d(np.asarray(test, dtype=np.float64))
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a @ b.T).mean())


def score_trials(
    embeddings: Dict[str, np.ndarray], trial_label: Path
) -> Tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels of the trials listed in ``trial_label``."""
    scores, labels = [], []
    for key, label in read_2columns_text(trial_label).items():
        first, second = key.split("*")
        scores.append(cosine_score(embeddings[first], embeddings[second]))
        labels.append(int(label))
    return np.array(scores), np.array(labels)


def equal_error_rate(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Equal error rate (a fraction) of verification scores; higher score = same speaker.

    A trial is accepted when its score is >= the threshold. Sweeping the threshold down
    over the distinct scores traces the false-rejection rate FRR (targets below it)
    against the false-acceptance rate FAR (non-targets at or above it), starting from
    (FAR, FRR) = (0, 1); consecutive points are joined by straight lines (so tied target
    and non-target scores give a diagonal segment) and the EER is where that curve
    crosses FAR = FRR.

    Args:
        scores: One score per trial.
        labels: 1 for target (same speaker) trials, 0 for non-target trials.

    Returns:
        The EER in [0, 1].
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise InputError("scores and labels must be 1-D of the same length")
    if not set(np.unique(labels)) <= {0, 1}:
        raise InputError("labels must be 0 or 1")
    targets = scores[labels == 1]
    nontargets = scores[labels == 0]
    if not len(targets) or not len(nontargets):
        raise InputError("need at least one target and one non-target trial")
    far, frr = [0.0], [1.0]
    for threshold in np.unique(scores)[::-1]:
        far.append(np.mean(nontargets >= threshold))
        frr.append(np.mean(targets < threshold))
    for i in range(1, len(far)):
        if frr[i] <= far[i]:  # crossed between point i-1 (FRR > FAR) and point i
            d_prev = frr[i - 1] - far[i - 1]
            d_here = frr[i] - far[i]
            w = d_prev / (d_prev - d_here)
            return float(far[i - 1] + w * (far[i] - far[i - 1]))
    raise AssertionError("unreachable: the last point has FAR = 1 >= FRR = 0")
