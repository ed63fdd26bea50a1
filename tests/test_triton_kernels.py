"""The Triton kernels of IMLS firing, run on the CPU through Triton's interpreter.

The kernels' own checks (``interpreted_kernel_checks.py``) and the fast-path tests
(``test_fast_paths.py``, fused neuron, whole encoder, eval) run in a subprocess where
``kernels.available`` is true for CPU tensors, so every comparison with the reference
path there goes through the kernels; the plugin ``triton_interpreter.py`` counts their
launches (a silent fallback to PyTorch would launch none).
"""

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO

triton = pytest.importorskip("triton")


def test_kernels_equal_the_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", IMLSPIKE_TRITON="1",
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "triton_interpreter",
         "-p", "no:cacheprovider", "tests/interpreted_kernel_checks.py",
         "tests/interpreted_attention_kernel_checks.py",
         "tests/interpreted_input_kernel_checks.py",
         "tests/test_fast_paths.py", "-k", "not bench_scripts"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    launches = dict(re.findall(r"(\w+)=(\d+)", result.stdout.split("kernel launches:")[1]))
    # fast-path tests fire through the kernels in training (with statistics) and eval
    assert all(int(n) >= 20 for n in launches.values()), launches
