"""`pseudocot run CONFIG`: every configured stage in order into one run folder.

    data -> teacher -> distill -> base -> router -> eval

Each stage has a key: the hash of its own config sections and of the keys of the stages it reads.
`run_state.json` in the run folder records, per stage, the key it was started and finished with:

- finished with the current key: skipped;
- started with the current key but not finished (a killed run): run again without `--force`, so
  the stage resumes from its own checkpoints (training) or chunks (router traces, evaluation);
- otherwise (a changed config, or a changed stage before it): run from scratch, and so are the
  stages after it, whose keys change with it.

With `run.parallel_stages` the base model trains in a second process beside the teacher and the
distillation chain (they read only the data), one torch thread each: on a small CPU machine that
is much faster than one process with two threads. Everything is logged to `<run>/run.log`; the
second process to `<run>/logs/base.log`.

    pseudocot run configs/demo.yaml
    pseudocot demo [--preset smoke]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudocot.config import Config, config_hash, save_config, to_dict
from pseudocot.files import atomic_write_text

STAGES = ("data", "teacher", "distill", "base", "router", "eval")


@dataclass
class Stage:
    name: str
    reads: tuple[str, ...]
    """Stages whose output this one uses."""
    sections: Callable[[Config], Any]
    """The config this stage's output depends on."""


def _pipeline_prompts(cfg: Config) -> dict[str, Any]:
    p = to_dict(cfg.pipeline)
    return {k: v for k, v in p.items() if k not in ("mode", "threshold", "batch_size", "kv_reuse")}


PLAN = (
    Stage("data", (), lambda c: {"data": to_dict(c.data), "tokenizer": to_dict(c.tokenizer), "seed": c.run.seed}),
    Stage("teacher", ("data",), lambda c: to_dict(c.teacher)),
    Stage("distill", ("teacher", "data"), lambda c: to_dict(c.distill)),
    Stage("base", ("data",), lambda c: {"base": to_dict(c.base),
                                         "prompts": _pipeline_prompts(c) if c.base.thoughts_in_context else None}),
    Stage("router", ("base", "distill", "data"), lambda c: {"router": to_dict(c.router), "prompts": _pipeline_prompts(c)}),
    Stage("eval", ("router", "base", "distill", "data"), lambda c: {"eval": to_dict(getattr(c, "eval", None)),
                                                                     "pipeline": to_dict(c.pipeline)}),
)


def stage_keys(cfg: Config) -> dict[str, str]:
    keys: dict[str, str] = {}
    for st in PLAN:
        keys[st.name] = config_hash({"own": st.sections(cfg), "reads": [keys[r] for r in st.reads]})
    return keys


class RunLog:
    """Lines to the terminal and to `<run>/run.log`, with the run's elapsed time."""

    def __init__(self, path: Path, echo: Callable[[str], None]) -> None:
        self.path, self.echo, self.t0 = path, echo, time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, text: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {text}"
        self.echo(line)
        with self.path.open("a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _runner(name: str) -> Callable[[Config, bool], Any]:
    """The stage function: `(cfg, force) -> metrics`."""
    if name == "data":
        from pseudocot.data import stage as data_stage

        return lambda cfg, force: data_stage.main(cfg)
    if name in ("teacher", "base"):
        from pseudocot.train import sft

        return lambda cfg, force: sft.main(cfg, name, force=force)
    if name == "distill":
        from pseudocot.train import distill

        return lambda cfg, force: distill.main(cfg, force=force)
    if name == "router":
        from pseudocot.router import stage as router_stage

        return lambda cfg, force: router_stage.main(cfg, force=force)
    if name == "eval":
        from pseudocot.evaluate import runner

        # Its cache keys change with the models' files, so a retrained model is answered anew anyway.
        return lambda cfg, force: runner.main(cfg)
    raise ValueError(f"unknown stage {name!r}")


def _subprocess(cfg: Config, name: str, force: bool, log_dir: Path) -> subprocess.Popen[bytes]:
    """`pseudocot finetune --role base` in its own process, on the run's saved config."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pseudocot", "finetune", "--role", name, "--config", str(cfg.run_dir / "config.yaml")]
    if force:
        cmd.append("--force")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with (log_dir / f"{name}.log").open("ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent())


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for the child (between fork and exec) that asks for SIGTERM when the run's
    process dies, even by SIGKILL, so a killed run never leaves a second writer in its folder. libc is
    loaded here, before the fork; the child only calls into it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    parent = os.getpid()

    def child() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the run died before the line above: do not start at all
            os._exit(1)

    return child


def _stamp_results(cfg: Config, state: dict[str, Any]) -> None:
    """Add the run's wall time, whole and per stage, to `eval/results.json` (as `run_wall_seconds`)."""
    from pseudocot.evaluate.runner import results_path

    path = results_path(cfg)
    if not path.is_file():
        return
    results = json.loads(path.read_text())
    results["run_wall_seconds"] = {"total": state["wall_seconds"],
                                   "stages": {s: state[s].get("seconds") for s in STAGES if s in state}}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def main(cfg: Config, force: bool = False, stages: tuple[str, ...] | None = None,
         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stages (all, or `stages`) in order; returns `run_state.json`'s content."""
    import torch

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    log = RunLog(run_dir / "run.log", echo)
    state_path = run_dir / "run_state.json"
    state = _read_state(state_path)
    keys = stage_keys(cfg)
    wanted = [s for s in STAGES if stages is None or s in stages]
    if not cfg.distill.stages:
        wanted = [s for s in wanted if s not in ("teacher", "distill")]
    t_run = time.perf_counter()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)

    def save() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=2) + "\n")

    def todo(name: str) -> tuple[bool, bool]:
        """(run it?, from scratch?)"""
        s = state.get(name, {})
        if not force and s.get("finished") == keys[name]:
            return False, False
        return True, force or s.get("started") != keys[name]

    def start(name: str, scratch: bool) -> None:
        state[name] = {"started": keys[name], "finished": None, "seconds": state.get(name, {}).get("seconds")}
        save()
        log(f"stage {name}: {'start' if scratch else 'resume'}")

    def finish(name: str, seconds: float, result: Any) -> None:
        state[name].update(finished=keys[name], seconds=round(seconds, 2))
        save()
        log(f"stage {name}: done in {seconds:.1f}s")

    sides: list[tuple[subprocess.Popen[bytes], float]] = []  # the base model's process while it runs
    try:
        _run_stages(cfg, wanted, todo, start, finish, log, sides)
    finally:
        for proc, _ in sides:
            if proc.poll() is None:
                proc.terminate()  # an error or Ctrl-C in this process: stop the second one too
                proc.wait()
    state["wall_seconds"] = round(time.perf_counter() - t_run, 2)
    save()
    _stamp_results(cfg, state)
    log(f"run {cfg.run.name}: done in {state['wall_seconds']:.1f}s -> {run_dir}")
    return state


def _run_stages(cfg: Config, wanted: list[str], todo: Callable[[str], tuple[bool, bool]], start: Callable[[str, bool], None],
                finish: Callable[[str, float, Any], None], log: RunLog,
                sides: list[tuple[subprocess.Popen[bytes], float]]) -> None:
    run_dir = cfg.run_dir
    base_log = run_dir / "logs" / "base.log"

    def join_base() -> None:
        proc, t0 = sides[0]
        code = proc.wait()
        if code != 0:
            raise RuntimeError(f"the base stage failed (exit {code}); see {base_log}.")
        finish("base", time.perf_counter() - t0, None)
        sides.clear()

    for i, name in enumerate(wanted):
        run_it, scratch = todo(name)
        if not run_it:
            log(f"stage {name} ({i + 1}/{len(wanted)}): complete for this config, skipped")
            continue
        if name == "base" and sides:
            continue  # already training beside the teacher
        # The base model reads only the data: train it beside the teacher chain.
        if name in ("teacher", "distill") and not sides and cfg.run.parallel_stages and "base" in wanted and todo("base")[0]:
            b_scratch = todo("base")[1]
            start("base", b_scratch)
            sides.append((_subprocess(cfg, "base", b_scratch, run_dir / "logs"), time.perf_counter()))
            log(f"stage base: training in a second process (log: {base_log})")
        if name in ("router", "eval") and sides:
            join_base()
        log(f"stage {name} ({i + 1}/{len(wanted)})")
        start(name, scratch)
        t0 = time.perf_counter()
        result = _runner(name)(cfg, scratch)
        finish(name, time.perf_counter() - t0, result)
    if sides:
        join_base()
