"""What a captured CUDA graph depends on beyond its inputs.

A graph reads parameters, buffers and positional-encoding tables by address, and a
replay skips forward hooks: :class:`GraphWatch` reads both off a module's structure once,
so :class:`~espnet_imlspike.fast.graphs.EncoderGraphs` can drop its graphs when a tensor
was replaced (``model.to``, a dtype change) and refuse them while hooks are registered.
"""

import torch


class GraphWatch:
    """The tensors a graph reads by address (parameters, buffers, positional-encoding
    tables) and the hooks that would be skipped, read off a module's structure once."""

    def __init__(self, module: torch.nn.Module):
        self.modules = list(module.modules())
        self.slots = []
        for m in self.modules:
            self.slots += [(m._parameters, name) for name in m._parameters]
            self.slots += [(m._buffers, name) for name in m._buffers]
            if isinstance(m.__dict__.get("pe"), torch.Tensor):
                self.slots.append((m.__dict__, "pe"))

    def signature(self):
        tensors = [slot[name] for slot, name in self.slots]
        return tuple((t.data_ptr(), t.dtype, t.requires_grad) for t in tensors
                     if t is not None)

    def hooked(self) -> bool:
        from torch.nn.modules import module as module_mod

        if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)
