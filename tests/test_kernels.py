"""`make test` runs the float comparisons a third time on other kernels (Makefile: OTHER_KERNELS); this checks that
those kernels really round differently from the machine's own, so that pass tests what it claims to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}
ON_OTHER_KERNELS = all(os.environ.get(k) == v for k, v in OTHER_KERNELS.items())

# A matrix product (MKL) and two reductions (ATen: a sum and a log-softmax), printed to the last bit.
PROBE = (
    "import torch; torch.manual_seed(0); a = torch.randn(64, 1000); b = torch.randn(1000, 63); x = torch.randn(4096) * 1e3\n"
    "print((a @ b).double().sum().item().hex(), x.sum().item().hex(), torch.log_softmax(x / 1e3, 0)[0].item().hex())"
)


def probe(env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.split()


@pytest.mark.skipif(not ON_OTHER_KERNELS, reason="only in make test's pass on other float kernels")
def test_the_other_kernels_round_differently_from_this_machines():
    own = {k: v for k, v in os.environ.items() if k not in OTHER_KERNELS}
    here, default = probe(dict(os.environ)), probe(own)
    assert here[0] != default[0], "MKL_CBWR=COMPATIBLE did not change how matrix products round"
    assert here[1:] != default[1:], "ATEN_CPU_CAPABILITY=default did not change how reductions round"
