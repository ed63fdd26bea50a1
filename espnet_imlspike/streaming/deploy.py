"""The deploy (spike-driven) form of the streaming encoder, and its converter.

:class:`IMLSpikeformerStreamingDeployEncoder` is the deploy encoder of
:mod:`espnet_imlspike.deploy.convert` (frozen thresholds, fused ``W_QK``, synaptic
layers fed by binary spike trains, operations counted) with causal fused HD-RepSSA
(:mod:`.deploy_attention`), so it runs chunk by chunk like the training form
(:class:`~espnet_imlspike.streaming.encoder.ChunkwiseEncoding`).
:func:`convert_streaming_encoder` converts a trained streaming encoder through the
package's own converter: the weights are those :func:`~espnet_imlspike.deploy.convert.
convert_encoder` writes for the same parameters.
"""

import torch
from typeguard import typechecked

from espnet_imlspike.deploy.convert import IMLSpikeformerDeployEncoder, convert_encoder
from espnet_imlspike.deploy.modules import deploy_factories
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder
from espnet_imlspike.streaming.deploy_attention import CausalFusedHDRepSSA
from espnet_imlspike.streaming.encoder import ChunkwiseEncoding, IMLSpikeformerStreamingEncoder
from espnet_imlspike.streaming.options import StreamingOptions, check_streamable


class IMLSpikeformerStreamingDeployEncoder(ChunkwiseEncoding, IMLSpikeformerDeployEncoder):
    """Spike-driven inference form of :class:`IMLSpikeformerStreamingEncoder`.

    Args:
        input_size: Input feature dimension.
        execution: "spike_train" (binary spike trains, operations counted) or
            "multi_level".
        left_context: As the streaming encoder's.
        **encoder_conf: The streaming encoder's other options.
    """

    @typechecked
    def __init__(self, input_size: int, execution: str = "spike_train",
                 left_context: int = 0, **encoder_conf):
        StreamingOptions(left_context)
        super().__init__(input_size, execution, **encoder_conf)
        check_streamable(self.options)
        self.left_context = left_context
        options = self.options
        scale = float(options.timesteps) if options.firing == "imls" else 1.0
        neuron = deploy_factories(options, scale)[0]
        for block in self.encoders:
            old = block.self_attn
            block.self_attn = CausalFusedHDRepSSA(
                options.output_size, options.attention_heads, old.variant, old.decay,
                neuron, old.linear_norm, left_context,
            )
        self.wire_deploy_modules(execution)

    def count_chunk(self, input_frames: int, output_frames: int, batch: int) -> None:
        """The real-valued front's MACs for the input frames this chunk read (overlapping
        windows re-read at chunk edges count again) and the element operations."""
        if self.counter.enabled:
            self._count_dense_parts(torch.full((batch,), input_frames),
                                    torch.full((batch,), output_frames))

    def encoder_conf(self) -> dict:
        return dict(super().encoder_conf(), left_context=self.left_context)


@torch.no_grad()
def convert_streaming_encoder(
    trained: IMLSpikeformerStreamingEncoder, execution: str = "spike_train"
) -> IMLSpikeformerStreamingDeployEncoder:
    """The deploy form of a trained streaming encoder, on its device and dtype.

    The parameters go through :func:`convert_encoder` (a full-attention encoder has the
    same parameters), then into the causal deploy form.
    """
    if not isinstance(trained, IMLSpikeformerStreamingEncoder):
        raise TypeError(
            f"expected an IMLSpikeformerStreamingEncoder, got {type(trained).__name__}"
        )
    reference = next(trained.parameters())
    extras = dict(interctc_layer_idx=list(trained.interctc_layer_idx),
                  interctc_use_conditioning=trained.interctc_use_conditioning)
    plain = IMLSpikeformerEncoder(trained.input_size, **trained.options.as_dict(), **extras)
    plain.conditioning_layer = trained.conditioning_layer
    plain.to(device=reference.device, dtype=reference.dtype)
    plain.load_state_dict(trained.state_dict())
    converted = convert_encoder(plain, execution)
    deploy = IMLSpikeformerStreamingDeployEncoder(
        trained.input_size, execution=execution, left_context=trained.left_context,
        **trained.options.as_dict(), **extras,
    )
    deploy.conditioning_layer = trained.conditioning_layer
    deploy.to(device=reference.device, dtype=reference.dtype)
    deploy.load_state_dict(converted.state_dict())
    return deploy.eval()
