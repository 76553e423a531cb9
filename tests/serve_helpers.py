"""A `pseudocot serve` app on a tiny run, running in a thread of the test process on a free port.

Used by the server's tests (`test_serve.py`) and the browser test of its chat page (`test_serve_page.py`)
through the `serve_run` and `live_server` fixtures of conftest.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def make_run(root: Path, model: Any, tokenizer: Any) -> Path:
    """A tiny run folder (`tiny_run.write_tiny_run`) with a router (and depth router) trained on it."""
    from pseudocot.config import load_config
    from pseudocot.layout import RunLayout
    from pseudocot.stages import router as router_stage
    from tiny_run import write_tiny_run

    cfg = load_config(write_tiny_run(root, model, tokenizer, name="serve"))
    router_stage.main(cfg)
    return RunLayout.of(cfg).root


@dataclass
class LiveServer:
    url: str
    api_key: str | None
    run_dir: Path
    app: Any
    batcher: Any
    server: Any
    thread: threading.Thread

    def client(self, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 120), **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def serve_in_thread(app: Any, name: str) -> tuple[Any, threading.Thread, int]:
    """(server, thread, port): `app` on uvicorn at 127.0.0.1 (a free port) in a daemon thread, once it listens."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server {name} did not start")
        time.sleep(0.05)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


def start_server(run_dir: Path, api_key: str | None = "test-key", *overrides: str, ready: bool = True) -> LiveServer:
    """Serve `run_dir` on 127.0.0.1 (a free port) in a thread; waits until the models are loaded."""
    from pseudocot.layout import run_config
    from pseudocot.serve.app import create_app
    from pseudocot.serve.server import build

    cfg = run_config(run_dir, ("serve.port=0", *overrides))
    service = build(cfg)
    app = create_app(service.batcher, service.modes, service.default_mode, cfg.serve, api_key)
    deadline = time.monotonic() + 120
    server, thread, port = serve_in_thread(app, "uvicorn")
    live = LiveServer(f"http://127.0.0.1:{port}", api_key, Path(run_dir), app, service.batcher, server, thread)
    while ready and service.batcher.state != "ready":
        if service.batcher.state == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"the test server's models did not load: {service.batcher.error}")
        time.sleep(0.05)
    return live


@dataclass
class LiveEngine:
    """`pseudocot models serve` on one folder, in a thread of the test process."""

    url: str
    engine: Any
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def start_engine(folder: Path, name: str, api_key: str | None = None, batch_wait_ms: float = 5.0) -> LiveEngine:
    """Serve `folder` at /v1/completions on 127.0.0.1 (a free port) in a thread."""
    from pseudocot.config import GeneratorConfig
    from pseudocot.generate import open_generator
    from pseudocot.serve.engine import Engine, create_engine_app

    engine = Engine(open_generator(GeneratorConfig(path=str(folder)), device="cpu"), batch_wait_ms=batch_wait_ms)
    server, thread, port = serve_in_thread(create_engine_app(engine, name, api_key), f"engine-{name}")
    return LiveEngine(f"http://127.0.0.1:{port}/v1", engine, server, thread)
