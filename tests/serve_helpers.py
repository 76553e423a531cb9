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

RUN_YAML = """
extends: smoke
run: {{name: serve, out_dir: {root}, device: cpu, threads: 1}}
data:
  arith: {{n_train: 60, n_val: 30, n_test: 20, max_steps: 2, step_weights: null}}
tokenizer: {{train: false}}
distill:
  stages:
    - student: {{preset: tiny-xs}}
pipeline: {{max_thoughts: 2, answer_max_new_tokens: 24, thought_max_new_tokens: 24}}
router: {{train_questions: 60, val_questions: 30, max_epochs: 40, patience: 10, hidden_size: 16, depth: true}}
"""


def make_run(root: Path, model: Any, tokenizer: Any) -> Path:
    """A run folder whose base model and TTM are `model`, with a router (and depth router) trained on it."""
    from pseudocot.config import load_config
    from pseudocot.layout import RunLayout
    from pseudocot.stages import data as data_stage
    from pseudocot.stages import router as router_stage

    cfg_file = root / "cfg.yaml"
    cfg_file.write_text(RUN_YAML.format(root=root))
    cfg = load_config(cfg_file)
    data_stage.main(cfg)
    layout = RunLayout.of(cfg)
    for folder in (layout.base_dir, layout.distill_dir / "stage-1"):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    # The config the server reads from the run folder (as `pseudocot run` leaves it).
    (layout.root / "config.yaml").write_text(cfg_file.read_text())
    router_stage.main(cfg)
    return layout.root


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


def start_server(run_dir: Path, api_key: str | None = "test-key", *overrides: str, ready: bool = True) -> LiveServer:
    """Serve `run_dir` on 127.0.0.1 (a free port) in a thread; waits until the models are loaded."""
    import uvicorn

    from pseudocot.layout import run_config
    from pseudocot.serve.app import create_app
    from pseudocot.serve.server import build

    cfg = run_config(run_dir, ("serve.port=0", *overrides))
    service = build(cfg)
    app = create_app(service.batcher, service.modes, service.default_mode, cfg.serve, api_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    live = LiveServer(f"http://127.0.0.1:{port}", api_key, Path(run_dir), app, service.batcher, server, thread)
    while ready and service.batcher.state != "ready":
        if service.batcher.state == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"the test server's models did not load: {service.batcher.error}")
        time.sleep(0.05)
    return live
