"""Each encoder form refuses the other form's state dict, even under non-strict loading.

ESPnet loads checkpoints with ``strict=False``: the deploy config with a training
checkpoint (or the reverse) would load nothing into the mismatched layers and decode
garbage with exit code 0. The training and deploy forms have parameter names that only
one of them uses; a load-state-dict pre-hook turns the other form's names into a load
error (PyTorch raises on recorded errors whatever ``strict`` says).
"""

import re

import torch

# parameter/buffer names (relative to the encoder) that only one form has
_ONLY_IN = {
    "deploy": re.compile(r"\.(divisor|w_qk|q_bias_term|k_bias_term|bias_product)$"
                         r"|\.synapse\.weight$"),
    "training": re.compile(r"\.running_max$|^encoders\.\d+\.feed_forward\.w_1\.weight$"),
}
FORMS = tuple(_ONLY_IN)


def guard_state_dict_form(encoder: torch.nn.Module, form: str) -> None:
    """Make ``encoder`` (of ``form``) refuse a state dict of the other form."""
    other = "training" if form == "deploy" else "deploy"

    def hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        foreign = [key for key in state_dict
                   if key.startswith(prefix) and _ONLY_IN[other].search(key[len(prefix):])]
        if foreign:
            errors.append(
                f"{type(module).__name__} is the {form} form, but the state dict is of "
                f"the {other} form (e.g. {foreign[0]!r}): use the config.yaml that was "
                f"written with this checkpoint"
                + (" (espnet_imlspike.bin.deploy writes the deploy pair)"
                   if form == "deploy" else " (the training run's config.yaml)")
            )

    encoder._register_load_state_dict_pre_hook(hook, with_module=True)
