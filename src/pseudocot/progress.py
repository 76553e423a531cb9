"""Progress of long work, on a terminal and in a log.

On a terminal a bar redraws in place (tqdm). When stderr is not a terminal (`make demo > demo.log`, a
second process writing its own log, CI) a redraw per step would write hundreds of kilobytes of
carriage returns, so progress is one plain line every `LOG_EVERY_SECONDS` instead, and one at the end:

    teacher: 450/1500 steps (30%), 12.1 steps/s, 37s elapsed, ~1m27s left, loss 0.0421

`progress(...)` is the bar for pseudocot's own loops; `trainer_progress(trainer, name)` puts the same
lines in place of HF Trainer's bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

LOG_EVERY_SECONDS = 10.0
"""Seconds between two progress lines when stderr is not a terminal."""


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LineProgress:
    """A progress bar that prints a line at most every `every_seconds` (and when it closes), for logs.
    The part of tqdm's interface pseudocot uses: iteration, `update`, `set_postfix_str`, `close`, `with`."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, stream: TextIO | None = None, every_seconds: float = LOG_EVERY_SECONDS) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.stream, self.every = stream, every_seconds
        self.postfix = ""
        self.t0 = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self._print(now)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.initial or self.total == 0:
                self._print(time.perf_counter())

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {units}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.3g} {units}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _print(self, now: float) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.line(now), file=stream, flush=True)


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False) -> Any:
    """A tqdm bar on a terminal, a `LineProgress` in a log; with `disable`, a bar that shows nothing."""
    from tqdm.auto import tqdm

    if disable or is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


def trainer_progress(trainer: Any, name: str) -> None:
    """In a log, HF Trainer's redrawn bar (and its printed log dicts) become `LineProgress` lines named `name`,
    with the last logged loss; on a terminal the Trainer keeps its own bar."""
    if is_terminal():
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    class LineProgressCallback(TrainerCallback):
        def __init__(self) -> None:
            self.bar: LineProgress | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar = LineProgress(total=state.max_steps, desc=name, unit="step", initial=state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if self.bar is not None and logs:
                shown = {k: v for k, v in logs.items() if k in ("loss", "eval_loss", "reward", "grad_norm")}
                self.bar.set_postfix_str(", ".join(f"{k} {v:.4g}" for k, v in shown.items() if isinstance(v, float)))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LineProgressCallback())
