"""`pseudocot run CONFIG`: every configured stage in order into one run folder.

    data -> [synth] -> teacher -> distill -> base -> [grpo] -> router -> eval

Each stage has a key (`pseudocot.freshness`): the hash of the config it reads and of the content of
every input it reads (data files, upstream model folders, tokenizer). A key is computed just before
its stage, once the stages it reads are done. `run_state.json` in the run folder records, per stage,
the key it was started and finished with:

- finished with the current key: skipped;
- otherwise the stage runs; it resumes on its own from checkpoints (training), chunks (router traces)
  or the generation cache (evaluation) written under the same key, and starts from scratch where
  they carry another (a changed config or input), and so do the stages after it, whose keys change
  with it. `--force` removes the stage's outputs first.

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
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pseudocot.config import Config, save_config
from pseudocot.errors import ConfigError, StageError
from pseudocot.files import atomic_write_text, read_json_object
from pseudocot.freshness import STAGES, stage_key
from pseudocot.layout import RunLayout
from pseudocot.stages import prepare


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


def _runner(name: str) -> Callable[[Config], Any]:
    """The stage function `(cfg) -> metrics`."""
    if name == "data":
        from pseudocot.stages import data

        return data.main
    if name == "synth":
        from pseudocot.stages import synth

        return synth.main
    if name in ("teacher", "base"):
        from pseudocot.stages import finetune

        return lambda cfg: finetune.main(cfg, name)
    if name == "distill":
        from pseudocot.stages import distill

        return distill.main
    if name == "grpo":
        from pseudocot.stages import grpo

        return grpo.main
    if name == "router":
        from pseudocot.stages import router

        return router.main
    if name == "eval":
        from pseudocot.stages import eval as eval_stage

        return eval_stage.main
    raise ValueError(f"unknown stage {name!r}")


def _subprocess(layout: RunLayout, name: str) -> subprocess.Popen[bytes]:
    """`pseudocot finetune --role <name>` in its own process, on the run's saved config."""
    log = layout.stage_log(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pseudocot", "finetune", "--role", name, "--config", str(layout.config_file)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent())


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


def _stamp_results(layout: RunLayout, state: dict[str, Any]) -> None:
    """Add the run's wall time, whole and per stage, to `eval/results.json` (as `run_wall_seconds`)."""
    path = layout.results
    if not path.is_file():
        return
    results = json.loads(path.read_text())
    results["run_wall_seconds"] = {"total": state["wall_seconds"],
                                   "stages": {s: state[s].get("seconds") for s in STAGES if s in state}}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def check_tasks(cfg: Config) -> None:
    """Build every task the run will use (names and options; no data is read), so a misspelt task
    stops the run before hours of training rather than at the router or evaluation."""
    from pseudocot.tasks import get_task

    named = [(f"eval.tasks.{i}", t) for i, t in enumerate(cfg.eval.tasks)]
    if cfg.router.task is not None:
        named.append(("router.task", cfg.router.task))
    if cfg.synth.task is not None:
        named.append(("synth.task", cfg.synth.task))
    if cfg.grpo.enabled and cfg.grpo.task is not None:
        named.append(("grpo.task", cfg.grpo.task))
    for key, t in named:
        try:
            get_task(t.name, **t.options)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    if cfg.grpo.enabled:
        from pseudocot.stages.grpo import check_settings

        check_settings(cfg)  # TRL's settings and the rewards, before hours of training


def clear(layout: RunLayout, name: str) -> None:
    """`--force`: remove what the stage made, so it starts from scratch."""
    for path in layout.stage_outputs(name):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def main(cfg: Config, force: bool = False, stages: tuple[str, ...] | None = None,
         echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the stages (all, or `stages`) in order; returns `run_state.json`'s content."""
    prepare(cfg)
    check_tasks(cfg)
    layout = RunLayout.of(cfg)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, layout.config_file)
    log = RunLog(layout.run_log, echo)
    state = read_json_object(layout.state_file)
    wanted = [s for s in STAGES if stages is None or s in stages]
    if not cfg.distill.stages:
        wanted = [s for s in wanted if s not in ("teacher", "distill")]
    if not cfg.synth.enabled:
        wanted = [s for s in wanted if s != "synth"]
    if not cfg.grpo.enabled:
        wanted = [s for s in wanted if s != "grpo"]
    t_run = time.perf_counter()

    def save() -> None:
        atomic_write_text(layout.state_file, json.dumps(state, indent=2) + "\n")

    def done(name: str, key: str) -> bool:
        """Finished with this key already (so it is skipped)."""
        return not force and state.get(name, {}).get("finished") == key

    def start(name: str, key: str) -> None:
        resumed = state.get(name, {}).get("started") == key and not force
        if force:
            clear(layout, name)
        state[name] = {"started": key, "finished": None, "seconds": state.get(name, {}).get("seconds")}
        save()
        log(f"stage {name}: {'resume' if resumed else 'start'}")

    def finish(name: str, seconds: float) -> None:
        state[name].update(finished=state[name]["started"], seconds=round(seconds, 2))
        save()
        log(f"stage {name}: done in {seconds:.1f}s")

    side: list[tuple[subprocess.Popen[bytes], float]] = []  # the base model's process while it runs
    try:
        for i, name in enumerate(wanted):
            if name == "base" and side:
                continue  # already training beside the teacher chain
            if name in ("grpo", "router", "eval") and side:
                _join(side, layout, finish)  # they read the base model: its key needs the finished one
            key = stage_key(cfg, name)  # now: the stages it reads are done
            if done(name, key):
                log(f"stage {name} ({i + 1}/{len(wanted)}): complete for this config, skipped")
                continue
            # The base model reads only the data: train it beside the teacher chain.
            if name in ("teacher", "distill") and not side and cfg.run.parallel_stages and "base" in wanted:
                base_key = stage_key(cfg, "base")
                if not done("base", base_key):
                    start("base", base_key)
                    side.append((_subprocess(layout, "base"), time.perf_counter()))
                    log(f"stage base: training in a second process (log: {layout.stage_log('base')})")
            log(f"stage {name} ({i + 1}/{len(wanted)})")
            start(name, key)
            t0 = time.perf_counter()
            _runner(name)(cfg)
            finish(name, time.perf_counter() - t0)
        if side:
            _join(side, layout, finish)
    finally:
        for proc, _ in side:
            if proc.poll() is None:
                proc.terminate()  # an error or Ctrl-C in this process: stop the second one too
                proc.wait()
    state["wall_seconds"] = round(time.perf_counter() - t_run, 2)
    save()
    _stamp_results(layout, state)
    log(f"run {cfg.run.name}: done in {state['wall_seconds']:.1f}s -> {layout.root}")
    return state


def _join(side: list[tuple[subprocess.Popen[bytes], float]], layout: RunLayout,
          finish: Callable[[str, float], None]) -> None:
    """Wait for the base model's process; its failure is one line pointing at its log."""
    proc, t0 = side[0]
    code = proc.wait()
    side.clear()
    if code != 0:
        raise StageError(f"the base stage failed in its own process (exit code {code}); its log is {layout.stage_log('base')}.")
    finish("base", time.perf_counter() - t0)
