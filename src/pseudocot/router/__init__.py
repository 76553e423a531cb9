"""The router: after each base answer, is another thought worth its cost?

Trained on the base model's own traces with thoughts forced up to `max_thoughts` (`pseudocot
router`): each answer is labelled by whether continuing turns a wrong answer right, described by
the base model's pooled hidden state, its answer-token log-probabilities, the iteration and whether
the answer changed, and scored by a small MLP whose threshold is chosen on validation.

- `features`: the router's inputs; `labels`: forced traces to arrays, right or wrong by the task's
  own scoring; `policy`: stopping policies simulated on traces, the threshold, the baselines;
- `model`: the MLPs, their training and their files.

The stage that collects traces and trains it is `pseudocot.stages.router` (this package never runs
the pipeline).

    pseudocot router --config demo
"""
