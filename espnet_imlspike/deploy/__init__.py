"""Spike-driven inference form of IML-Spikeformer (paper Eq. 9, Eq. 11, Eq. 12 inference).

:mod:`.modules` holds the deploy layers (frozen-threshold neurons, synaptic layers fed
by spike trains, fused HD-RepSSA, SDSA-3); :mod:`.convert` the deploy encoder, built
from the same options as the training encoder, and the converter.
"""
