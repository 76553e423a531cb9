"""The router: after each base answer, is another thought worth its cost?

Trained on the base model's own traces with thoughts forced up to `max_thoughts` (`pseudocot
router`): each answer is labelled by whether continuing turns a wrong answer right, described by
the base model's pooled hidden state, its answer-token log-probabilities, the iteration and whether
the answer changed, and scored by a small MLP whose threshold is chosen on validation.

    pseudocot router --config demo
"""
