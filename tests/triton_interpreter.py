"""pytest plugin: the IMLS Triton kernels run on the CPU in Triton's interpreter.

Loaded by ``test_triton_kernels.py`` in a subprocess with ``TRITON_INTERPRET=1`` and
``IMLSPIKE_TRITON=1``. Two of the interpreter's numpy emulations round differently from
the GPU, and are made faithful here, so that the bit-exact comparisons of the fast-path
tests hold for the kernels' arithmetic:

* ``tl.fma`` is emulated as ``x * y + z`` (two roundings); the GPU instruction rounds
  once. Here: the product and sum in float64 (exact for float32 factors), rounded once.
* float32 -> bfloat16 casts truncate; the GPU rounds to nearest even (as torch does).

It also counts the kernel launches, printed at the end, so the caller can tell that the
kernels ran and not the PyTorch fallback.
"""

import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter

from espnet_imlspike.fast import kernels

_launches = {"fire": 0, "fire_backward": 0, "partial_max": 0, "finish_threshold": 0}


def _fma(self, x, y, z):
    assert z.data.dtype == np.float32, "exact emulation only for float32"
    exact = x.data.astype(np.float64) * y.data.astype(np.float64) + z.data.astype(np.float64)
    return interpreter.TensorHandle(exact.astype(np.float32), z.dtype.scalar)


def _to_bfloat16(data):
    rounded = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(torch.bfloat16)
    return rounded.view(torch.int16).numpy().view(np.uint16)


def _rounding(original):
    def cast(self, src, dst_type, *rest):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return interpreter.TensorHandle(_to_bfloat16(src.data), tl.bfloat16)
        return original(self, src, dst_type, *rest)
    return cast


def _counting(name):
    original = getattr(kernels, name)

    def counted(*args, **kwargs):
        _launches[name] += 1
        return original(*args, **kwargs)
    return counted


Builder = interpreter.InterpreterBuilder
Builder.create_fma = _fma
Builder.cast_impl = _rounding(Builder.cast_impl)
Builder.create_fp_to_fp = _rounding(Builder.create_fp_to_fp)
for _name in _launches:
    setattr(kernels, _name, _counting(_name))


def pytest_sessionfinish(session, exitstatus):
    print("\nkernel launches: " + " ".join(f"{k}={v}" for k, v in _launches.items()))
