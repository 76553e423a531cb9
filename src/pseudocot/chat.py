"""`pseudocot chat --run DIR`: a terminal chat over a run's Pseudo-CoT system.

Every message is a new question. The base model's answers, the router's score after each one and
the Tiny Thought Model's thoughts are printed as they come, then the final answer and its cost.
`/mode never|always|router|depth` switches the loop, `/quit` or Ctrl-D leaves.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pseudocot.errors import PseudocotError
from pseudocot.layout import RunLayout, has_model, run_config
from pseudocot.pipeline import MODES


def _printer(echo: Callable[[str], None], threshold: float | None) -> Callable[[str, Any], None]:
    def on_event(kind: str, trace: Any) -> None:
        if kind == "answer":
            a = trace.answers[-1]
            sure = f" (right: {a.answer_score:.2f})" if a.answer_score is not None else ""  # the answer head's score
            echo(click.style(f"  answer {len(trace.answers) - 1}{sure}: ", fg="cyan") + a.text.strip())
        elif kind == "thought":
            echo(click.style(f"  thought {len(trace.thoughts)}: ", fg="yellow") + trace.thoughts[-1].text)
        elif kind == "decision":
            s = trace.answers[-1].router_score
            verdict = "think again" if trace.stop_reason != "router" else "stop"
            echo(click.style(f"  router: {s:.2f} (threshold {threshold:.2f}) -> {verdict}", dim=True))
    return on_event


def chat_loop(run_dir: Path, mode: str | None, overrides: tuple[str, ...] = (), read: Callable[[str], str] = input,
              echo: Callable[[str], None] = click.echo) -> None:
    from pseudocot.models.loading import set_threads
    from pseudocot.pipeline import load_pipeline

    cfg = run_config(run_dir, overrides)
    set_threads(cfg.run.threads)
    layout = RunLayout.of(cfg)
    if mode is None:
        mode = "router" if layout.router is not None else "always"
        if mode == "always":
            echo(f"(no router in {layout.router_dir}: the TTM thinks {cfg.pipeline.max_thoughts} times; train one with `pseudocot router`)")
    echo(f"loading {run_dir} ...")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per model is noise in a chat
    pipe = load_pipeline(cfg, mode=mode, need_router=mode in ("router", "depth") or layout.router is not None,
                         need_ttm=has_model(layout.ttm))
    settings = pipe.cfg  # /mode changes this chat's settings, which each question passes to the loop
    echo(f"mode {mode}, at most {settings.max_thoughts} thoughts. Ask a question; /mode MODE switches, /quit leaves.")
    for n in itertools.count():
        try:
            text = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            echo("")
            return
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text.startswith("/mode"):
            want = text.split()[-1]
            if want not in MODES:
                echo(f"modes: {', '.join(MODES)}")
                continue
            if want != "never" and pipe.ttm is None:
                echo("this run has no Tiny Thought Model; train one with `pseudocot distill`.")
                continue
            if want in ("router", "depth") and pipe.router is None:
                echo("this run has no router; train one with `pseudocot router`.")
                continue
            if want == "depth" and getattr(pipe.router, "depth_router", None) is None:
                echo("this router has no depth model; train it with router.depth=true.")
                continue
            settings = dataclasses.replace(settings, mode=want)
            echo(f"mode {want}")
            continue
        threshold = settings.threshold if settings.threshold is not None else getattr(pipe.router, "threshold", None)
        try:
            (trace,) = pipe.run([(f"chat-{n}", text)], on_event=_printer(echo, threshold), cfg=settings)
        except PseudocotError as e:  # a problem the user can fix: say it and keep the chat going
            echo(f"error: {e}")
            continue
        tokens = sum(trace.tokens.values())
        chosen = f", returned answer {trace.selected}" if trace.selected is not None and trace.selected < len(trace.answers) - 1 else ""
        echo(click.style(f"= {trace.final_text.strip()}", bold=True)
             + click.style(f"   ({trace.thought_calls} thought{'' if trace.thought_calls == 1 else 's'}, {tokens} tokens, {trace.seconds:.2f} s, "
                           f"stopped: {trace.stop_reason}{chosen})", dim=True))
