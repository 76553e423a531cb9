"""The router networks, their training with early stopping, and their files.

`StepRouter` scores an answer (probability that another thought turns it right, or, trained on the next step's
marginal value, its expected gain); `AnswerHead` scores how likely an answer is right, so the loop can return the
best-scored answer of a trajectory; `DepthRouter` reads only the question and picks a number of thoughts. Each is a
standardisation layer and a one-hidden-layer MLP, saved as safetensors beside `router.json`; the step and answer
heads divide their logits by a temperature fitted on validation (`router.calibration`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pseudocot.errors import ConfigError, ModelError
from pseudocot.files import atomic_path, atomic_write_text
from pseudocot.layout import ANSWER_WEIGHTS, DEPTH_WEIGHTS, ROUTER_INFO, ROUTER_WEIGHTS
from pseudocot.router.calibration import nll, probabilities
from pseudocot.router.features import question_vector, step_vector


class MLP(nn.Module):
    """(B, D) standardised inputs -> (B, K) logits."""

    def __init__(self, dim: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def fit(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, out: int, cfg: Any) -> tuple[MLP, dict[str, Any]]:
    """Train an MLP (binary with one output, else K classes) with AdamW, keeping the epoch with the
    lowest validation loss and stopping after `cfg.patience` epochs without one."""
    # Dropout draws from the global generator: seed it for the whole fit (in a fork, so the caller's state is left as
    # it was), or the router would follow whatever the process drew before (model loading, sampling) and differ
    # between two runs of the same config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _fit(x, y, x_val, y_val, out, cfg)


def _fit(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, out: int, cfg: Any) -> tuple[MLP, dict[str, Any]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    model = MLP(x.shape[1], cfg.hidden_size, out, cfg.dropout)
    model.mean.copy_(x.mean(0))
    model.std.copy_(x.std(0).clamp_min(1e-6) if len(x) > 1 else torch.ones(x.shape[1]))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_loss, best_epoch, epoch = copy.deepcopy(model.state_dict()), float("inf"), 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            loss = nll(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(nll(model(x_val), y_val)) if len(x_val) else float(loss)
        if val < best_loss - 1e-6:
            best, best_loss, best_epoch = copy.deepcopy(model.state_dict()), val, epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best)
    model.eval()
    return model, {"epochs": epoch, "best_epoch": best_epoch, "val_loss": round(best_loss, 6)}


def _save(model: MLP, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))


def _load(path: Path, dim: int, hidden: int, out: int) -> MLP:
    from safetensors.torch import load_file

    model = MLP(dim, hidden, out, 0.0)
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model


def value_score(probs: torch.Tensor) -> torch.Tensor:
    """A step scored on its marginal value, classes (neutral, helps, hurts) -> (1 + P(helps) - P(hurts)) / 2: the
    expected change in correctness of one more thought, mapped to [0, 1] (0.5: no change expected)."""
    return (1 + probs[..., 1] - probs[..., 2]) / 2


class StepRouter:
    """Scores answers; the pipeline continues while the score is at least `threshold`. `labels` is what it was
    trained on (`router.labels`): `helps` (one output, the probability that a later thought turns a wrong answer
    right) or `value` (three, the next thought's neutral / helps / hurts, scored by `value_score`)."""

    def __init__(self, model: MLP, features: Sequence[str], threshold: float, max_thoughts: int, labels: str = "helps",
                 temperature: float = 1.0) -> None:
        self.model, self.features, self.threshold, self.max_thoughts = model, list(features), threshold, max_thoughts
        self.labels, self.temperature = labels, temperature

    def vectors(self, steps: Sequence[Any]) -> torch.Tensor:
        return torch.stack([step_vector(s, self.features, self.max_thoughts) for s in steps])

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) for one output (sigmoid), (B, K) for several (softmax), of the calibrated logits of inputs `x`."""
        with torch.no_grad():
            return probabilities(self.model(x), self.temperature)

    def score_vectors(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probabilities(x)
        return value_score(p) if self.labels == "value" else p

    def score(self, steps: Sequence[Any]) -> list[float]:
        return self.score_vectors(self.vectors(steps)).tolist()


class AnswerHead(StepRouter):
    """The probability that an answer is right (`Task.is_correct`), from the same inputs as the step router (the
    thoughts before the answer only); the loop returns the trajectory's best-scored answer (`router.select: best`)."""

    def __init__(self, model: MLP, features: Sequence[str], max_thoughts: int, temperature: float = 1.0) -> None:
        super().__init__(model, features, 0.0, max_thoughts, "helps", temperature)


class DepthRouter:
    """Question -> how many thoughts to write before the base model's one answer."""

    def __init__(self, model: MLP) -> None:
        self.model = model

    def depth(self, prompts: Sequence[str], base: Any, sessions: Sequence[Hashable] | None, max_thoughts: int) -> list[int]:
        x = torch.stack([question_vector(c) for c in question_completions(base, prompts, sessions)])
        with torch.no_grad():
            return self.model(x).argmax(-1).clamp_max(max_thoughts).tolist()


def question_completions(base: Any, prompts: Sequence[str], sessions: Sequence[Hashable] | None) -> list[Any]:
    """One prefill of each question prompt, for its pooled hidden state (the session keeps the cache)."""
    from pseudocot.generate.base import GenerationParams

    params = GenerationParams(max_new_tokens=1, hidden=True)
    if sessions is not None:
        return base.generate(list(prompts), params, sessions=list(sessions))
    return base.generate(list(prompts), params)


class Router:
    """What `pseudocot router` saved: the step router, and the depth router when trained."""

    def __init__(self, step: StepRouter, depth_router: DepthRouter | None, info: dict[str, Any],
                 answer: AnswerHead | None = None) -> None:
        self.step, self.depth_router, self.info, self.answer = step, depth_router, info, answer

    @property
    def features(self) -> list[str]:
        return self.step.features

    @property
    def threshold(self) -> float:
        return self.step.threshold

    @property
    def reads(self) -> str:
        """`answer`: it decides after each base answer; `thought`: after the TTM's next thought (`router.reads`)."""
        return str(self.info.get("reads", "answer"))

    @property
    def select(self) -> str:
        """`last`: the loop returns its last answer; `best`: the one the answer head scores highest (`router.select`)."""
        return str(self.info.get("select", "last")) if self.answer is not None else "last"

    def score(self, steps: Sequence[Any]) -> list[float]:
        return self.step.score(steps)

    def answer_scores(self, steps: Sequence[Any]) -> list[float]:
        """The answer head's probability that each answer is right."""
        if self.answer is None:
            raise ConfigError("this router has no answer head; train it again with `pseudocot router` to select answers.")
        return self.answer.score(steps)

    def depth(self, prompts: Sequence[str], base: Any, sessions: Sequence[Hashable] | None, max_thoughts: int) -> list[int]:
        if self.depth_router is None:
            raise ConfigError("this router has no depth model; train it with router.depth=true to use pipeline.mode=depth.")
        return self.depth_router.depth(prompts, base, sessions, max_thoughts)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        _save(self.step.model, folder / ROUTER_WEIGHTS)
        if self.depth_router is not None:
            _save(self.depth_router.model, folder / DEPTH_WEIGHTS)
        if self.answer is not None:
            _save(self.answer.model, folder / ANSWER_WEIGHTS)
        atomic_write_text(folder / ROUTER_INFO, json.dumps(self.info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Router:
        folder = Path(folder)
        meta = folder / ROUTER_INFO
        if not meta.is_file():
            raise ModelError(f"{meta}: no router here; train one with `pseudocot router`.")
        info = json.loads(meta.read_text())
        s = info["step"]
        step = StepRouter(_load(folder / ROUTER_WEIGHTS, s["input_dim"], s["hidden_size"], s.get("outputs", 1)),
                          info["features"], info["threshold"], info["max_thoughts"], info.get("labels", "helps"),
                          s.get("temperature", 1.0))
        depth = answer = None
        if info.get("depth"):
            d = info["depth"]
            depth = DepthRouter(_load(folder / DEPTH_WEIGHTS, d["input_dim"], d["hidden_size"], d["classes"]))
        if info.get("answer"):
            a = info["answer"]
            answer = AnswerHead(_load(folder / ANSWER_WEIGHTS, a["input_dim"], a["hidden_size"], 1), info["features"],
                                info["max_thoughts"], a.get("temperature", 1.0))
        return cls(step, depth, info, answer)
