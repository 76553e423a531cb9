"""The `eval` stage (`pseudocot.stages.eval`, over `pseudocot.evaluate.runner`): a tiny-model
evaluation of never / always / router on arith with its results, report and figures; resuming a
killed evaluation without answering a question twice; shards merged equal to one process; cache
keys; the config-driven command with models loaded from folders (pipeline, and a base model with a
LoRA adapter)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from eval_fakes import Killed, arith_data, check_png, eval_config, fake_entries, without_timings
from pseudocot.cli import cli
from pseudocot.config import ArithConfig, PipelineConfig, SystemConfig, load_config
from pseudocot.data import arith
from pseudocot.errors import ConfigError, DataError
from pseudocot.evaluate.report import FIGURES
from pseudocot.evaluate.systems import PipelineSystem, SystemEntry, system_entries
from pseudocot.generate.hf import HFGenerator
from pseudocot.pipeline import Pipeline, read_traces
from pseudocot.stages import eval as eval_stage

SYSTEM_KEYS = {"accuracy", "ci95", "bleu", "rougeL", "faithfulness", "thought_calls_per_question",
               "generated_tokens_per_question", "wall_seconds"}


class StepsRouter:
    """Think once on problems with more than one step."""

    features = ("logprobs",)
    threshold = 0.5
    info = {"max_thoughts": 2}

    def __init__(self, examples):
        self.steps = {e.question: e.meta["steps"] for e in examples}

    def score(self, steps):
        return [1.0 if self.steps[s.question] > 1 and s.iteration == 0 else 0.0 for s in steps]


def test_tiny_model_eval_never_always_router(trained_tiny, tmp_path):
    torch.set_num_threads(1)
    model, tok = trained_tiny
    examples = arith.generate(16, ArithConfig(max_steps=2), seed=99, split="test")
    from pseudocot.data.jsonl import write_examples

    write_examples(tmp_path / "test.jsonl", examples)
    cfg = eval_config(tmp_path, tmp_path / "test.jsonl", name="tiny")

    def entry(mode):
        def build():
            pcfg = PipelineConfig(mode=mode, max_thoughts=2, answer_max_new_tokens=24, thought_max_new_tokens=24)
            return PipelineSystem(Pipeline(HFGenerator(model, tok), HFGenerator(model, tok), pcfg,
                                           StepsRouter(examples) if mode == "router" else None))
        return SystemEntry(name=mode, key="tiny", build=build, info={"kind": "pipeline", "mode": mode})

    res = eval_stage.main(cfg, entries=[entry("never"), entry("always"), entry("router")])
    out = tmp_path / "eval"
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert saved["primary_task"] == "arith" and saved["tasks"]["arith"]["systems"] == saved["systems"]
    assert isinstance(saved["wall_seconds"], float)
    for name in ("never", "always", "router"):
        s = saved["systems"][name]
        assert SYSTEM_KEYS <= set(s)
        lo, hi = s["ci95"]
        assert 0 <= lo <= s["accuracy"] <= hi <= 1 and s["n"] == 16
        assert 0 <= s["rougeL"] <= 1 and s["bleu"] >= 0
        assert s["generated_tokens_per_question"] > 0
        assert len(read_traces(out / s["traces"])) == 16
        assert len((out / s["predictions"]).read_text().splitlines()) == 16
    never, always, router = (saved["systems"][k] for k in ("never", "always", "router"))
    assert never["thought_calls_per_question"] == 0 < router["thought_calls_per_question"] < always["thought_calls_per_question"]
    assert router["thought_calls_per_question"] == sum(e.meta["steps"] > 1 for e in examples) / 16
    # the figure of size counts base + TTM together for the systems that think
    n_params = sum(p.numel() for p in model.parameters())
    assert never["parameters"] == {"base": n_params, "total": n_params}
    assert always["parameters"] == {"base": n_params, "ttm": n_params, "total": 2 * n_params}
    # FLOPs per question: 2 x parameters x the tokens each model ran through (both models here are the same tiny one)
    for s in (never, always, router):
        traces = read_traces(out / s["traces"])
        assert s["flops_per_question"] == pytest.approx(sum(2.0 * n_params * sum(t.processed.values()) for t in traces) / 16)
    assert never["flops_per_question"] < router["flops_per_question"] < always["flops_per_question"]
    for key in ("router_vs_never", "always_vs_never", "router_vs_always"):
        c = saved["comparisons"][key]
        assert {"delta", "ci95", "p_value"} <= set(c) and 0 <= c["p_value"] <= 1
    c = saved["comparisons"]["router_vs_never"]
    assert c["delta"] == pytest.approx(router["accuracy"] - never["accuracy"])
    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation report\n\n3 systems (never, always, router) on arith (16 questions")
    assert "| System | arith accuracy | arith BLEU | arith ROUGE-L |" in report
    assert "| Thought calls | Tokens (base + TTM) | FLOPs |" in report
    for f in (*FIGURES, "flops.png"):  # the systems' FLOPs are known here, so the cost figure is drawn
        assert f"(figures/{f})" in report
        check_png(out / "figures" / f)
    assert len((out / "report.csv").read_text().splitlines()) == 4


def test_resume_after_a_kill_answers_only_what_is_missing(arith_tokenizer, tmp_path):
    examples, data = arith_data(tmp_path, n=24)
    cfg = eval_config(tmp_path, data)  # chunks of 4 questions
    first = {m: [] for m in ("never", "always", "router")}
    with pytest.raises(Killed):  # the always system dies in its second chunk
        eval_stage.main(cfg, entries=fake_entries(examples, arith_tokenizer, asked=first, fail_after={"always": 6}))
    assert not (tmp_path / "eval" / "results.json").exists()
    assert len(first["never"]) == 24 and first["always"] == [e.id for e in examples[:8]] and first["router"] == []

    again = {m: [] for m in ("never", "always", "router")}
    res = eval_stage.main(cfg, entries=fake_entries(examples, arith_tokenizer, asked=again))
    assert again["never"] == []  # finished before the kill: nothing recomputed
    assert again["always"] == [e.id for e in examples[4:]]  # the killed chunk and the rest
    assert again["router"] == [e.id for e in examples]

    # the same numbers as an evaluation that was never interrupted
    fresh = eval_stage.main(eval_config(tmp_path / "fresh", data), entries=fake_entries(examples, arith_tokenizer))
    assert without_timings(res) == without_timings(fresh)
    assert res["systems"]["always"]["accuracy"] == 1.0 and res["systems"]["never"]["accuracy"] < 1.0

    # a third run finds everything: no system is even built
    def unbuildable():
        raise AssertionError("built a system with nothing to answer")
    entries = [SystemEntry(e.name, e.key, unbuildable, info=e.info) for e in fake_entries(examples, arith_tokenizer)]
    assert without_timings(eval_stage.main(cfg, entries=entries)) == without_timings(res)


def test_a_row_torn_by_a_kill_is_answered_again(arith_tokenizer, tmp_path):
    examples, data = arith_data(tmp_path, n=8)
    cfg = eval_config(tmp_path, data)
    res = eval_stage.main(cfg, entries=fake_entries(examples, arith_tokenizer))
    part = next((tmp_path / "eval" / "cache").glob("arith-*/always-*/seed-0/part-all.jsonl"))
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:-1]) + lines[-1][:40])  # killed while writing the last row
    asked = {m: [] for m in ("never", "always", "router")}
    again = eval_stage.main(cfg, entries=fake_entries(examples, arith_tokenizer, asked=asked))
    assert asked == {"never": [], "always": [examples[-1].id], "router": []}
    def content(text):
        return [(r["id"], r["text"], r["reasoning"]) for r in map(json.loads, text.splitlines(keepends=True))]
    assert part.read_text().endswith("\n") and content(part.read_text()) == content("".join(lines))
    assert without_timings(again) == without_timings(res)


def test_shards_then_merge_equal_one_process(arith_tokenizer, tmp_path):
    examples, data = arith_data(tmp_path, n=20)
    cfg = eval_config(tmp_path, data)
    asked = {m: [] for m in ("never", "always", "router")}
    entries = fake_entries(examples, arith_tokenizer, asked=asked)
    assert eval_stage.main(cfg, shard="0/3", entries=entries) is None
    assert asked["never"] == [e.id for e in examples[:6]]  # a contiguous block
    assert eval_stage.main(cfg, shard="1/3", entries=entries) is None
    assert not (tmp_path / "eval" / "results.json").exists()
    with pytest.raises(DataError, match=r"incomplete \(arith/never/seed 0: 7 of 20 questions unanswered"):
        eval_stage.main(cfg, entries=entries, answer=False)
    merged = eval_stage.main(cfg, shard="2/3", entries=entries)  # the last shard merges
    assert sorted(asked["router"]) == sorted(e.id for e in examples)  # every question once
    single = eval_stage.main(eval_config(tmp_path / "one", data), entries=fake_entries(examples, arith_tokenizer))
    assert without_timings(merged) == without_timings(single)
    assert merged["settings"]["shards"] == ["part-0-of-3.jsonl", "part-1-of-3.jsonl", "part-2-of-3.jsonl"]
    assert without_timings(eval_stage.main(cfg, entries=entries, answer=False)) == without_timings(single)
    with pytest.raises(ConfigError, match="shard must be i/n with 0 <= i < n.*got '3/3'"):
        eval_stage.main(cfg, shard="3/3", entries=entries)


def test_cache_keys_follow_settings_and_model_files(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"a" * 1000)
    cfg = load_config("demo", [f"pipeline.base={base}", f"eval.out={tmp_path / 'eval'}"])

    def keys(c):
        return {e.name: e.key for e in system_entries(c)}

    before = keys(cfg)
    assert len(set(before.values())) == 3
    assert keys(load_config("demo", [f"pipeline.base={base}", "eval.systems.2.threshold=0.3"]))["router"] != before["router"]
    assert keys(load_config("demo", [f"pipeline.base={base}", "pipeline.answer_max_new_tokens=5"]))["never"] != before["never"]
    assert keys(load_config("demo", [f"pipeline.base={base}", "pipeline.batch_size=3"])) == before  # batching is not content
    (base / "model.safetensors").write_bytes(b"b" * 1000)  # retrained: same size, other weights
    assert keys(cfg)["never"] != before["never"]
    with pytest.raises(ConfigError, match="key 'eval.systems.0.model' is needed for kind model"):
        load_config("demo", ["eval.systems.0.kind=model"])  # the config refuses it before any system is built
    with pytest.raises(ConfigError, match="key 'eval.systems.0.model.model' is needed with base_url"):
        load_config("demo", ["eval.systems.0.kind=model", "eval.systems.0.model={base_url: 'http://127.0.0.1:9/v1'}"])
    with pytest.raises(ConfigError, match="key 'eval.systems.0.base.tokenizer' is needed with base_url"):
        load_config("demo", ["eval.systems.0.base={base_url: 'http://127.0.0.1:9/v1', model: m}"])
    with pytest.raises(ConfigError, match="key 'eval.systems.0.model' is for kind model; a pipeline system's base model is `base`"):
        load_config("demo", ["eval.systems.0.model=somewhere"])


# ------------------------------------------------------------------------------ from the config, through the CLI


@pytest.fixture(scope="module")
def model_folders(arith_tokenizer, tmp_path_factory):
    """Untrained tiny-xs base and TTM, a router on (iteration, changed), and a LoRA adapter on the base."""
    from pseudocot.config import LoraConfig
    from pseudocot.models.lora import attach_lora
    from pseudocot.models.tiny import build_tiny_model
    from pseudocot.router.model import MLP, Router, StepRouter

    root = tmp_path_factory.mktemp("models")
    for name, seed in (("base", 1), ("ttm", 2)):
        build_tiny_model("tiny-xs", arith_tokenizer, seed=seed).save_pretrained(root / name)
        arith_tokenizer.save_pretrained(root / name)
    torch.manual_seed(0)
    info = {"features": ["iteration", "changed"], "max_thoughts": 2, "threshold": 0.0,
            "step": {"input_dim": 3, "hidden_size": 4}, "curve": [
                {"threshold": 1.0, "accuracy": 0.1, "calls_per_question": 0.0, "call_rate": 0.0},
                {"threshold": 0.0, "accuracy": 0.2, "calls_per_question": 2.0, "call_rate": 1.0}]}
    Router(StepRouter(MLP(3, 4, 1, 0.0), info["features"], 0.0, 2), None, info).save(root / "router")
    lora = attach_lora(build_tiny_model("tiny-xs", arith_tokenizer, seed=1), LoraConfig(r=2, alpha=4, target_modules=["q_proj"]))
    lora.save_pretrained(root / "adapter")
    return root


def test_eval_command_from_config(model_folders, tmp_path):
    torch.set_num_threads(1)
    examples, data = arith_data(tmp_path, n=6)
    m = model_folders
    (tmp_path / "eval.yaml").write_text(f"""
extends: demo
run: {{name: cfgrun, out_dir: {tmp_path / 'runs'}}}
pipeline: {{base: {m / 'base'}, ttm: {m / 'ttm'}, router: {m / 'router'}, answer_max_new_tokens: 6, thought_max_new_tokens: 6}}
eval:
  tasks: [{{name: arith, data: {data}}}]
  systems:
    - {{name: never, mode: never}}
    - {{name: always, mode: always, max_thoughts: 1}}
    - {{name: router, mode: router}}
    - {{name: lora, kind: model, model: {{path: {m / 'base'}, adapter: {m / 'adapter'}}}, max_new_tokens: 6}}
  n_boot: 100
  chunk_questions: 4
""")
    runner_ = CliRunner()
    result = runner_.invoke(cli, ["eval", "--config", str(tmp_path / "eval.yaml"), "--shard", "0/2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "results are written when every shard is done" in result.output
    result = runner_.invoke(cli, ["eval", "-c", str(tmp_path / "eval.yaml"), "eval.shard=1/2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "cfgrun" / "eval"
    res = json.loads((out / "results.json").read_text())
    assert list(res["systems"]) == ["never", "always", "router", "lora"]
    assert "router_vs_never" in result.output and "report: " in result.output
    s = res["systems"]
    assert s["always"]["thought_calls_per_question"] <= 1.0  # untrained models: thoughts are often empty
    built = {e.name: e.build() for e in system_entries(load_config(str(tmp_path / "eval.yaml")))[:3]}
    assert built["always"].pipeline.cfg.max_thoughts == 1  # the system's own max_thoughts
    assert built["router"].pipeline.cfg.max_thoughts == 2  # the trained router's
    assert built["never"].pipeline.ttm is None
    assert s["router"]["router_curve"][1]["calls_per_question"] == 2.0
    assert s["always"]["parameters"]["total"] == 2 * s["never"]["parameters"]["total"] == 2 * s["lora"]["parameters"]["total"]
    assert s["lora"]["kind"] == "model" and s["lora"]["thought_calls_per_question"] == 0
    for f in FIGURES:
        assert (out / "figures" / f).is_file()
    # everything is cached: merging again loads no model and changes no cache file
    parts = {p: p.read_bytes() for p in (out / "cache").rglob("part-*.jsonl")}
    result = runner_.invoke(cli, ["eval", "merge", "--config", str(tmp_path / "eval.yaml")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in (out / "cache").rglob("part-*.jsonl")} == parts
    assert without_timings(json.loads((out / "results.json").read_text())) == without_timings(res)


def test_eval_command_user_errors(tmp_path):
    def run(*args):
        return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)

    result = run(f"run.out_dir={tmp_path}")
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"error: {tmp_path}/demo/data/test.jsonl: no such data for task 'arith'; "
                                     "run `pseudocot data` first or set eval.tasks.0.data.")
    arith_data(tmp_path, n=3)
    result = run("--shard", "2/2", f"eval.tasks.0.data={tmp_path / 'test.jsonl'}")
    assert result.exit_code == 1 and "--shard must be i/n with 0 <= i < n" in result.stderr and "'2/2'" in result.stderr
    result = run("eval.systems.0.kind=model", f"eval.tasks.0.data={tmp_path / 'test.jsonl'}")
    assert result.exit_code == 1 and "key 'eval.systems.0.model' is needed for kind model" in result.stderr
    result = run("stray")
    assert result.exit_code == 2 and "'stray' is neither a subcommand" in result.output


def test_sampled_systems_use_every_seed(arith_tokenizer, tmp_path):
    examples, data = arith_data(tmp_path, n=6)
    cfg = eval_config(tmp_path, data, seeds=[3, 4])
    entries = fake_entries(examples, arith_tokenizer)
    entries[0].sampled = True  # as a system with temperature > 0
    res = eval_stage.main(cfg, entries=entries, figures=False)
    assert res["systems"]["never"]["seeds"] == [3, 4] and res["systems"]["always"]["seeds"] == [3]
    rows = (tmp_path / "eval" / "predictions" / "arith" / "never.jsonl").read_text().splitlines()
    assert [json.loads(r)["seed"] for r in rows] == [3] * 6 + [4] * 6
    assert SystemConfig(name="x").temperature == 0.0
