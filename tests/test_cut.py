"""Layer-cut students (`pseudocot.models.cut`) and their config (`student: {from, num_layers | keep_layers}`)."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from pseudocot.config import load_config, to_yaml
from pseudocot.config.loader import from_dict
from pseudocot.errors import ConfigError, ModelError
from pseudocot.models.cut import cut_layers, evenly_spaced


def _llama(layers: int = 6) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("total, keep, want", [(30, 16, None), (30, 8, [0, 4, 8, 12, 17, 21, 25, 29]), (6, 2, [0, 5]),
                                               (6, 6, [0, 1, 2, 3, 4, 5]), (5, 1, [0])])
def test_evenly_spaced_keeps_first_and_last(total, keep, want):
    got = evenly_spaced(total, keep)
    assert len(got) == keep == len(set(got)) and got == sorted(got)
    assert got[0] == 0 and (keep == 1 or got[-1] == total - 1)
    if want is not None:
        assert got == want


def test_a_cut_student_is_the_teacher_without_the_dropped_layers():
    teacher = _llama(6)
    student = cut_layers(teacher, keep_layers=[0, 3, 5])
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2]  # renumbered for the KV cache
    for new, old in enumerate([0, 3, 5]):
        for (name, a), (_, b) in zip(student.model.layers[new].state_dict().items(), teacher.model.layers[old].state_dict().items()):
            assert torch.equal(a, b), name
            assert a.data_ptr() != b.data_ptr()  # copies: training the student leaves the teacher alone
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    # Its forward is the teacher's with the dropped layers skipped.
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        h = teacher.model.embed_tokens(ids)
        pos = torch.arange(7).unsqueeze(0)
        rope = teacher.model.rotary_emb(h, pos)
        mask = torch.full((7, 7), float("-inf")).triu(1)[None, None]
        for i in (0, 3, 5):
            h = teacher.model.layers[i](h, attention_mask=mask, position_embeddings=rope, position_ids=pos)
            h = h[0] if isinstance(h, tuple) else h
        want = teacher.lm_head(teacher.model.norm(h))
        assert torch.allclose(student(ids).logits, want, atol=1e-5)
    # Keeping every layer changes nothing.
    with torch.no_grad():
        assert torch.equal(cut_layers(teacher, num_layers=6)(ids).logits, teacher(ids).logits)


def test_per_layer_settings_follow_their_layers():
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=8,
                      max_window_layers=2)
    teacher = Qwen2ForCausalLM(cfg)
    student = cut_layers(teacher, keep_layers=[1, 3])
    assert student.config.layer_types == [teacher.config.layer_types[1], teacher.config.layer_types[3]]


@pytest.mark.parametrize("kwargs", [{"num_layers": 0}, {"num_layers": 7}, {"keep_layers": [2, 1]}, {"keep_layers": [0, 6]}, {}])
def test_bad_cuts_are_one_sentence(kwargs):
    with pytest.raises(ModelError):
        cut_layers(_llama(6), **kwargs)


# ----------------------------------------------------------------------------- config


CUT_CHAIN = ("distill.stages=[{name: stage-1-16l, student: {from: teacher, num_layers: 16}}, "
             "{name: stage-2-8l, student: {from: teacher, num_layers: 8}}]")
"""A chain of students cut from their teacher, 30 -> 16 -> 8 layers of SmolLM2."""


def test_from_is_the_yaml_key_and_round_trips(tmp_path):
    cfg = load_config("smol", [CUT_CHAIN])
    student = cfg.distill.stages[0].student
    assert student.from_ == "teacher" and student.num_layers == 16 and student.path is None
    text = to_yaml(cfg)
    assert "from: teacher" in text and not re.search(r"^\s*from_:", text, re.M)
    (tmp_path / "again.yaml").write_text(text)
    assert load_config(str(tmp_path / "again.yaml")) == cfg
    over = load_config("smol", [CUT_CHAIN, "distill.stages.1.student.from=/models/x", "distill.stages.1.student.num_layers=4"])
    assert over.distill.stages[1].student.from_ == "/models/x"


@pytest.mark.parametrize("student, key", [
    ({"from": "teacher", "num_layers": 4, "path": "/m"}, "from"),
    ({"from": "teacher"}, "from"),
    ({"from": "teacher", "num_layers": 4, "keep_layers": [0, 1]}, "from"),
    ({"num_layers": 4, "path": "/m"}, "num_layers"),
    ({"from": "teacher", "keep_layers": [3, 1]}, "keep_layers"),
])
def test_bad_students_name_the_key(student, key):
    with pytest.raises(ConfigError, match=rf"distill\.stages\.0\.student\.{key}\b"):
        from_dict({"distill": {"stages": [{"student": student}]}})


def test_only_distillation_students_are_cut():
    with pytest.raises(ConfigError, match=r"base\.model\.from"):
        from_dict({"base": {"model": {"from": "teacher", "num_layers": 2}}})


def test_the_report_names_cut_students():
    from pseudocot.evaluate.runner import describe_run
    from pseudocot.evaluate.systems import system_entries

    cfg = load_config("smol", [CUT_CHAIN])
    said = describe_run(cfg, system_entries(cfg))
    assert "(16 layers of its teacher -> 8 layers of its teacher)" in said
