"""`pseudocot run CONFIG`: every configured stage in order into one run folder.

    [writer] -> [questions] -> data -> [synth] -> teacher -> distill -> base -> [grpo] -> router -> eval

The stages, what each reads and when it is enabled are one table (`pseudocot.stages.table`;
`pseudocot stages` prints it). Each stage has a key (`pseudocot.freshness`): the hash of the config it
reads and of the content of every input it reads (data files, upstream model folders, tokenizer). A
key is computed just before its stage, once the stages it reads are done. `run_state.json` in the run
folder records, per stage, the key it was started and finished with:

- finished with the current key: skipped;
- otherwise the stage runs; it resumes on its own from checkpoints (training), chunks (router traces)
  or the generation cache (evaluation) written under the same key, and starts from scratch where
  they carry another (a changed config or input), and so do the stages after it, whose keys change
  with it. `--force` removes the stage's outputs first.

With `run.parallel_stages` a stage marked `beside` in the table (the base model) trains in a second
process as soon as every stage it reads is done, beside the teacher and the distillation chain, one
torch thread each: on a small CPU machine that is much faster than one process with two threads. A
base model that reads the Tiny Thought Model's thoughts (`base.thoughts_from: ttm | mix`) waits for
the chain instead. Everything is logged to `<run>/run.log`; the second process to `<run>/logs/<stage>.log`.

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
from pseudocot.layout import RunLayout
from pseudocot.stages import prepare, table
from pseudocot.stages.table import STAGES, Stage
from pseudocot.tasks.registry import task_from


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
    """The stage function `(cfg) -> metrics` (the table's; tests put recorders here)."""
    return table.get(name).main


def _subprocess(layout: RunLayout, stage: Stage) -> subprocess.Popen[bytes]:
    """The stage's own command (`pseudocot finetune` for the base model) in a second process, on the run's saved config."""
    log = layout.stage_log(stage.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pseudocot", *stage.command.split()[1:], "--config", str(layout.config_file)]
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
                                   "stages": {s.name: state[s.name].get("seconds") for s in STAGES if s.name in state}}
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def check_tasks(cfg: Config) -> None:
    """Build every task the run will use (names and options; no data is read), so a misspelt task
    stops the run before hours of training rather than at the router or evaluation."""

    named = [(f"eval.tasks.{i}", t) for i, t in enumerate(cfg.eval.tasks)]
    if cfg.router.task is not None:
        named.append(("router.task", cfg.router.task))
    if cfg.synth.task is not None:
        named.append(("synth.task", cfg.synth.task))
    if cfg.grpo.enabled and cfg.grpo.task is not None:
        named.append(("grpo.task", cfg.grpo.task))
    for key, t in named:
        try:
            task_from(t)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    if cfg.grpo.enabled:
        from pseudocot.stages.grpo import check_settings

        check_settings(cfg)  # TRL's settings and the rewards, before hours of training


def clear(layout: RunLayout, name: str) -> None:
    """`--force`: remove what the stage made, so it starts from scratch."""
    for path in table.stage_outputs(layout, name):
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
    wanted = [s for s in table.enabled(cfg) if stages is None or s.name in stages]
    order = {s.name: i for i, s in enumerate(wanted)}
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

    side: list[tuple[Stage, subprocess.Popen[bytes], float]] = []  # the stage training in a second process

    def ready_beside(i: int) -> Stage | None:
        """A later stage that may train beside stage i: marked `beside`, and every stage it reads (of those this
        run runs) comes before stage i, so is done by now."""
        if side or not cfg.run.parallel_stages:
            return None
        for later in wanted[i + 1:]:
            if later.beside and all(order.get(r, -1) < i for r in later.reads(cfg)):
                return later
        return None

    try:
        for i, stage in enumerate(wanted):
            name = stage.name
            if side and side[0][0] is stage:
                continue  # already training in its own process
            if side and side[0][0].name in stage.reads(cfg):
                _join(side, layout, finish)  # it reads that stage's output: its key needs the finished one
            key = stage.key(cfg)  # now: the stages it reads are done
            if done(name, key):
                log(f"stage {name} ({i + 1}/{len(wanted)}): complete for this config, skipped")
                continue
            later = ready_beside(i)
            if later is not None:
                later_key = later.key(cfg)
                if not done(later.name, later_key):
                    start(later.name, later_key)
                    side.append((later, _subprocess(layout, later), time.perf_counter()))
                    log(f"stage {later.name}: training in a second process (log: {layout.stage_log(later.name)})")
            log(f"stage {name} ({i + 1}/{len(wanted)})")
            start(name, key)
            t0 = time.perf_counter()
            _runner(name)(cfg)
            finish(name, time.perf_counter() - t0)
        if side:
            _join(side, layout, finish)
    finally:
        for _, proc, _ in side:
            if proc.poll() is None:
                proc.terminate()  # an error or Ctrl-C in this process: stop the second one too
                proc.wait()
    state["wall_seconds"] = round(time.perf_counter() - t_run, 2)
    save()
    _stamp_results(layout, state)
    log(f"run {cfg.run.name}: done in {state['wall_seconds']:.1f}s -> {layout.root}")
    return state


def _join(side: list[tuple[Stage, subprocess.Popen[bytes], float]], layout: RunLayout,
          finish: Callable[[str, float], None]) -> None:
    """Wait for the second process; its failure is one line pointing at its log."""
    stage, proc, t0 = side[0]
    code = proc.wait()
    side.clear()
    if code != 0:
        raise StageError(f"the {stage.name} stage failed in its own process (exit code {code}); its log is "
                         f"{layout.stage_log(stage.name)}.")
    finish(stage.name, time.perf_counter() - t0)
