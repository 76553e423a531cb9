"""Stopping policies simulated on forced traces: labels, the cost-accuracy curve, the threshold, and
the baselines the router must beat.

A forced trace answers a question after 0, 1, ..., M thoughts (M <= max_thoughts; fewer when the
TTM ended its reasoning). With greedy decoding and a TTM prompt that does not read the base model's
answers, the answer a policy ends with after n thoughts is exactly answer n of that trace, so any
policy's accuracy and thought calls follow from the trace without running the models again.

Arrays: `correct` (N, M+1) bool, answer i right; `available` (N,) int, thoughts the trace has;
`scores` (N, M) float, the router's score after answer i (a policy continues while the score is at
least the threshold and thoughts remain); `cost` (N, M+1) float, optional, the estimated FLOPs of the
question when it stops after i thoughts (`labels.cost_matrix`: answers 0..i and thoughts 1..i).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pseudocot.errors import ConfigError


@dataclass
class Outcome:
    accuracy: float
    """Share of questions whose final answer is right."""
    calls_per_question: float
    """Thoughts written per question."""
    call_rate: float
    """calls_per_question relative to always (every available thought)."""
    flops_per_question: float | None = None
    """Estimated FLOPs per question (when the traces' costs are known)."""
    flops_rate: float | None = None
    """flops_per_question relative to always."""

    def as_dict(self) -> dict[str, float]:
        out = {"accuracy": round(self.accuracy, 6), "calls_per_question": round(self.calls_per_question, 6),
               "call_rate": round(self.call_rate, 6)}
        if self.flops_per_question is not None and self.flops_rate is not None:
            out.update(flops_per_question=float(f"{self.flops_per_question:.6g}"), flops_rate=round(self.flops_rate, 6))
        return out


def _with_cost(o: Outcome, cost: np.ndarray | None, available: np.ndarray, flops: float | None,
               reference: np.ndarray | None = None) -> Outcome:
    """`o` with its FLOPs per question (`flops`) and their rate against always's (under `reference`, the loop's costs,
    when `cost` is another mode's), when `cost` is known."""
    if cost is None or flops is None or not len(available):
        return o
    ref = cost if reference is None else reference
    always = float(ref[np.arange(len(available)), available].mean())
    return Outcome(o.accuracy, o.calls_per_question, o.call_rate, flops, flops / max(always, 1e-30))


def _always_calls(available: np.ndarray) -> float:
    return float(available.mean()) if len(available) else 0.0


def outcome_at_depth(correct: np.ndarray, available: np.ndarray, depth: np.ndarray, cost: np.ndarray | None = None,
                     reference: np.ndarray | None = None, rejected: bool = False) -> Outcome:
    """Each question stops after `depth[q]` thoughts (clipped to what its trace has); its FLOPs from `cost`, their
    rate against always's under `reference` (default: `cost`). With `rejected` (a router that reads the thought
    first) a question that stops before its last thought also wrote the thought it rejected: one more call, whose
    cost `cost` includes (`labels.cost_matrix(..., rejected=True)`)."""
    n = np.minimum(depth, available).astype(int)
    acc = float(correct[np.arange(len(n)), n].mean()) if len(n) else 0.0
    calls = (n + (n < available)) if rejected else n
    o = Outcome(acc, float(calls.mean()) if len(n) else 0.0, float(calls.mean()) / max(_always_calls(available), 1e-12))
    return _with_cost(o, cost, available, float(cost[np.arange(len(n)), n].mean()) if cost is not None and len(n) else None,
                      reference)


def stop_depths(scores: np.ndarray, available: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T, N) thoughts written under each threshold: the first i with score_i < threshold, or all."""
    N, M = scores.shape
    cols = np.arange(M)
    # A step past the available thoughts counts as a stop.
    s = np.where(cols[None, :] < available[:, None], scores, -np.inf)  # (N, M)
    stop = s[None, :, :] < thresholds[:, None, None]  # (T, N, M)
    first = np.where(stop.any(-1), stop.argmax(-1), M)  # (T, N)
    return np.minimum(first, available[None, :])


def curve(correct: np.ndarray, available: np.ndarray, scores: np.ndarray, cost: np.ndarray | None = None,
          rejected: bool = False) -> list[tuple[float, Outcome]]:
    """(threshold, outcome) for every threshold that changes the policy, from always to never (`rejected`: the
    router reads each thought before the re-answer, see `outcome_at_depth`)."""
    uniq = np.unique(scores[np.isfinite(scores)])
    thresholds = np.concatenate([[-np.inf], uniq, [np.inf]])
    depths = stop_depths(scores, available, thresholds)
    return [(float(t), outcome_at_depth(correct, available, d, cost, rejected=rejected)) for t, d in zip(thresholds, depths)]


def choose_threshold(points: list[tuple[float, Outcome]], objective: str, penalty: float,
                     target_call_rate: float, target_flops_rate: float = 1.0) -> tuple[float, Outcome]:
    """`penalty`: maximise accuracy - penalty x call rate; `call_rate`: best accuracy within the call budget;
    `flops`: best accuracy within the FLOPs budget (relative to always). Ties go to fewer calls."""
    if objective in ("call_rate", "flops"):
        if objective == "flops" and any(p[1].flops_rate is None for p in points):
            raise ConfigError("router.objective is flops but the traces' FLOPs are unknown (a model without a parameter count); "
                              "use objective call_rate.")
        def rate(p: tuple[float, Outcome]) -> float:
            return p[1].call_rate if objective == "call_rate" else float(p[1].flops_rate or 0.0)

        budget = target_call_rate if objective == "call_rate" else target_flops_rate
        ok = [p for p in points if rate(p) <= budget + 1e-12] or [min(points, key=rate)]
        return max(ok, key=lambda p: (p[1].accuracy, -p[1].call_rate))
    if objective != "penalty":
        raise ConfigError(f"router.objective must be penalty, call_rate or flops, got {objective!r}.")
    # Compare with a tolerance: accuracy - penalty x rate rounds unevenly (0.8 - 0.5 x 0.4 exceeds
    # 0.7 - 0.5 x 0.2 in floats), which would send exact ties to the point with more calls.
    def value(p: tuple[float, Outcome]) -> float:
        return p[1].accuracy - penalty * p[1].call_rate

    best = max(value(p) for p in points)
    return min((p for p in points if value(p) >= best - 1e-9), key=lambda p: p[1].call_rate)


def finite_threshold(t: float, points: list[tuple[float, Outcome]]) -> float:
    """A threshold that can be written to JSON: the infinities become just outside the scores."""
    if np.isfinite(t):
        return t
    finite = [p[0] for p in points if np.isfinite(p[0])]
    return (min(finite, default=0.0) - 1.0) if t < 0 else (max(finite, default=1.0) + 1.0)


def random_at_rate(correct: np.ndarray, available: np.ndarray, calls_per_question: float,
                   cost: np.ndarray | None = None) -> Outcome:
    """Continue with a fixed probability p after every answer, p set so the expected thoughts per
    question equal `calls_per_question`; the exact expectation, not a sample."""

    def expect(p: float) -> tuple[float, float, float]:
        acc = calls = flops = 0.0
        for q, (c, m) in enumerate(zip(correct, available)):
            probs = np.array([p**i * (1 - p) for i in range(m)] + [p**m])  # stop after i thoughts
            acc += float((probs * c[: m + 1]).sum())
            calls += float((probs * np.arange(m + 1)).sum())
            if cost is not None:
                flops += float((probs * cost[q, : m + 1]).sum())
        n = max(1, len(available))
        return acc / n, calls / n, flops / n

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expect(mid)[1] < calls_per_question else (lo, mid)
    acc, calls, flops = expect((lo + hi) / 2)
    return _with_cost(Outcome(acc, calls, calls / max(_always_calls(available), 1e-12)), cost, available, flops)


HEURISTIC = re.compile(r"\d+|=")


def heuristic_wants(question: str) -> bool:
    """The rule from "To CoT or not to CoT": think when the question has a digit sequence or '='."""
    return bool(HEURISTIC.search(question))


def heuristic_at_rate(correct: np.ndarray, available: np.ndarray, questions: Sequence[str],
                      calls_per_question: float, cost: np.ndarray | None = None) -> Outcome:
    """Questions the rule selects get the same number of thoughts x (fractional x: a share of them get
    one more), x set so the thoughts per question equal `calls_per_question`; the others get none."""
    want = np.array([heuristic_wants(q) for q in questions])

    def expect(x: float) -> tuple[float, float, float]:
        lo, frac = int(np.floor(x)), x - np.floor(x)
        acc = calls = flops = 0.0
        for q, (c, m, w) in enumerate(zip(correct, available, want)):
            if not w:
                acc += float(c[0])
                flops += float(cost[q, 0]) if cost is not None else 0.0
                continue
            a, b = min(lo, m), min(lo + 1, m)
            acc += (1 - frac) * float(c[a]) + frac * float(c[b])
            calls += (1 - frac) * a + frac * b
            if cost is not None:
                flops += (1 - frac) * float(cost[q, a]) + frac * float(cost[q, b])
        n = max(1, len(available))
        return acc / n, calls / n, flops / n

    lo, hi = 0.0, float(available.max(initial=0))
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expect(mid)[1] < calls_per_question else (lo, mid)
    acc, calls, flops = expect((lo + hi) / 2)
    return _with_cost(Outcome(acc, calls, calls / max(_always_calls(available), 1e-12)), cost, available, flops)


def step_labels(correct: np.ndarray, available: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Rows (question, iteration) for every answer that could be followed by a thought, with
    `helps` (the answer is wrong and a later one is right) and `hurts` (right, and the next wrong)."""
    rows, helps, hurts = [], [], []
    for q, (c, m) in enumerate(zip(correct, available)):
        for i in range(m):
            rows.append((q, i))
            helps.append(not c[i] and bool(c[i + 1 : m + 1].any()))
            hurts.append(bool(c[i]) and not c[i + 1])
    return rows, np.array(helps, dtype=bool), np.array(hurts, dtype=bool)


def depth_labels(correct: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Fewest thoughts after which the answer is right (0 when none is, as thinking does not help)."""
    out = []
    for c, m in zip(correct, available):
        right = np.flatnonzero(c[: m + 1])
        out.append(int(right[0]) if len(right) else 0)
    return np.array(out, dtype=int)
