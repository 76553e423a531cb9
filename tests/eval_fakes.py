"""Fake models for the evaluation tests: pure-Python `Generator`s that play the base model and the TTM
of the Pseudo-CoT pipeline on arithmetic problems, a router, and a call counter.

The fake base model answers a one-step problem right, and a longer one right only once every gold
step is among its thoughts (else it is off by one); the fake TTM writes the next gold line. So
`never` < `router` <= `always` in accuracy, as the paper claims, and everything is deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pseudocot.config import ArithConfig, Config, EvalConfig, EvalTaskConfig, PipelineConfig, RunConfig
from pseudocot.data import arith
from pseudocot.data.chat import thought_lines
from pseudocot.data.jsonl import write_examples
from pseudocot.evaluate.systems import PipelineSystem, SystemEntry
from pseudocot.generate.base import Completion, GenerationParams
from pseudocot.pipeline import Pipeline


class Killed(Exception):
    """Stands for the process being killed half way."""


def find(examples: Sequence, prompt: str):
    """The example whose question the prompt holds (the longest match)."""
    hits = [e for e in examples if e.question in prompt]
    return max(hits, key=lambda e: len(e.question))


class FakeBase:
    def __init__(self, examples):
        self.examples = examples

    def generate(self, prompts, params: GenerationParams):
        out = []
        for p in prompts:
            ex = find(self.examples, p)
            steps = (ex.reasoning or "").splitlines()
            knows = len(steps) == 1 or all(s in p for s in steps)
            value = ex.answer if knows else str(int(ex.answer) + 1)
            out.append(Completion(text=f"The answer is {value}.", prompt_tokens=len(p) // 4, completion_tokens=6,
                                  seconds=0.001, finish_reason="stop", token_logprobs=[-0.1] * 6 if params.logprobs else None))
        return out


class FakeTTM:
    def __init__(self, examples):
        self.examples = examples

    def generate(self, prompts, params: GenerationParams):
        out = []
        for p in prompts:
            lines = thought_lines(find(self.examples, p))
            k = 0
            while k < len(lines) and lines[k] in p:
                k += 1
            if k < len(lines):
                out.append(Completion(text=lines[k], prompt_tokens=len(p) // 4, completion_tokens=len(lines[k]) // 2,
                                      seconds=0.001, finish_reason="stop", stop_string="\n"))
            else:  # nothing left to say: end of turn
                out.append(Completion(text="", prompt_tokens=len(p) // 4, completion_tokens=1, seconds=0.001,
                                      finish_reason="stop"))
        return out


class FakeRouter:
    """Think while fewer thoughts than steps exist, on multi-step problems, except every fourth."""

    features = ("logprobs",)
    threshold = 0.5
    info = {"max_thoughts": 3}

    def __init__(self, examples):
        self.examples = examples

    def score(self, steps):
        out = []
        for s in steps:
            ex = find(self.examples, s.question)
            n = int(ex.meta["steps"])
            skip = int(ex.id.rsplit("/", 1)[1]) % 4 == 0
            out.append(1.0 if n > 1 and s.iteration < n and not skip else 0.0)
        return out


class Counting:
    """A `Generator` wrapper that counts prompts, and raises `Killed` once `fail_after` calls are done."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.calls, self.prompts = inner, fail_after, 0, 0

    def generate(self, prompts, params):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Killed()
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, params)


def arith_data(folder, n=24, seed=7):
    examples = arith.generate(n, ArithConfig(max_steps=3), seed=seed, split="test")
    path = folder / "test.jsonl"
    write_examples(path, examples)
    return examples, path


def eval_config(tmp_path, data, name="fake", **eval_kw) -> Config:
    ecfg = EvalConfig(tasks=[EvalTaskConfig(name="arith", data=str(data))], n_boot=200, chunk_questions=4,
                      out=str(tmp_path / "eval"), **eval_kw)
    return dataclasses.replace(Config(), run=RunConfig(name=name, out_dir=str(tmp_path / "runs"), device="cpu"), eval=ecfg)


class Asked:
    """A system wrapper that logs the ids of the questions it is asked (before answering them)."""

    def __init__(self, inner, log: list):
        self.inner, self.log = inner, log

    def answer(self, task, examples, seed, loglikelihood=False):
        self.log.extend(e.id for e in examples)
        return self.inner.answer(task, examples, seed, loglikelihood)

    def parameters(self):
        return self.inner.parameters()


ROUTER_CURVE = [{"threshold": 0.9, "accuracy": 0.4, "calls_per_question": 0.0, "call_rate": 0.0},
                {"threshold": 0.5, "accuracy": 0.8, "calls_per_question": 1.2, "call_rate": 0.45},
                {"threshold": 0.1, "accuracy": 0.95, "calls_per_question": 2.6, "call_rate": 1.0}]


def fake_entries(examples, tokenizer, key="k1", parameters=None, asked=None, fail_after=None):
    """never / always / router over the fake models. `asked[mode]` (a list) logs the question ids each
    system is asked; `fail_after[mode]` kills a system's base model after that many calls."""
    entries = []
    for mode in ("never", "always", "router"):
        def build(mode=mode):
            base = Counting(FakeBase(examples), (fail_after or {}).get(mode))
            pcfg = PipelineConfig(mode=mode, max_thoughts=3)
            router = FakeRouter(examples) if mode == "router" else None
            system = PipelineSystem(Pipeline(base, FakeTTM(examples), pcfg, router, base_tokenizer=tokenizer,
                                             ttm_tokenizer=tokenizer))
            return Asked(system, asked[mode]) if asked is not None else system
        info = {"kind": "pipeline", "mode": mode}
        if parameters:
            info["parameters"] = {"total": parameters[mode]}
        if mode == "router":
            info["router_curve"] = ROUTER_CURVE
        entries.append(SystemEntry(name=mode, key=key, build=build, info=info))
    return entries


def check_png(path, min_size=300):
    """A real picture: a PNG of at least min_size pixels a side with many colours, not a blank canvas."""
    import numpy as np
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = imread(str(path))
    assert pixels.shape[0] >= min_size and pixels.shape[1] >= min_size, pixels.shape
    rgb = (pixels[..., :3].reshape(-1, 3) * 255).astype(np.uint32)
    assert rgb.std() > 10
    assert len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])) > 50  # distinct colours


TIMING = {"created", "wall_seconds", "seconds_per_question", "shards"}


def without_timings(value):
    """A results dict with the keys that depend on timing or the way it was sharded removed."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value
