"""The offline tokenizer, the tiny-model presets, and safe loading of HF folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pseudocot.data.chat import messages_for, render
from pseudocot.errors import ConfigError, ModelError
from pseudocot.generate import GenerationParams
from pseudocot.generate.hf import HFGenerator
from pseudocot.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from pseudocot.models.tiny import PRESETS, build_tiny_model, count_parameters, tiny_config
from pseudocot.models.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, save_tokenizer, train_tokenizer

SAMPLE_TEXTS = [
    "Mia has 12 apples. She gets 7 more apples. How many apples does Mia have now?",
    "12 + 7 = 19\nThe answer is 19.",
    "12345 + 678 = 13023",
    "  odd   spacing\tand tabs\n\n",
    "<|user|>hi<|eos|><|assistant|>",
    "unicode: café ½ 😀",
]


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def test_digits_are_one_token_each(arith_tokenizer):
    tok = arith_tokenizer
    text = "12345 + 678"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert "".join(pieces) == text
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == list("12345678")
    # Also for numbers that occur very often in the training data (a merge could have joined them).
    for number in ("10", "12", "100", "99"):
        ids = tok(number, add_special_tokens=False)["input_ids"]
        assert [tok.decode([i]) for i in ids] == list(number)


def test_special_tokens_are_single_tokens(arith_tokenizer):
    tok = arith_tokenizer
    assert tok.bos_token == BOS and tok.eos_token == EOS and tok.pad_token == PAD
    special_ids = set(tok.all_special_ids)
    ids_seen = set()
    for t in SPECIAL_TOKENS:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, t
        assert ids[0] in special_ids
        assert tok.convert_ids_to_tokens(ids[0]) == t
        ids_seen.add(ids[0])
    assert len(ids_seen) == len(SPECIAL_TOKENS)
    assert tok.eos_token_id == tok.convert_tokens_to_ids(EOS)
    # Inside running text too, and they never get split or merged with neighbours.
    ids = tok("<|user|>2+3<|eos|><|assistant|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-2:] == [tok.eos_token_id, tok.convert_tokens_to_ids("<|assistant|>")]
    # No special token is added implicitly.
    assert tok("2+3")["input_ids"] == tok("2+3", add_special_tokens=False)["input_ids"]


def test_decode_skips_special_tokens(arith_tokenizer):
    tok = arith_tokenizer
    ids = tok("<|assistant|>12 + 7 = 19<|eos|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "12 + 7 = 19"


def test_chat_template_generation_prompt(arith_tokenizer):
    tok = arith_tokenizer
    msgs = [{"role": "user", "content": "What is 2 + 3?"}]
    assert render(tok, msgs, add_generation_prompt=True) == "<|bos|><|user|>What is 2 + 3?<|eos|><|assistant|>"
    assert render(tok, msgs) == "<|bos|><|user|>What is 2 + 3?<|eos|>"
    full = [{"role": "system", "content": "Be brief."}, *msgs, {"role": "assistant", "content": "5"}]
    assert render(tok, full) == "<|bos|><|system|>Be brief.<|eos|><|user|>What is 2 + 3?<|eos|><|assistant|>5<|eos|>"


def test_tokenizer_save_load_roundtrip(arith_tokenizer, arith_examples, tmp_path):
    tok = arith_tokenizer
    folder = save_tokenizer(tok, tmp_path / "tok")
    assert (folder / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(str(folder))
    texts = SAMPLE_TEXTS + [render(tok, messages_for(e)) for e in arith_examples[:20]]
    for t in texts:
        assert loaded(t, add_special_tokens=False)["input_ids"] == tok(t, add_special_tokens=False)["input_ids"], t
    assert loaded.chat_template == tok.chat_template
    assert len(loaded) == len(tok)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(loaded, name) == getattr(tok, name)
    assert sorted(loaded.all_special_ids) == sorted(tok.all_special_ids)
    msgs = messages_for(arith_examples[0])
    assert render(loaded, msgs[:-1], add_generation_prompt=True) == render(tok, msgs[:-1], add_generation_prompt=True)
    # The package's own loader gives the same tokenizer.
    via_loader = load_tokenizer(str(folder))
    assert via_loader(texts[0], add_special_tokens=False)["input_ids"] == tok(texts[0], add_special_tokens=False)["input_ids"]
    assert via_loader.pad_token_id == tok.pad_token_id


def test_vocab_size_too_small_raises():
    texts = ["1 + 2 = 3", "The answer is 3."] * 20
    n_base = 256 + len(SPECIAL_TOKENS)
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(texts, vocab_size=n_base - 1)
    # The smallest allowed size works and has exactly the base alphabet and the special tokens.
    tok = train_tokenizer(texts, vocab_size=n_base)
    assert len(tok) == n_base


def test_tokenizer_training_is_deterministic(arith_tokenizer, arith_examples):
    from pseudocot.data.chat import answer_text, question_text

    again = train_tokenizer([question_text(e) + "\n" + answer_text(e) for e in arith_examples])
    assert again.get_vocab() == arith_tokenizer.get_vocab()
    assert len(arith_tokenizer) == 384


# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_matching_tokenizer(preset, arith_tokenizer):
    tok = arith_tokenizer
    model = build_tiny_model(preset, tok, seed=0)
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert model.get_input_embeddings().weight.shape == (len(tok), PRESETS[preset]["hidden_size"])
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert cfg.num_hidden_layers == PRESETS[preset]["num_hidden_layers"]
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    gc = model.generation_config
    assert (gc.bos_token_id, gc.eos_token_id, gc.pad_token_id) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert count_parameters(model) > 0
    # A forward pass gives logits over the whole vocabulary.
    ids = torch.tensor([tok("1 + 2", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_presets_grow():
    sizes = [PRESETS[p]["hidden_size"] for p in ("tiny-xs", "tiny-s", "tiny-m", "tiny-l")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_unknown_preset_raises(arith_tokenizer):
    with pytest.raises(ConfigError, match="tiny-huge"):
        tiny_config("tiny-huge", arith_tokenizer)
    with pytest.raises(ConfigError, match="tiny-xs"):
        build_tiny_model("tiny-huge", arith_tokenizer)


def test_seeded_init(arith_tokenizer):
    tok = arith_tokenizer
    state = torch.get_rng_state()
    a = build_tiny_model("tiny-xs", tok, seed=1).state_dict()
    b = build_tiny_model("tiny-xs", tok, seed=1).state_dict()
    c = build_tiny_model("tiny-xs", tok, seed=2).state_dict()
    assert torch.equal(torch.get_rng_state(), state), "building a model must not move the global RNG"
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    randomly_initialised = [k for k in a if a[k].std() > 0]
    assert randomly_initialised
    for k in randomly_initialised:
        assert not torch.equal(a[k], c[k]), k


def test_save_and_reload_tiny_model(trained_tiny, arith_examples, tmp_path):
    model, tok = trained_tiny
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    save_tokenizer(tok, folder)
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == len(tok)

    loaded = AutoModelForCausalLM.from_pretrained(str(folder))
    loaded_tok = AutoTokenizer.from_pretrained(str(folder))
    assert type(loaded).__name__ == "LlamaForCausalLM"
    ref, got = model.state_dict(), loaded.state_dict()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    # Tied embeddings survive the round trip.
    assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()

    prompts = [render(tok, messages_for(e)[:-1], add_generation_prompt=True) for e in arith_examples[:6]]
    params = GenerationParams(max_new_tokens=32)
    before = HFGenerator(model, tok, batch_size=3).generate(prompts, params)
    after = HFGenerator(loaded, loaded_tok, batch_size=3).generate(prompts, params)
    assert [c.text for c in after] == [c.text for c in before]
    assert [c.completion_tokens for c in after] == [c.completion_tokens for c in before]
    assert any(c.text for c in before)

    # The package's loader and HFGenerator.from_pretrained give the same generations.
    via = HFGenerator.from_pretrained(str(folder), device="cpu", batch_size=3)
    assert not via.model.training
    assert next(via.model.parameters()).dtype == torch.float32
    assert [c.text for c in via.generate(prompts, params)] == [c.text for c in before]


# --------------------------------------------------------------------------------------------
# loading.py
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tiny(arith_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved_tiny")
    build_tiny_model("tiny-xs", arith_tokenizer, seed=3).save_pretrained(folder)
    save_tokenizer(arith_tokenizer, folder)
    return folder


def test_load_model_missing_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelError, match="no_such_model.*no such model folder") as e:
        load_model(str(missing), device="cpu")
    assert str(missing) in str(e.value)
    with pytest.raises(ModelError, match="no_such_model"):
        load_tokenizer(str(missing))
    # A bare relative name is not sent to the hub while offline.
    with pytest.raises(ModelError, match="some-org/some-model"):
        load_model("some-org/some-model", device="cpu")


def test_load_model_refuses_pickle_weights(saved_tiny, tmp_path_factory):
    # (Not tmp_path: its name contains the test's name, which would satisfy any match on "pickle".)
    folder = tmp_path_factory.mktemp("binonly")
    shutil.copy(saved_tiny / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match=r"pickle files.*safetensors") as e:
        load_model(str(folder), device="cpu")
    assert str(folder) in str(e.value)
    # Safetensors next to a stray .bin are fine: the safe weights are loaded.
    shutil.copy(saved_tiny / "model.safetensors", folder / "model.safetensors")
    assert load_model(str(folder), device="cpu").config.vocab_size == json.loads((saved_tiny / "config.json").read_text())["vocab_size"]


def test_load_model_needs_config(saved_tiny, tmp_path):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    shutil.copy(saved_tiny / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(folder), device="cpu")


def test_load_model_config_without_weights(saved_tiny, tmp_path):
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(saved_tiny / "config.json", folder / "config.json")
    with pytest.raises(ModelError, match="cannot load the model"):
        load_model(str(folder), device="cpu")


def test_load_in_4bit_needs_cuda(saved_tiny):
    with pytest.raises(ModelError, match="CUDA"):
        load_model(str(saved_tiny), device="cpu", load_in_4bit=True)


def test_load_model_ok(saved_tiny, arith_tokenizer):
    model = load_model(str(saved_tiny), device="cpu", dtype="float32")
    assert not model.training
    assert model.device.type == "cpu"
    assert next(model.parameters()).dtype == torch.float32
    ref = build_tiny_model("tiny-xs", arith_tokenizer, seed=3).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    bf16 = load_model(str(saved_tiny), device="cpu", dtype="bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) is torch.float32
    assert resolve_dtype("float32", cpu) is torch.float32
    assert resolve_dtype("bf16", cpu) is torch.bfloat16
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_dtype("fp16", cpu) is torch.float16
    with pytest.raises(ModelError, match="float64"):
        resolve_dtype("float64", cpu)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_cuda():
    with pytest.raises(ModelError, match="cuda"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="cuda:1"):
        resolve_device("cuda:1")
    assert resolve_dtype("auto", resolve_device("auto")) is torch.float32
