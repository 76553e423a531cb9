"""Calibration of the router's heads: the expected calibration error of their probabilities and one temperature per
head that divides its logits (temperature scaling, Guo et al. 2017).

The temperature is fitted on the validation rows by log-likelihood; the error is reported on those rows before
scaling and, after scaling, cross-fitted (the temperature fitted on one half of the rows, the error measured on the
other, and the other way round), so the reported error is not measured on the rows that chose the temperature.
Dividing logits by a positive number keeps their order, so the router's decisions at a threshold chosen after it
and the answer it selects are the same; what changes is that a score of 0.8 means right about 80% of the time.
"""

from __future__ import annotations

import numpy as np
import torch

BINS = 10
"""Equal-width confidence bins of the error."""


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B,) sigmoid of one logit per row, or (B, K) softmax of K."""
    z = logits / temperature
    return torch.sigmoid(z.squeeze(-1)) if z.shape[-1] == 1 else torch.softmax(z, -1)


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error: over equal-width bins of confidence, the row-weighted mean of |accuracy - mean
    confidence|. Binary (B,) probabilities of the positive class are judged as they are (the share of positives in
    each bin); (B, K) by their top class (whether it is the label).

    >>> round(ece(torch.tensor([0.9, 0.9, 0.1, 0.1]), torch.tensor([1, 0, 0, 0])), 3)
    0.25
    """
    if not len(labels):
        return 0.0
    if probs.dim() == 1:
        conf, hit = probs.double(), labels.double()
    else:
        top = probs.max(-1)
        conf, hit = top.values.double(), (top.indices == labels.long()).double()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    err = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            err += float(m.sum()) * abs(float(hit[m].mean()) - float(conf[m].mean()))
    return err / len(labels)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Mean log-loss of `labels` under the logits / `temperature`: binary cross-entropy for one output, cross-entropy
    for several (what the router's heads train on and the temperature is fitted to)."""
    z = logits / temperature
    if z.shape[-1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(z.squeeze(-1), labels.float())
    return torch.nn.functional.cross_entropy(z, labels.long())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature in [0.05, 20] with the lowest log-loss of `labels` (a golden-section search on log T: the loss
    of temperature scaling is smooth and, in practice, unimodal in it)."""
    if not len(labels):
        return 1.0
    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        with torch.no_grad():
            return float(nll(logits.double(), labels, torch.tensor(np.exp(log_t), dtype=torch.float64)))

    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2))


def calibrate(logits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The temperature fitted on all rows, and the report: `ece` (before scaling), `ece_calibrated` (after, cross-fitted
    on two random halves), `temperature`."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    err, n = 0.0, 0
    for fit_on, judge in (halves, halves[::-1]):
        if len(judge):
            t = fit_temperature(logits[fit_on], labels[fit_on])
            err += ece(probabilities(logits[judge], t), labels[judge]) * len(judge)
            n += len(judge)
    temperature = fit_temperature(logits, labels)
    return temperature, {"ece": round(ece(probabilities(logits), labels), 6),
                         "ece_calibrated": round(err / max(n, 1), 6), "temperature": round(temperature, 6)}
