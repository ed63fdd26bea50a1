"""The frame-synchronous CTC prefix beam search: exact prefix probabilities (brute force
over alignments), the classic case where the best path is not the best labelling, and
results independent of how the frames are chunked."""

import itertools
import math

import torch

from espnet_imlspike.streaming.ctc_search import CTCPrefixSearch

SOS = EOS = 9


class GivenPosteriors(torch.nn.Module):
    """Stands in for ESPnet's CTC module: the 'encoder frames' are log posteriors."""

    def log_softmax(self, x):
        return x


def labellings(logp):
    """Brute force: probability of every label sequence, summed over its alignments."""
    frames, vocab = logp.shape
    totals = {}
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed = tuple(t for i, t in enumerate(path) if t != 0 and (i == 0 or path[i - 1] != t))
        p = math.exp(sum(logp[i, t].item() for i, t in enumerate(path)))
        totals[collapsed] = totals.get(collapsed, 0.0) + p
    return totals


def search(logp, beam, chunks=None):
    ctc = CTCPrefixSearch(GivenPosteriors(), SOS, EOS, beam)
    hyps = []
    for part in torch.split(logp, chunks or logp.size(0)):
        hyps = ctc(part, is_final=False)
    return [(tuple(h.yseq[1:-1].tolist()), h.score) for h in hyps]


def test_the_best_labelling_beats_the_best_path():
    # two frames, p(blank) = 0.6, p(a) = 0.4: the best path is blank blank (0.36), but
    # "a" has three alignments: a a, a blank, blank a (0.16 + 0.24 + 0.24 = 0.64)
    logp = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]], dtype=torch.float64))
    (best, score), (second, other) = search(logp, beam=4)
    assert best == (1,) and math.isclose(score, math.log(0.64))
    assert second == () and math.isclose(other, math.log(0.36))


def test_prefix_scores_are_exact_without_pruning():
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, 3, dtype=torch.float64) * 2, dim=-1)
    exact = labellings(logp)
    found = search(logp, beam=1000)
    assert {h for h, _ in found} == set(exact)
    for hyp, score in found:
        assert math.isclose(score, math.log(exact[hyp]), rel_tol=1e-12)


def test_chunking_does_not_change_the_result():
    torch.manual_seed(1)
    logp = torch.log_softmax(torch.randn(40, 6, dtype=torch.float64) * 3, dim=-1)
    whole = search(logp, beam=3)
    for chunks in (1, 4, 7, 39):
        assert search(logp, beam=3, chunks=chunks) == whole


def test_final_resets_for_the_next_utterance():
    ctc = CTCPrefixSearch(GivenPosteriors(), SOS, EOS, 2)
    logp = torch.log(torch.tensor([[0.1, 0.9]], dtype=torch.float64))
    first = ctc(logp, is_final=True)
    assert first[0].yseq.tolist() == [SOS, 1, EOS] and ctc.frames == 0
    assert ctc(logp, is_final=True)[0].score == first[0].score
