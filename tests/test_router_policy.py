"""Hand-worked checks of the stopping-policy simulation in `pseudocot.router.policy`.

Every expected value below is a literal worked out by hand (the arithmetic is in the comments); the
only computed references are an independent closed form and a seeded Monte-Carlo for the random
baseline. Pure numpy, no models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pseudocot.errors import ConfigError
from pseudocot.router.policy import (
    Outcome,
    choose_threshold,
    curve,
    depth_labels,
    finite_threshold,
    heuristic_at_rate,
    heuristic_wants,
    outcome_at_depth,
    random_at_rate,
    step_labels,
    stop_depths,
)

T, F = True, False
NAN = float("nan")

# The shared example: N=4 questions, M=2.
#   q0: wrong, right, right        (2 thoughts)
#   q1: right, wrong, wrong        (2 thoughts; thinking hurts)
#   q2: wrong, wrong, right        (2 thoughts)
#   q3: wrong, right | right       (1 thought; the last column repeats answer 1)
CORRECT = np.array([[F, T, T], [T, F, F], [F, F, T], [F, T, T]])
AVAILABLE = np.array([2, 2, 2, 1])
# Score after answer i (continue while score >= threshold). q3 has no score after answer 1 (NaN pad).
SCORES = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.7], [0.5, NAN]])
ALWAYS_CALLS = 1.75  # (2 + 2 + 2 + 1) / 4
QUESTIONS = [
    "What is 12 plus 7?",  # digits -> think
    "Who wrote Hamlet?",  # no digit, no '=' -> answer directly
    "If x = y, what is x?",  # '=' -> think
    "Is 3 prime?",  # digit -> think
]


def _check(o: Outcome, acc: float, calls: float, rate: float, tol: float = 1e-9) -> None:
    assert o.accuracy == pytest.approx(acc, abs=tol)
    assert o.calls_per_question == pytest.approx(calls, abs=tol)
    assert o.call_rate == pytest.approx(rate, abs=tol)


def _pt(t: float, acc: float, rate: float) -> tuple[float, Outcome]:
    return (t, Outcome(acc, rate * 2.0, rate))


# ---------------------------------------------------------------------------- outcome_at_depth


def test_outcome_at_depth_clips_to_available():
    # depths [5, 0, 1, 5] clip to [2, 0, 1, 1] -> correct[q, n] = T, T, F, T -> 3/4; calls 4/4 = 1
    # call_rate = 1 / 1.75 = 4/7
    o = outcome_at_depth(CORRECT, AVAILABLE, np.array([5, 0, 1, 5]))
    _check(o, 0.75, 1.0, 4 / 7)
    assert o.as_dict() == {"accuracy": 0.75, "calls_per_question": 1.0, "call_rate": round(4 / 7, 6)}


# ---------------------------------------------------------------------------- stop_depths


def test_stop_depths_hand_example():
    # q0 [0.9, 0.2]: t<=0.2 -> 2; 0.2<t<=0.9 -> 1; t>0.9 -> 0
    # q1 [0.3, 0.8]: t<=0.3 -> 2; t>0.3 -> 0
    # q2 [0.6, 0.7]: t<=0.6 -> 2; t>0.6 -> 0
    # q3 [0.5, pad], 1 thought: t<=0.5 -> 1; t>0.5 -> 0
    th = np.array([-np.inf, 0.2, 0.3, 0.5, 0.6, 0.9, np.inf])
    expected = np.array([
        [2, 2, 2, 1],  # -inf
        [2, 2, 2, 1],  # 0.2 (score == threshold continues)
        [1, 2, 2, 1],  # 0.3
        [1, 0, 2, 1],  # 0.5
        [1, 0, 2, 0],  # 0.6
        [1, 0, 0, 0],  # 0.9
        [0, 0, 0, 0],  # +inf
    ])
    np.testing.assert_array_equal(stop_depths(SCORES, AVAILABLE, th), expected)


def test_stop_depths_respects_available():
    # M=3, every score high: the policy would think forever, so each question stops at its trace's
    # end: available = [0, 1, 2, 3]. Scores past `available` (even low ones) must not matter.
    scores = np.array([
        [0.1, 0.1, 0.1],  # available 0: all padding
        [0.9, 0.1, 0.1],  # available 1: 0.1s are padding
        [0.9, 0.9, 0.1],  # available 2
        [0.9, 0.9, 0.9],  # available 3
    ])
    available = np.array([0, 1, 2, 3])
    th = np.array([-np.inf, 0.5, 0.95, np.inf])
    expected = np.array([
        [0, 1, 2, 3],  # -inf: all available thoughts
        [0, 1, 2, 3],  # 0.5: every real score 0.9 >= 0.5
        [0, 0, 0, 0],  # 0.95: first real score 0.9 < 0.95
        [0, 0, 0, 0],  # +inf
    ])
    np.testing.assert_array_equal(stop_depths(scores, available, th), expected)


# ---------------------------------------------------------------------------- curve


# (threshold, depths, accuracy, calls/question, call_rate = calls / 1.75)
CURVE = [
    (-np.inf, [2, 2, 2, 1], 3 / 4, 7 / 4, 1.0),  # T F T T ; 7/4
    (0.2, [2, 2, 2, 1], 3 / 4, 7 / 4, 1.0),  # same as always
    (0.3, [1, 2, 2, 1], 3 / 4, 6 / 4, 6 / 7),  # T F T T ; 6/4
    (0.5, [1, 0, 2, 1], 4 / 4, 4 / 4, 4 / 7),  # T T T T ; 4/4
    (0.6, [1, 0, 2, 0], 3 / 4, 3 / 4, 3 / 7),  # T T T F ; 3/4
    (0.7, [1, 0, 0, 0], 2 / 4, 1 / 4, 1 / 7),  # T T F F ; 1/4
    (0.8, [1, 0, 0, 0], 2 / 4, 1 / 4, 1 / 7),
    (0.9, [1, 0, 0, 0], 2 / 4, 1 / 4, 1 / 7),  # 0.9 >= 0.9 still thinks once on q0
    (np.inf, [0, 0, 0, 0], 1 / 4, 0.0, 0.0),  # F T F F ; never
]


def test_curve_hand_example():
    pts = curve(CORRECT, AVAILABLE, SCORES)
    # thresholds: -inf, the 7 distinct finite scores (NaN pad dropped), +inf
    assert [t for t, _ in pts] == pytest.approx([row[0] for row in CURVE])
    for (_, o), (_, _, acc, calls, rate) in zip(pts, CURVE):
        _check(o, acc, calls, rate)
    # the ends are always and never
    _check(pts[0][1], 0.75, ALWAYS_CALLS, 1.0)
    _check(pts[-1][1], 0.25, 0.0, 0.0)


# ---------------------------------------------------------------------------- choose_threshold


@pytest.mark.parametrize("penalty, t_best, acc, rate", [
    # acc - penalty x rate over the curve points (-inf, 0.3, 0.5, 0.6, 0.7, inf):
    (0.0, 0.5, 1.0, 4 / 7),  # plain best accuracy: 1.0 at 0.5
    # 0.5: 0.25, 0.321, 0.714 (=1-2/7), 0.536, 0.429, 0.25 -> 0.5
    (0.5, 0.5, 1.0, 4 / 7),
    # 1.0: -0.25, -0.107, 0.429 (=1-4/7), 0.321, 0.357, 0.25 -> 0.5
    (1.0, 0.5, 1.0, 4 / 7),
    # 2.0: -1.25, -0.96, -0.143, -0.107, 0.214 (=0.5-2/7), 0.25 -> never
    (2.0, np.inf, 0.25, 0.0),
    # 1.75: 0.7 gives 0.5 - 1.75/7 = 0.25 = never's 0.25 - 0 -> tie goes to fewer calls: never
    (1.75, np.inf, 0.25, 0.0),
])
def test_choose_threshold_penalty_on_curve(penalty, t_best, acc, rate):
    pts = curve(CORRECT, AVAILABLE, SCORES)
    t, o = choose_threshold(pts, "penalty", penalty, 0.0)
    assert t == t_best
    assert o.accuracy == pytest.approx(acc)
    assert o.call_rate == pytest.approx(rate)


@pytest.mark.parametrize("target, t_ok, acc, rate", [
    (1.0, (0.5,), 1.0, 4 / 7),  # everything fits: best accuracy 1.0 at 0.5
    (0.5, (0.6,), 0.75, 3 / 7),  # 4/7 = 0.571 > 0.5; best under it is 0.6 (3/4 at 3/7)
    (0.2, (0.7, 0.8, 0.9), 0.5, 1 / 7),  # only 1/7 and 0 fit: 0.5 beats 0.25
    (0.0, (np.inf,), 0.25, 0.0),  # only never fits
    (-0.1, (np.inf,), 0.25, 0.0),  # budget below every point: the cheapest point
])
def test_choose_threshold_call_rate_on_curve(target, t_ok, acc, rate):
    pts = curve(CORRECT, AVAILABLE, SCORES)
    t, o = choose_threshold(pts, "call_rate", 0.0, target)
    assert t in t_ok
    assert o.accuracy == pytest.approx(acc)
    assert o.call_rate == pytest.approx(rate)


def test_choose_threshold_ties_go_to_fewer_calls():
    pts = [_pt(0.1, 0.8, 0.6), _pt(0.2, 0.8, 0.4), _pt(0.3, 0.7, 0.2)]
    # call_rate, budget 0.7: accuracies 0.8, 0.8, 0.7 -> tie between 0.6 and 0.4 -> 0.4 (t=0.2)
    assert choose_threshold(pts, "call_rate", 0.0, 0.7)[0] == 0.2
    # penalty 0: same tie on accuracy -> fewer calls
    assert choose_threshold(pts, "penalty", 0.0, 0.0)[0] == 0.2
    # penalty 0.5: 0.8-0.3=0.5, 0.8-0.2=0.6, 0.7-0.1=0.6 -> tie 0.6 -> fewer calls (t=0.3)
    assert choose_threshold(pts, "penalty", 0.5, 0.0)[0] == 0.3
    # An exact tie that floating point rounds unevenly: 0.3-0.1 (=0.19999999999999998 in floats)
    # vs 0.4-0.2 (=0.2) at penalty 1 -> both 0.2 exactly -> fewer calls (t=0.1)
    pts = [_pt(0.1, 0.3, 0.1), _pt(0.2, 0.4, 0.2)]
    assert choose_threshold(pts, "penalty", 1.0, 0.0)[0] == 0.1


def test_choose_threshold_budget_below_every_point():
    # no point has call rate <= 0.1 -> the cheapest point (rate 0.3), though it is less accurate
    pts = [_pt(0.1, 0.6, 0.5), _pt(0.2, 0.5, 0.3)]
    t, o = choose_threshold(pts, "call_rate", 0.0, 0.1)
    assert t == 0.2 and o.accuracy == 0.5


def test_choose_threshold_rejects_unknown_objective():
    with pytest.raises(ConfigError, match="router.objective"):
        choose_threshold([_pt(0.1, 0.5, 0.5)], "accuracy", 0.0, 0.0)


def test_finite_threshold():
    pts = curve(CORRECT, AVAILABLE, SCORES)  # finite thresholds span 0.2 .. 0.9
    assert finite_threshold(0.6, pts) == 0.6
    assert finite_threshold(-np.inf, pts) == pytest.approx(-0.8)  # 0.2 - 1
    assert finite_threshold(np.inf, pts) == pytest.approx(1.9)  # 0.9 + 1
    # no finite thresholds at all: the defaults
    only_ends = [_pt(-np.inf, 0.5, 1.0), _pt(np.inf, 0.2, 0.0)]
    assert finite_threshold(-np.inf, only_ends) == -1.0
    assert finite_threshold(np.inf, only_ends) == 2.0


# ---------------------------------------------------------------------------- random_at_rate


def test_random_at_rate_ends():
    # calls 0 -> p = 0 -> never: accuracy 1/4, no calls
    _check(random_at_rate(CORRECT, AVAILABLE, 0.0), 0.25, 0.0, 0.0)
    # calls = always's 1.75 -> p = 1 -> always: accuracy 3/4
    _check(random_at_rate(CORRECT, AVAILABLE, ALWAYS_CALLS), 0.75, 1.75, 1.0)


def test_random_at_rate_closed_form():
    # P(at least i thoughts) = p^i, so E[calls] = (3 x (p + p^2) + p) / 4 = (4p + 3p^2) / 4.
    # Target 1: 3p^2 + 4p - 4 = 0 -> p = (-4 + sqrt(16 + 48)) / 6 = 2/3.
    # Stop after 0/1/2 thoughts with probs 1/3, 2/9, 4/9 (2 thoughts) or 1/3, 2/3 (1 thought):
    #   q0 [F,T,T]: 2/9 + 4/9 = 6/9;  q1 [T,F,F]: 3/9;  q2 [F,F,T]: 4/9;  q3 [F,T]: 6/9
    #   accuracy = (6 + 3 + 4 + 6) / 9 / 4 = 19/36
    _check(random_at_rate(CORRECT, AVAILABLE, 1.0), 19 / 36, 1.0, 1 / 1.75)


def test_random_at_rate_monte_carlo():
    # Target 0.5: 3p^2 + 4p - 2 = 0 -> p = (-4 + sqrt(40)) / 6 ~= 0.3874. Simulate the policy.
    p = (-4 + math.sqrt(40)) / 6
    rng = np.random.default_rng(0)
    reps = 100_000
    cont = rng.random((reps, len(AVAILABLE), CORRECT.shape[1] - 1)) < p  # continue after answer i?
    # thoughts = number of leading "continue"s, capped at available
    lead = np.where((~cont).any(-1), (~cont).argmax(-1), cont.shape[-1])
    depth = np.minimum(lead, AVAILABLE[None, :])
    acc = CORRECT[np.arange(len(AVAILABLE))[None, :], depth].mean()
    calls = depth.mean(-1).mean()
    o = random_at_rate(CORRECT, AVAILABLE, 0.5)
    assert calls == pytest.approx(0.5, abs=0.01)  # sanity of the simulation's p
    _check(o, acc, 0.5, 0.5 / 1.75, tol=0.01)


# ---------------------------------------------------------------------------- heuristic


def test_heuristic_wants():
    assert [heuristic_wants(q) for q in QUESTIONS] == [T, F, T, T]
    assert not heuristic_wants("")
    assert heuristic_wants("x=y")
    assert heuristic_wants("007")


@pytest.mark.parametrize("target, acc, calls", [
    # Selected: q0 (2 thoughts), q2 (2), q3 (1); q1 always answers at 0 (right).
    # x=0: F T F F -> 1/4
    (0.0, 0.25, 0.0),
    # x in [0,1]: calls = 3x/4 = 0.6 -> x = 0.8: q0 0.2*F + 0.8*T = 0.8; q1 1; q2 0;
    # q3 0.2*F + 0.8*T = 0.8 -> (0.8 + 1 + 0 + 0.8) / 4 = 0.65
    (0.6, 0.65, 0.6),
    # x in [1,2]: calls = (2x + 1) / 4 (q3 capped at 1) = 1.0 -> x = 1.5: q0 0.5*T + 0.5*T = 1;
    # q1 1; q2 0.5*F + 0.5*T = 0.5; q3 answer 1 = 1 -> 3.5/4 = 0.875
    (1.0, 0.875, 1.0),
    # above what the rule can spend (x = 2: 5/4 calls): saturates at x = 2 -> T T T T
    (1.75, 1.0, 1.25),
])
def test_heuristic_at_rate(target, acc, calls):
    o = heuristic_at_rate(CORRECT, AVAILABLE, QUESTIONS, target)
    _check(o, acc, calls, calls / 1.75)


# ---------------------------------------------------------------------------- labels


def test_step_labels_hand_example():
    rows, helps, hurts = step_labels(CORRECT, AVAILABLE)
    assert rows == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
    # q0 [F,T,T]: i0 wrong, later right -> helps; i1 right, next right -> neither
    # q1 [T,F,F]: i0 right, next wrong -> hurts; i1 wrong, nothing later right -> neither
    # q2 [F,F,T]: i0 and i1 wrong with answer 2 right -> helps, helps
    # q3 [F,T]:   i0 wrong, answer 1 right -> helps
    np.testing.assert_array_equal(helps, [T, F, F, F, T, T, T])
    np.testing.assert_array_equal(hurts, [F, F, T, F, F, F, F])


def test_step_labels_respect_available():
    # answers past `available` (here deliberately not a repeat of the last one) must be ignored
    correct = np.array([[F, F, T], [T, T, T], [T, F, F]])
    available = np.array([1, 0, 1])
    rows, helps, hurts = step_labels(correct, available)
    assert rows == [(0, 0), (2, 0)]  # q1 has no thought, so no row
    np.testing.assert_array_equal(helps, [F, F])  # q0: answer 1 wrong; answer 2 does not exist
    np.testing.assert_array_equal(hurts, [F, T])  # q2: right then wrong


def test_depth_labels():
    # q0 first right at 1; q1 at 0; q2 at 2; q3 at 1
    np.testing.assert_array_equal(depth_labels(CORRECT, AVAILABLE), [1, 0, 2, 1])
    # never right within the trace -> 0 (a right answer past `available` does not count)
    correct = np.array([[F, F, T], [F, F, F], [F, T, T]])
    np.testing.assert_array_equal(depth_labels(correct, np.array([1, 2, 0])), [0, 0, 0])


# FLOPs of each question when it stops after 0, 1, 2 thoughts (answer 0 costs 10, each thought + re-answer 4 more;
# q3 has one thought, so stopping "after 2" costs what its whole trace does).
COST = np.array([[10.0, 14.0, 18.0], [10.0, 14.0, 18.0], [10.0, 14.0, 18.0], [10.0, 14.0, 14.0]])
ALWAYS_FLOPS = (18 + 18 + 18 + 14) / 4


def test_outcomes_carry_flops_and_their_rate_against_always():
    o = outcome_at_depth(CORRECT, AVAILABLE, np.array([0, 1, 2, 1]), COST)
    assert o.flops_per_question == pytest.approx((10 + 14 + 18 + 14) / 4)
    assert o.flops_rate == pytest.approx(14 / ALWAYS_FLOPS)
    assert outcome_at_depth(CORRECT, AVAILABLE, AVAILABLE, COST).flops_rate == pytest.approx(1.0)
    assert outcome_at_depth(CORRECT, AVAILABLE, AVAILABLE).flops_per_question is None  # no costs: no FLOPs
    assert "flops_rate" not in outcome_at_depth(CORRECT, AVAILABLE, AVAILABLE).as_dict()
    # random at p = 2/3 (1 call per question, closed form above): stop after 0/1/2 with 1/3, 2/9, 4/9
    r = random_at_rate(CORRECT, AVAILABLE, 1.0, COST)
    assert r.flops_per_question == pytest.approx((3 * (10 / 3 + 14 * 2 / 9 + 18 * 4 / 9) + (10 / 3 + 14 * 2 / 3)) / 4)
    # the heuristic at 0 calls: every question stops at answer 0
    assert heuristic_at_rate(CORRECT, AVAILABLE, QUESTIONS, 0.0, COST).flops_per_question == pytest.approx(10.0)


def test_choose_threshold_within_a_flops_budget():
    pts = curve(CORRECT, AVAILABLE, SCORES, COST)
    assert all(p[1].flops_rate is not None for p in pts)
    t, o = choose_threshold(pts, "flops", 0.0, 0.0, 1.0)  # everything fits: the best accuracy, fewest calls
    assert o.accuracy == pytest.approx(1.0)
    t, o = choose_threshold(pts, "flops", 0.0, 0.0, 12.0 / ALWAYS_FLOPS)  # only near-never fits
    assert o.flops_rate <= 12.0 / ALWAYS_FLOPS + 1e-12
    assert max(p[1].accuracy for p in pts if p[1].flops_rate <= 12.0 / ALWAYS_FLOPS + 1e-12) == o.accuracy
    with pytest.raises(ConfigError, match="FLOPs are unknown"):
        choose_threshold(curve(CORRECT, AVAILABLE, SCORES), "flops", 0.0, 0.0, 0.5)


def test_router_fit_is_the_same_whatever_the_process_drew_before():
    """Dropout draws from the global generator: the fit seeds it (router.seed), so two runs of one config train the
    same router even when model loading or sampling drew different random numbers before, and the caller's
    generator is left as it was."""
    import torch

    from pseudocot.config.schema import RouterConfig
    from pseudocot.router.model import fit

    g = torch.Generator().manual_seed(1)
    x, x_val = torch.randn(64, 5, generator=g), torch.randn(16, 5, generator=g)
    y, y_val = x[:, 0] > 0, x_val[:, 0] > 0
    cfg = RouterConfig(dropout=0.3, max_epochs=5, hidden_size=8)
    states = []
    for drawn in (0, 1000):
        torch.manual_seed(123)
        torch.rand(drawn)
        before = torch.get_rng_state()
        model, _ = fit(x, y, x_val, y_val, 1, cfg)
        assert torch.equal(torch.get_rng_state(), before)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_depth_mode_pays_one_answer_with_all_its_thoughts():
    """Mode depth: the TTM writes i thoughts, the base answers once with them all in context (its whole prompt
    charged); the rate is against the loop's always."""
    from types import SimpleNamespace as NS

    from pseudocot.router.labels import cost_matrix

    answers = [NS(prompt_tokens=20 + 6 * i, cached_tokens=0 if i == 0 else 18 + 6 * i, tokens=4) for i in range(3)]
    thoughts = [NS(prompt_tokens=15 + 5 * j, cached_tokens=0 if j == 0 else 15 + 5 * j - 1, tokens=5) for j in range(2)]
    t = NS(answers=answers, thoughts=thoughts)
    params = {"base": 100, "ttm": 10}
    loop = cost_matrix([t], np.array([2]), 2, params)
    depth = cost_matrix([t], np.array([2]), 2, params, depth=True)
    # the loop after 2 thoughts: base (20 + 4) + (26 - 24 + 4) + (32 - 30 + 4), TTM (15 + 5) + (20 - 19 + 5)
    assert loop[0, 2] == 2 * (100 * (24 + 6 + 6) + 10 * (20 + 6))
    # depth 2: one answer over its whole 32-token prompt, the same two thoughts
    assert depth[0, 2] == 2 * (100 * (32 + 4) + 10 * (20 + 6))
    o = outcome_at_depth(np.array([[False, False, True]]), np.array([2]), np.array([2]), depth, reference=loop)
    assert o.flops_rate == pytest.approx(depth[0, 2] / loop[0, 2])


def test_a_router_that_reads_the_thought_pays_for_the_one_it_rejects():
    # stopping after n thoughts of 2 available (q3: 1): the thought read and rejected is one more call
    o = outcome_at_depth(CORRECT, AVAILABLE, np.array([0, 1, 2, 1]), rejected=True)
    assert o.calls_per_question == pytest.approx((1 + 2 + 2 + 1) / 4)  # q0 wrote 1, rejected it; q1 2; q2 2; q3 1 (its last)
    assert o.accuracy == outcome_at_depth(CORRECT, AVAILABLE, np.array([0, 1, 2, 1])).accuracy  # the same answers
    from types import SimpleNamespace as NS

    from pseudocot.router.labels import cost_matrix

    t = NS(answers=[NS(prompt_tokens=10, cached_tokens=0, tokens=2)] * 3,
           thoughts=[NS(prompt_tokens=5, cached_tokens=0, tokens=3)] * 2)
    params = {"base": 100, "ttm": 10}
    plain, first = cost_matrix([t], np.array([2]), 2, params), cost_matrix([t], np.array([2]), 2, params, rejected=True)
    assert first[0, 0] - plain[0, 0] == 2 * 10 * 8  # stop at answer 0: thought 1 was written and rejected
    assert first[0, 2] == plain[0, 2]  # stop after the last thought: nothing rejected


def test_selected_correct_returns_the_best_scored_answer_so_far():
    from pseudocot.router.labels import selected_correct

    # answers 0..2 of one question: right, right, wrong; the head likes answer 1 best, then 0
    correct = np.array([[True, True, False], [False, True, True]])
    scores = np.array([[0.6, 0.9, 0.1], [0.5, 0.5, -np.inf]])
    available = np.array([2, 1])
    picked = selected_correct(correct, scores, available)
    assert picked[0].tolist() == [True, True, True]  # stopping after 2 thoughts still returns answer 1
    # a tie goes to the later answer; past the trace's end its last answer is the latest
    assert picked[1].tolist() == [False, True, True]


def test_next_step_classes_hand_example():
    from pseudocot.router.labels import next_step_classes

    correct = np.array([[False, True, False, False], [True, True, True, True]])
    assert next_step_classes(correct, np.array([3, 2])).tolist() == [1, 2, 0, 0, 0]


def test_ece_and_temperature_scaling():
    import torch

    from pseudocot.router.calibration import calibrate, ece, fit_temperature, probabilities

    # a perfectly confident, always right head has no error; one that says 0.9 and is right half the time has 0.4
    assert ece(torch.tensor([1.0, 1.0]), torch.tensor([1, 1])) == 0.0
    assert ece(torch.tensor([0.9, 0.9]), torch.tensor([1, 0])) == pytest.approx(0.4)
    # top-class error of a 3-class head: confidence 0.7, right 1 of 2
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2]])
    assert ece(p, torch.tensor([0, 2])) == pytest.approx(0.2)
    # logits twice too sharp: labels drawn from sigmoid(z / 2) -> a fitted temperature near 2, and a smaller error
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 1, generator=gen) * 4
    y = (torch.rand(20000, generator=gen) < torch.sigmoid(z.squeeze(-1) / 2)).long()
    t = fit_temperature(z, y)
    assert 1.8 < t < 2.2  # the binomial noise of 20,000 draws moves it by a few hundredths
    temperature, report = calibrate(z, y)
    assert report["ece_calibrated"] < report["ece"] and ece(probabilities(z, temperature), y) < report["ece"]
