"""`pseudocot serve`: a run's pipeline behind the OpenAI API, on uvicorn.

Binds 127.0.0.1 unless told otherwise, and refuses any other address without an API key. SIGTERM
(or Ctrl-C) drains: new requests get 503, accepted ones finish (up to `serve.shutdown_grace_seconds`).

    PSEUDOCOT_API_KEY=secret pseudocot serve --run runs/demo
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from pseudocot.config.schema import Config
from pseudocot.errors import ConfigError, ModelError
from pseudocot.layout import RunLayout, has_model
from pseudocot.serve.app import is_loopback
from pseudocot.serve.batcher import Batcher

log = logging.getLogger("pseudocot.serve")


def available_modes(cfg: Config) -> list[str]:
    """The pipeline modes this run's folders can serve, in the order `/v1/models` lists them. With an engine as the
    base model, no router that reads hidden states (an engine gives none), so no depth router either."""
    layout = RunLayout.of(cfg)
    has_ttm = layout.engine("ttm") is not None or (layout.ttm is not None and has_model(layout.ttm))
    info = json.loads(layout.router_file.read_text()) if has_ttm and layout.router is not None else None
    if info is not None and layout.engine("base") is not None and "hidden" in info.get("features", []):
        info = None
    modes = []
    if info is not None:
        modes.append("router")
    if has_ttm:
        modes.append("always")
    modes.append("never")
    if info is not None and info.get("depth") and layout.engine("base") is None:
        modes.append("depth")
    return modes


def default_mode(cfg: Config, modes: list[str]) -> str:
    """What the model id `pseudocot` means: pipeline.mode when this run can serve it, else the best it has."""
    return cfg.pipeline.mode if cfg.pipeline.mode in modes else modes[0]


def api_key_from_env(cfg: Config) -> str | None:
    """The API key (None when the variable is unset or empty); a non-loopback host without one is refused."""
    key = os.environ.get(cfg.serve.api_key_env) or None
    if key is None and not is_loopback(cfg.serve.host):
        raise ConfigError(f"serve.host={cfg.serve.host} would let other machines call this server without an API key; "
                          f"set the environment variable {cfg.serve.api_key_env} to a secret (or bind 127.0.0.1).")
    return key


@dataclass
class Service:
    """What `create_app` needs, built from a config: the batcher (not started) and the model ids."""

    batcher: Batcher
    modes: list[str]
    default_mode: str


def build(cfg: Config) -> Service:
    """The batcher over the config's pipeline; models load in its thread when it starts."""
    from pseudocot.pipeline import load_pipeline

    modes = available_modes(cfg)
    mode = default_mode(cfg, modes)
    if RunLayout.of(cfg).engine("base") is None and not has_model(RunLayout.of(cfg).base):
        # Fail before binding a port: a server that can never answer is worse than an error now.
        raise ModelError(f"{RunLayout.of(cfg).base}: no base model here; train it (`pseudocot finetune`) or set pipeline.base.")

    def load() -> Any:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return load_pipeline(cfg, mode=mode, need_router="router" in modes, need_ttm="always" in modes)

    return Service(Batcher(load, cfg.serve), modes, mode)


def serve(cfg: Config, echo: Any = print) -> None:
    """Run the server until SIGTERM / Ctrl-C; returns once accepted requests are answered."""
    from pseudocot.models.loading import set_threads
    from pseudocot.serve.app import create_app

    key = api_key_from_env(cfg)
    set_threads(cfg.run.threads)
    if not log.handlers:  # uvicorn configures its own loggers only: say what each batch did beside them
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    service = build(cfg)
    app = create_app(service.batcher, service.modes, service.default_mode, cfg.serve, key)
    config = uvicorn.Config(app, host=cfg.serve.host, port=cfg.serve.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=math.ceil(cfg.serve.shutdown_grace_seconds))
    server = DrainingServer(config, service.batcher)
    ids = ", ".join(["pseudocot"] + [f"pseudocot-{m}" for m in service.modes])
    echo(f"serving {RunLayout.of(cfg).root} on http://{cfg.serve.host}:{cfg.serve.port} (chat page at /, API at /v1)")
    echo(f"models: {ids} (pseudocot = {service.default_mode})")
    echo(f"API key: from ${cfg.serve.api_key_env}" if key else
         f"no API key (${cfg.serve.api_key_env} is unset): anyone on this machine can call it")
    server.run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the batcher told to refuse new work the moment a stop signal arrives (uvicorn
    then stops accepting connections and waits for the open ones)."""

    def __init__(self, config: uvicorn.Config, batcher: Batcher) -> None:
        super().__init__(config)
        self.batcher = batcher

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.batcher.drain()
        super().handle_exit(sig, frame)
