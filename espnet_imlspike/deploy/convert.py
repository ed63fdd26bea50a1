"""The deploy encoder and the converter from a trained encoder.

:func:`convert_encoder` turns a trained IML-Spikeformer encoder (firing ``imls`` or
``mls``) into :class:`IMLSpikeformerDeployEncoder`:

* IMLS thresholds are frozen to the running averages (Eq. 11): each neuron becomes a
  ``FrozenThresholdNeuron`` with the same arithmetic as the training form's eval.
* HD-RepSSA's query and key weights are fused per head (Eq. 12, inference branch):
  ``W_QK,h = W_Q,h W_K,h^T``. ESPnet's linear layers have biases, which the paper's
  equation omits; they are fused too, exactly:
  ``A_h = X W_QK,h X^T + (X u_h) 1^T + 1 (X w_h)^T + c_h`` with ``u_h = W_Q,h b_K,h``,
  ``w_h = W_K,h b_Q,h``, ``c_h = b_Q,h . b_K,h`` (needed: the HDM multiplies every term).
* Spikes are integer counts with no per-channel scale (see neurons.py), so no scale has
  to be folded into any weight: every synaptic layer after the first receives spike counts.

The deploy encoder is built directly from the same :class:`SpikingOptions` with the
deploy layers' factories; the real-valued front, LayerNorms and residual stream are the
training form's.
"""

import inspect

import torch
from typeguard import typechecked

from espnet_imlspike.deploy.modules import (
    EXECUTION_MODES,
    DeployModule,
    FrozenThresholdNeuron,
    deploy_factories,
)
from espnet_imlspike.encoders.asr import IMLSpikeformerEncoder, SpikingTransformerEncoder
from espnet_imlspike.encoders.options import SpikingOptions
from espnet_imlspike.energy.ops import OpCounter, conv_front_costs
from espnet_imlspike.errors import OptionError
from espnet_imlspike.neurons import InputAwareMultiLevelSpikeNeuron, MultiLevelSpikeNeuron

ASR_EXTRAS = ("interctc_layer_idx", "interctc_use_conditioning", "padding_idx")


def _training_defaults():
    return {
        name: p.default
        for name, p in inspect.signature(IMLSpikeformerEncoder.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


class IMLSpikeformerDeployEncoder(SpikingTransformerEncoder):
    """The spike-driven inference form of :class:`IMLSpikeformerEncoder`.

    Takes the training encoder's ``encoder_conf`` (same keywords, same defaults) plus
    ``execution``, so ESPnet builds it from the config ``espnet_imlspike.bin.deploy``
    writes. It is an inference form: it refuses ``train()`` (a training config that
    names it would leave most of its parameters without gradients) and a training-form
    state dict.

    Args:
        input_size: Input feature dimension.
        execution: "spike_train" (binary spike trains, operations counted) or
            "multi_level" (multi-level spikes, faster, same outputs).
        **encoder_conf: The options of :class:`IMLSpikeformerEncoder` (firing must be
            imls or mls).
    """

    @typechecked
    def __init__(self, input_size: int, execution: str = "spike_train", **encoder_conf):
        arguments = _training_defaults()
        unknown = sorted(set(encoder_conf) - set(arguments))
        if unknown:
            raise OptionError(f"iml_spikeformer_deploy: unknown encoder_conf keys {unknown}")
        arguments.update(encoder_conf)
        options = SpikingOptions.from_arguments(arguments)
        if options.firing not in ("imls", "mls"):
            raise OptionError(
                f"firing must be imls or mls for the deploy form, got {options.firing!r} "
                "(multi-step neurons already emit binary spikes)"
            )
        if execution not in EXECUTION_MODES:
            raise OptionError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        scale = float(options.timesteps) if options.firing == "imls" else 1.0
        super().__init__(
            input_size, options, deploy_factories(options, scale),
            interctc_layer_idx=tuple(arguments["interctc_layer_idx"]),
            interctc_use_conditioning=arguments["interctc_use_conditioning"],
            padding_idx=arguments["padding_idx"], form="deploy",
        )
        self.counter = OpCounter()
        self.wire_deploy_modules(execution)

    def wire_deploy_modules(self, execution: str) -> None:
        """Give every deploy module its name, the op counter, T and the execution mode
        (again after a subclass swaps modules in)."""
        for name, module in self.named_modules():
            if isinstance(module, DeployModule):
                module.layer_name = name
                module.counter = self.counter
                module.timesteps = self.options.timesteps
        self.set_execution(execution)
        self.eval()

    def train(self, mode: bool = True):
        if mode:
            raise OptionError(
                "iml_spikeformer_deploy is the inference form and cannot be trained: "
                "train with encoder: iml_spikeformer, then convert with "
                "python -m espnet_imlspike.bin.deploy"
            )
        return super().train(False)

    def set_execution(self, execution: str) -> None:
        """Switch between "spike_train" and "multi_level" execution."""
        if execution not in EXECUTION_MODES:
            raise OptionError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        self.execution = execution
        for module in self.modules():
            if isinstance(module, DeployModule):
                module.execution = execution

    def forward(self, xs_pad, ilens, prev_states=None, ctc=None):
        """Encode (see :meth:`SpikingTransformerEncoder.forward`); counts ops if enabled."""
        out, olens, states = super().forward(xs_pad, ilens, prev_states, ctc)
        if self.counter.enabled:
            self._count_dense_parts(ilens, olens)
        return out, olens, states

    def _count_dense_parts(self, ilens, olens) -> None:
        """MACs of the real-valued front and element ops outside the deploy modules."""
        size = self.output_size()
        frames = int(olens.sum())
        counter = self.counter
        for in_frames in ilens.tolist():
            for cost in conv_front_costs(self.embed, in_frames, self.input_size):
                counter.add("embed", "mac", cost.flops)
        counter.add("embed", "other", frames * size)  # positional encoding
        norms = 2 * len(self.encoders) + (1 if self.normalize_before else 0)
        counter.add("layer_norm", "other", 5 * norms * frames * size)
        counter.add("residual", "other", 2 * len(self.encoders) * frames * size)

    def encoder_conf(self) -> dict:
        """The ``encoder_conf`` of this encoder (options, ASR extras, execution)."""
        return dict(
            self.options.as_dict(), execution=self.execution,
            interctc_layer_idx=list(self.interctc_layer_idx),
            interctc_use_conditioning=self.interctc_use_conditioning,
        )


@torch.no_grad()
def convert_encoder(trained: SpikingTransformerEncoder, execution: str = "spike_train"):
    """Build the deploy form of a trained encoder and load its converted weights.

    Args:
        trained: A trained IMLSpikeformerEncoder with firing imls or mls.
        execution: "spike_train" or "multi_level".

    Returns:
        IMLSpikeformerDeployEncoder in eval mode, on the trained encoder's device/dtype.
    """
    if type(trained) is not IMLSpikeformerEncoder:  # a programming error, not a user's
        raise TypeError(
            f"expected an IMLSpikeformerEncoder, got {type(trained).__name__}"
        )
    options = trained.options
    deploy = IMLSpikeformerDeployEncoder(
        trained.input_size, execution=execution, **options.as_dict(),
        interctc_layer_idx=list(trained.interctc_layer_idx),
        interctc_use_conditioning=trained.interctc_use_conditioning,
    )
    reference = next(trained.parameters())
    deploy.to(device=reference.device, dtype=reference.dtype)
    if trained.embed is not None:
        deploy.embed.load_state_dict(trained.embed.state_dict())
    if options.normalize_before:
        deploy.after_norm.load_state_dict(trained.after_norm.state_dict())
    if trained.conditioning_layer is not None:
        deploy.conditioning_layer = trained.conditioning_layer
    for ours, theirs in zip(deploy.encoders, trained.encoders):
        ours.norm1.load_state_dict(theirs.norm1.state_dict())
        ours.norm2.load_state_dict(theirs.norm2.state_dict())
        _freeze(ours.attn_input_neuron, theirs.attn_input_neuron)
        _freeze(ours.mlp_input_neuron, theirs.mlp_input_neuron)
        attn, trained_attn = ours.self_attn, theirs.self_attn
        if attn.kind == "sdsa3":
            for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
                getattr(attn, name).load_from(getattr(trained_attn, name))
            for name in ("query_neuron", "key_neuron"):
                _freeze(getattr(attn, name), getattr(trained_attn, name))
        else:
            attn.load_from(trained_attn)
        _freeze(attn.value_neuron, trained_attn.value_neuron)
        _freeze(attn.attention_neuron, trained_attn.attention_neuron)
        mlp, trained_mlp = ours.feed_forward, theirs.feed_forward
        mlp.w_1.load_from(trained_mlp.w_1)
        mlp.w_2.load_from(trained_mlp.w_2)
        _freeze(mlp.hidden_neuron, trained_mlp.hidden_neuron)
    return deploy.eval()


def _freeze(frozen: FrozenThresholdNeuron, trained: torch.nn.Module) -> None:
    if isinstance(trained, InputAwareMultiLevelSpikeNeuron):
        frozen.divisor.copy_(trained.eval_threshold())
    elif isinstance(trained, MultiLevelSpikeNeuron):
        frozen.divisor.fill_(trained.threshold)
    else:
        raise OptionError(f"cannot freeze a {type(trained).__name__}")
