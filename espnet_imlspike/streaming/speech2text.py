"""Chunk-by-chunk ASR decoding of a streaming IML-Spikeformer, ESPnet's streaming API.

ESPnet's ``espnet2.bin.asr_inference_streaming.Speech2TextStreaming`` asserts that the
encoder is a ``ContextualBlockTransformerEncoder`` or ``ContextualBlockConformerEncoder``
and that ``encoder_conf`` holds their ``block_size``/``hop_size``/``look_ahead``; past
that, it only needs the encoder to take ``(feats, lengths, states, is_final=...,
infer_mode=True)`` and return ``(frames, lengths, states)``, which
:class:`~espnet_imlspike.streaming.encoder.ChunkwiseEncoding` does. :class:`Speech2TextStreaming`
here *is* ESPnet's class (a subclass: same ``__call__``, ``reset``, ``assemble_hyps``
and constructor arguments) with its own constructor, which accepts our encoder, loads
the checkpoint strictly, builds an exact chunk-wise front end (:mod:`.features`) and one
of two searches:

* ``search="block"``: ESPnet's ``BatchBeamSearchOnline`` (joint CTC/attention,
  block-synchronous, CTC prefix scores extended as encoder frames arrive) with blocks of
  ``block_frames`` encoder frames and no look-ahead (the encoder needs none);
* ``search="ctc"``: the frame-synchronous CTC prefix beam search of :mod:`.ctc_search`
  (no attention decoder): its result does not depend on the chunking, and every chunk
  returns the current n-best as a partial result.

With ``deploy`` the encoder runs in its spike-driven form (:mod:`.deploy`).
"""

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Union

import torch
from espnet2.bin.asr_inference_streaming import Speech2TextStreaming as ESPnetStreaming
from espnet2.tasks.lm import LMTask
from espnet2.text.build_tokenizer import build_tokenizer
from espnet2.text.token_id_converter import TokenIDConverter
from espnet.nets.batch_beam_search_online import BatchBeamSearchOnline
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus
from typeguard import typechecked

from espnet_imlspike.errors import InputError, OptionError
from espnet_imlspike.model_loading import load_trained_model
from espnet_imlspike.streaming.ctc_search import CTCPrefixSearch
from espnet_imlspike.streaming.encoder import ChunkwiseEncoding
from espnet_imlspike.streaming.features import StreamingFeatures


class OnlineBeamSearch(BatchBeamSearchOnline):
    """ESPnet's online beam search, safe when every hypothesis has ended early.

    When the hypotheses reach the length limit in a block before the last, ESPnet's
    search leaves an empty beam and the next block indexes it (``IndexError`` in the
    CTC prefix scorer); here such a block returns the ended hypotheses instead.
    """

    def process_one_block(self, h, is_final, maxlen, minlen, maxlenratio):
        if self.running_hyps is not None and len(self.running_hyps) == 0:
            return self.assemble_hyps(self.ended_hyps) if is_final else []
        return super().process_one_block(h, is_final, maxlen, minlen, maxlenratio)


class Speech2TextStreaming(ESPnetStreaming):
    """ESPnet's ``Speech2TextStreaming`` for encoders that stream chunk by chunk.

    Examples:
        >>> s2t = Speech2TextStreaming("exp/asr/config.yaml", "exp/asr/valid.acc.best.pth")
        >>> for chunk in chunks[:-1]:
        ...     s2t(chunk, is_final=False)
        >>> text, tokens, token_ids, hyp = s2t(chunks[-1], is_final=True)[0]

    Args (beyond ESPnet's, which keep their meaning):
        search: "block" (ESPnet's block-synchronous joint CTC/attention search) or
            "ctc" (frame-synchronous CTC prefix beam search; ``ctc_weight``, the LM and
            the length limits do not apply).
        block_frames: Encoder frames per block of the "block" search (decoding runs
            each time a block completes).
        deploy: Run the encoder in its spike-driven deploy form.
        execution: Deploy form's execution: "multi_level" or "spike_train".
        allow_uncalibrated: Accept IMLS thresholds never updated by training.
    """

    @typechecked
    def __init__(
        self,
        asr_train_config: Union[Path, str],
        asr_model_file: Union[Path, str, None] = None,
        lm_train_config: Union[Path, str, None] = None,
        lm_file: Union[Path, str, None] = None,
        token_type: Optional[str] = None,
        bpemodel: Optional[str] = None,
        device: str = "cpu",
        maxlenratio: float = 0.0,
        minlenratio: float = 0.0,
        batch_size: int = 1,
        dtype: str = "float32",
        beam_size: int = 20,
        ctc_weight: float = 0.5,
        lm_weight: float = 1.0,
        penalty: float = 0.0,
        nbest: int = 1,
        normalize_length: bool = False,
        disable_repetition_detection: bool = False,
        decoder_text_length_limit: int = 0,
        encoded_feat_length_limit: int = 0,
        search: str = "block",
        block_frames: int = 16,
        deploy: bool = False,
        execution: str = "multi_level",
        allow_uncalibrated: bool = False,
    ):
        if batch_size != 1:
            raise OptionError(f"batch_size must be 1 for streaming, got {batch_size}")
        if search not in ("block", "ctc"):
            raise OptionError(f"search must be block or ctc, got {search!r}")
        if block_frames < 1:
            raise OptionError(f"block_frames must be >= 1, got {block_frames}")
        if asr_model_file is None:
            raise OptionError("asr_model_file is required")
        asr_model, config = load_trained_model(
            Path(asr_train_config), Path(asr_model_file), encoders=None, task="asr",
            allow_uncalibrated=allow_uncalibrated,
        )
        if not isinstance(asr_model.encoder, ChunkwiseEncoding):
            raise InputError(
                f"encoder {config['encoder']!r} cannot stream chunk by chunk: train with "
                "encoder: iml_spikeformer_streaming"
            )
        if deploy:
            from espnet_imlspike.streaming.deploy import convert_streaming_encoder

            asr_model.encoder = convert_streaming_encoder(asr_model.encoder, execution)
        asr_model.to(device=device, dtype=getattr(torch, dtype)).eval()
        args = argparse.Namespace(**config)
        if search == "ctc":
            beam_search = CTCPrefixSearch(asr_model.ctc, asr_model.sos, asr_model.eos,
                                          beam_size, blank=asr_model.blank_id)
        else:
            beam_search = self._beam_search(
                asr_model, lm_train_config, lm_file, device, dtype, beam_size, ctc_weight,
                lm_weight, penalty, normalize_length, disable_repetition_detection,
                decoder_text_length_limit, encoded_feat_length_limit, block_frames,
            )
        token_type = token_type if token_type is not None else args.token_type
        bpemodel = bpemodel if bpemodel is not None else args.bpemodel
        if token_type is None or (token_type == "bpe" and bpemodel is None):
            tokenizer = None
        else:
            tokenizer = build_tokenizer(token_type=token_type, bpemodel=bpemodel)
        self.asr_model = asr_model
        self.asr_train_args = args
        self.converter = TokenIDConverter(token_list=asr_model.token_list)
        self.tokenizer = tokenizer
        self.beam_search = beam_search
        self.maxlenratio = maxlenratio
        self.minlenratio = minlenratio
        self.device = device
        self.dtype = dtype
        self.nbest = nbest
        self.features = StreamingFeatures(asr_model)
        self.reset()

    @staticmethod
    def _beam_search(asr_model, lm_train_config, lm_file, device, dtype, beam_size,
                     ctc_weight, lm_weight, penalty, normalize_length, no_repetition,
                     text_limit, feat_limit, block_frames) -> OnlineBeamSearch:
        """ESPnet's online beam search, as its Speech2TextStreaming builds it."""
        token_list = asr_model.token_list
        scorers = dict(
            decoder=asr_model.decoder,
            ctc=CTCPrefixScorer(ctc=asr_model.ctc, eos=asr_model.eos),
            length_bonus=LengthBonus(len(token_list)),
        )
        if lm_train_config is not None:
            lm, _ = LMTask.build_model_from_file(lm_train_config, lm_file, device)
            scorers["lm"] = lm.lm
        weights = dict(decoder=1.0 - ctc_weight, ctc=ctc_weight, lm=lm_weight,
                       length_bonus=penalty)
        beam_search = OnlineBeamSearch(
            beam_size=beam_size, weights=weights, scorers=scorers, sos=asr_model.sos,
            eos=asr_model.eos, vocab_size=len(token_list), token_list=token_list,
            pre_beam_score_key=None if ctc_weight == 1.0 else "full",
            normalize_length=normalize_length,
            disable_repetition_detection=no_repetition,
            decoder_text_length_limit=text_limit, encoded_feat_length_limit=feat_limit,
            block_size=block_frames, hop_size=block_frames, look_ahead=0,
        )
        beam_search.to(device=device, dtype=getattr(torch, dtype)).eval()
        for scorer in scorers.values():
            if isinstance(scorer, torch.nn.Module):
                scorer.to(device=device, dtype=getattr(torch, dtype)).eval()
        logging.info(f"Beam_search: {beam_search}")
        return beam_search

    def apply_frontend(self, speech: torch.Tensor, prev_states=None, is_final: bool = False):
        """Features of the frames this chunk completes (exact, see :mod:`.features`).

        Returns (feats (1, n, D) or None, lengths or None, the state for the next chunk).
        """
        feats, state = self.features(speech, prev_states, is_final)
        if feats is None:
            return None, None, state
        lengths = torch.full((1,), feats.size(1), dtype=torch.long, device=feats.device)
        return feats, lengths, None if is_final else state

    def partial_text(self) -> List[str]:
        """Tokens of the best running hypothesis so far (empty before decoding starts)."""
        if isinstance(self.beam_search, CTCPrefixSearch):
            best = self.beam_search.hypotheses()[0].yseq[1:-1].tolist()
            return self.converter.ids2tokens(best)
        hyps = self.beam_search.running_hyps
        if hyps is None or hyps.yseq.size(0) == 0:
            return []
        best = int(torch.argmax(hyps.score))
        ids = [int(t) for t in hyps.yseq[best, 1:hyps.length[best]]
               if int(t) not in (0, self.asr_model.eos)]
        return self.converter.ids2tokens(ids)
