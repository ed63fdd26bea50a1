"""Frame-synchronous CTC prefix beam search over encoder frames as they arrive.

Each encoder frame updates, for every prefix in the beam, the probability that the
frames so far spell it ending in a blank (``p_b``) or in its last token (``p_nb``), the
CTC prefix scores; the beam keeps the ``beam_size`` most probable prefixes. A frame is
processed once, when it arrives, and nothing looks at later frames, so the hypotheses
after the last chunk do not depend on how the utterance was cut into chunks, and the
best prefix after each chunk is a partial result. Written from the standard algorithm
(Graves 2012, Sec. 7.5; Hannun et al. 2014, arXiv 1408.2873); the prefix scores use
ESPnet's CTC module (``log_softmax`` of ``ctc_lo``).
"""

import math
from typing import Dict, List, Tuple

import torch
from espnet.nets.beam_search import Hypothesis

NEG_INF = float("-inf")


def log_add(*values: float) -> float:
    """log(sum(exp(v))) of Python floats, -inf safe."""
    top = max(values)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(v - top) for v in values))


class CTCPrefixSearch(torch.nn.Module):
    """Streaming CTC prefix beam search with ESPnet's online beam-search interface.

    ``forward(x, maxlenratio, minlenratio, is_final)`` takes the new encoder frames
    (n, D) and returns the n-best so far as ESPnet ``Hypothesis`` objects (``yseq`` =
    sos, tokens, eos; ``score`` the CTC log probability of the prefix); after
    ``is_final`` the search resets for the next utterance.

    Args:
        ctc: ESPnet's CTC module of the model.
        sos: Start-of-sentence id.
        eos: End-of-sentence id.
        beam_size: Prefixes kept after each frame.
        blank: Blank id.
        pre_beam: Tokens tried per frame (the most probable ones; 0 = all).
    """

    def __init__(self, ctc, sos: int, eos: int, beam_size: int, blank: int = 0,
                 pre_beam: int = 0):
        super().__init__()
        self.ctc = ctc
        self.sos, self.eos, self.blank = sos, eos, blank
        self.beam_size = beam_size
        self.pre_beam = pre_beam
        self.reset()

    def reset(self) -> None:
        """A new utterance: the empty prefix, certain, ending in a blank."""
        self.beams: Dict[Tuple[int, ...], Tuple[float, float]] = {(): (0.0, NEG_INF)}
        self.frames = 0

    def _candidates(self, logp: List[float]) -> List[int]:
        tokens = [t for t in range(len(logp)) if t not in (self.blank, self.sos, self.eos)]
        if self.pre_beam and self.pre_beam < len(tokens):
            tokens = sorted(tokens, key=lambda t: (-logp[t], t))[:self.pre_beam]
        return tokens

    def step(self, logp: List[float]) -> None:
        """Advance the beam by one frame of log posteriors (V,)."""
        grown: Dict[Tuple[int, ...], List[float]] = {}

        def add(prefix, blank_end: float, token_end: float):
            old = grown.setdefault(prefix, [NEG_INF, NEG_INF])
            old[0], old[1] = log_add(old[0], blank_end), log_add(old[1], token_end)

        blank = logp[self.blank]
        tokens = self._candidates(logp)
        for prefix, (p_b, p_nb) in self.beams.items():
            add(prefix, log_add(p_b, p_nb) + blank, NEG_INF)
            for token in tokens:
                p = logp[token]
                if prefix and prefix[-1] == token:
                    add(prefix + (token,), NEG_INF, p_b + p)  # a new token after a blank
                    add(prefix, NEG_INF, p_nb + p)  # the same token, collapsed
                else:
                    add(prefix + (token,), NEG_INF, log_add(p_b, p_nb) + p)
        possible = [item for item in grown.items() if log_add(*item[1]) > NEG_INF]
        best = sorted(possible, key=lambda item: (-log_add(*item[1]), item[0]))
        self.beams = {prefix: tuple(scores) for prefix, scores in best[:self.beam_size]}
        self.frames += 1

    def hypotheses(self) -> List[Hypothesis]:
        """The beam as ESPnet hypotheses, best first."""
        ranked = sorted(self.beams.items(), key=lambda item: (-log_add(*item[1]), item[0]))
        hyps = []
        for prefix, scores in ranked:
            score = log_add(*scores)
            hyps.append(Hypothesis(
                yseq=torch.tensor([self.sos, *prefix, self.eos]),
                score=score, scores={"ctc": score}, states={},
            ))
        return hyps

    @torch.no_grad()
    def forward(self, x: torch.Tensor, maxlenratio: float = 0.0, minlenratio: float = 0.0,
                is_final: bool = True) -> List[Hypothesis]:
        """Take the new encoder frames x (n, D); return the n-best so far."""
        if x.size(0):
            logp = self.ctc.log_softmax(x.unsqueeze(0))[0].double().tolist()
            for frame in logp:
                self.step(frame)
        hyps = self.hypotheses()
        if is_final:
            self.reset()
        return hyps
