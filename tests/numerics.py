"""Tolerances that follow from the arithmetic, not from one machine's kernels (shared by the loss tests).

A float32 computation of a loss or gradient is off from the exact value by rounding: each reduction of n terms by at
most about n u sum|terms| (u = 2^-24, float32's unit roundoff), more where the terms cancel, and which kernel sums in
which order differs between CPUs (AVX2, AVX512, AVX512-BF16 machines round differently). So a float32 result is not
compared with another float32 result at a fixed tolerance; it is compared with the float64 truth of the same
computation (whose own rounding is 2^29 times smaller), against the error the plain, unchunked float32 form makes of
that same truth on the same machine. Both forms do the same reductions of the same lengths in other orders, so their
errors are of one size: within `FACTOR` of each other, plus a few roundings of each element of the result.
"""

from __future__ import annotations

import torch

U32 = 2.0**-24
"""float32 unit roundoff."""
U64 = 2.0**-53
"""float64 unit roundoff."""
FACTOR = 16.0
"""How much larger one float32 order of the same reductions may make the error than another: the worst-case bound is
the same for both, and actual errors spread around it by a few times (the chunked gradient of SmolLM2's distillation
loss was 3.3 times the plain one's error on an AVX2 CPU); a wrong formula shows instead as an error of the result's own
size, ten thousand times more."""
ELEMENT_ROUNDINGS = 64
"""Roundings of each result element (its last products and sums) that either form adds on its own."""


def norm_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    """||x - truth|| in float64."""
    return float((x.double() - truth.double()).norm())


def as_accurate_as(candidate: torch.Tensor, plain: torch.Tensor, truth: torch.Tensor) -> tuple[bool, str]:
    """Whether the float32 `candidate` is as close to the float64 `truth` as the float32 `plain` form is (within
    `FACTOR`, plus `ELEMENT_ROUNDINGS` roundings of the result's size), and a line saying by how much."""
    err_c, err_p = norm_error(candidate, truth), norm_error(plain, truth)
    scale = float(truth.double().norm())
    bound = FACTOR * err_p + ELEMENT_ROUNDINGS * U32 * scale
    return err_c <= bound, f"candidate error {err_c:.3g}, plain error {err_p:.3g}, bound {bound:.3g}, |truth| {scale:.3g}"
