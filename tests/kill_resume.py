"""The SIGKILL half of the resume tests (finetune, distillation, on-policy distillation, GRPO): two copies of a stage
command run side by side, one is killed once its first checkpoint is written in full, the other runs to the end; the
test then runs the killed one again and compares."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def written_state(path: Path, step: int) -> bool:
    """True once the Trainer has written `trainer_state.json` of `step` in full."""
    try:
        return json.loads(path.read_text())["global_step"] == step
    except (OSError, ValueError, KeyError):
        return False


def kill_one_finish_other(killed: list[str], unbroken: list[str], state: Path, step: int, logs: Path, cwd: Path,
                          env: dict[str, str], timeout: float = 300) -> None:
    """Run `killed` and `unbroken` side by side (two cores: neither waits); SIGKILL `killed` as soon as `state` (a
    checkpoint's trainer_state.json) says `step`, and wait for `unbroken` to finish with exit code 0. Fails the test
    when the killed run ends before it could be killed, or when nothing is written in `timeout` seconds."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "killed.log", "w") as killed_log, open(logs / "unbroken.log", "w") as unbroken_log:
        other = subprocess.Popen(unbroken, cwd=cwd, env=env, stdout=unbroken_log, stderr=subprocess.STDOUT)
        victim = subprocess.Popen(killed, cwd=cwd, env=env, stdout=killed_log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not written_state(state, step):
                if victim.poll() is not None:
                    pytest.fail(f"the run ended (exit {victim.returncode}) before {state}:\n" + (logs / "killed.log").read_text()[-3000:])
                if time.monotonic() > deadline:
                    pytest.fail(f"no {state} after {timeout:.0f} s")
                time.sleep(0.005)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
            assert other.wait(timeout=600) == 0, (logs / "unbroken.log").read_text()[-3000:]
        finally:
            for proc in (victim, other):  # never leave a run behind, whatever failed
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed; give it more steps"


def kill_when_written(proc: subprocess.Popen, target: Path, lines: int, timeout: float, torn: bytes) -> int:
    """SIGKILL `proc` (a writer that appends JSONL rows to `target`) once `target` holds `lines` rows, then append
    `torn`, a row the kill cut short; returns the rows written before the kill. Fails the test when the run ended
    before it could be killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if target.is_file() and target.read_bytes().count(b"\n") >= lines:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed; give it more work"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = target.read_bytes().count(b"\n")
    with target.open("ab") as f:
        f.write(torn)
    return written
