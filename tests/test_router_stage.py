"""`pseudocot router` end to end on a tiny run folder (the `trained_tiny` fixture saved as both the
base model and the Tiny Thought Model), then the pipeline and `pseudocot chat` over what it saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pseudocot.config import load_config
from pseudocot.freshness import model_fingerprint
from pseudocot.layout import RunLayout
from pseudocot.pipeline import read_traces
from pseudocot.stages import router as router_stage
from pseudocot.tasks.registry import task_from
from tiny_run import write_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_tiny):
    return write_tiny_run(tmp_path_factory.mktemp("runs"), *trained_tiny, name="r")


def test_router_stage_trains_and_saves(run, monkeypatch):
    cfg = load_config(run)
    info = router_stage.main(cfg)
    out = RunLayout.of(cfg).root / "router"
    for name in ("router.json", "router.safetensors", "depth.safetensors", "traces/train-0000.jsonl", "traces/val-0000.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "router.json").read_text())
    assert saved == info
    assert info["features"] == ["hidden", "logprobs", "iteration", "changed"]
    assert info["max_thoughts"] == 2 and np.isfinite(info["threshold"])
    val = info["validation"]
    for k in ("never", "always", "router", "random_same_calls", "heuristic_same_calls", "depth", "oracle"):
        assert set(val[k]) == {"accuracy", "calls_per_question", "call_rate", "flops_per_question", "flops_rate"}
    # FLOPs: 2 x parameters x processed tokens of the validation traces, always at rate 1, never the cheapest
    assert info["parameters"]["base"] == info["parameters"]["ttm"] > 0  # the same tiny model plays both here
    assert val["always"]["flops_rate"] == pytest.approx(1.0)
    assert 0 < val["never"]["flops_rate"] <= val["router"]["flops_rate"] <= 1.0 + 1e-9
    traces = read_traces(out / "traces" / "val-0000.jsonl")
    n = info["parameters"]["base"]
    always = sum(2.0 * n * sum(t.processed.values()) for t in traces) / len(traces)
    assert val["always"]["flops_per_question"] == pytest.approx(always, rel=1e-5)
    # The curve runs from always (every thought) to never (none), and the chosen point is on it.
    curve = info["curve"]
    assert curve[0]["call_rate"] == pytest.approx(1.0) and curve[-1]["call_rate"] == 0.0
    assert curve[0]["accuracy"] == val["always"]["accuracy"] and curve[-1]["accuracy"] == val["never"]["accuracy"]
    assert any(p["accuracy"] == val["router"]["accuracy"] and p["call_rate"] == val["router"]["call_rate"] for p in curve)
    assert val["oracle"]["accuracy"] >= max(val["always"]["accuracy"], val["router"]["accuracy"])
    assert info["train"]["questions"] == 60 and info["train"]["rows"] > 0
    # what it ran on is beside router.json, in metrics.json, which the router's fingerprint leaves out
    assert "environment" not in saved
    assert json.loads((out / "metrics.json").read_text())["environment"]["packages"]["torch"] == torch.__version__

    # Done for this config: a second call neither collects nor trains.
    monkeypatch.setattr(router_stage, "collect", lambda *a, **k: pytest.fail("collected again"))
    assert router_stage.main(cfg) == info
    monkeypatch.undo()


def test_router_settings_retrain_on_the_same_traces(run, monkeypatch):
    """A change to the router's own training (penalty, width, seed) keeps the forced traces, the slow
    part; a change to what the traces are (the eval task's data file, say) does not touch them either
    unless the task's name or options change."""
    cfg = load_config(run)
    first = router_stage.main(cfg)
    traces = RunLayout.of(cfg).router_traces_dir
    made = {p.name: p.stat().st_mtime_ns for p in traces.iterdir()}
    changed = load_config(run, ["router.penalty=0.2", "router.hidden_size=8", "eval.tasks.0.data=elsewhere.jsonl"])
    second = router_stage.main(changed)
    assert second["key"] != first["key"] and second["step"]["hidden_size"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in traces.iterdir()} == made  # not one chunk collected again


def test_router_stage_resumes_collection_by_chunk(run, monkeypatch, tmp_path):
    cfg = load_config(run)
    out = RunLayout.of(cfg).root / "router"
    router_stage.main(cfg)
    made = model_fingerprint(out)
    (out / "router.json").unlink()  # as if killed after collecting
    (out / "traces" / "val-0000.jsonl").unlink()  # ... and half-way through validation
    calls = []
    real = router_stage._collect_chunk
    # trained again on another machine or commit (what the environment record says changes)
    monkeypatch.setattr(router_stage, "environment", lambda: {"cpu": {"model": "another machine"}})
    monkeypatch.setattr(router_stage, "_collect_chunk",
                        lambda pipe, prompts, exs, files: (calls.append(files[0].stem), real(pipe, prompts, exs, files)))
    info = router_stage.main(cfg)
    assert calls == ["val-0000"]
    assert (out / "router.json").is_file() and info["validation"]["questions"] == 30
    # the same router again, made elsewhere: the same fingerprint, so its evaluation's cached answers stay valid
    assert model_fingerprint(out) == made
    assert json.loads((out / "metrics.json").read_text())["environment"] == {"cpu": {"model": "another machine"}}


def test_pipeline_router_mode_matches_simulation(run):
    """The live router run ends where the policy simulation on forced traces says it will."""
    from pseudocot.data.chat import question_text
    from pseudocot.pipeline import load_pipeline
    from pseudocot.router import labels, policy
    from pseudocot.train.rows import read_split

    cfg = load_config(run)
    router_stage.main(cfg)
    pipe = load_pipeline(cfg)  # mode router by default
    exs = read_split(RunLayout.of(cfg).split("test"), "test")
    qs = [(e.id, question_text(e)) for e in exs]
    live = pipe.run(qs)
    forced = load_pipeline(cfg, mode="always").run(qs, collect=True)
    task = task_from(cfg.task_of("router"))
    correct, available = labels.outcomes(forced, exs, task, 2)
    scores = np.full((len(qs), 2), -np.inf)
    for q, t in enumerate(forced):
        if available[q]:
            scores[q, : available[q]] = pipe.router.score(t.features[: available[q]])
    depth = policy.stop_depths(scores, available, np.array([pipe.router.threshold]))[0]
    assert [t.thought_calls for t in live] == depth.tolist()
    assert [t.final_answer for t in live] == [f.answers[d].final for f, d in zip(forced, depth)]
    assert all(t.answers[-1].router_score is not None or t.stop_reason != "router" for t in live)
    depth_traces = load_pipeline(cfg, mode="depth").run(qs[:6])
    assert all(t.depth is not None and len(t.answers) == 1 for t in depth_traces)


def test_chat_over_the_run(run):
    from pseudocot.cli import cli

    cfg = load_config(run)
    router_stage.main(cfg)
    runner = CliRunner()
    result = runner.invoke(cli, ["chat", "--run", str(RunLayout.of(cfg).root)],
                           input="Mia has 5 apples. She gets 3 more apples. How many apples does Mia have now?\n"
                                 "/mode always\nLeo has 9 coins. He loses 2 coins. How many coins are left?\n/quit\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "mode router" in out and "mode always" in out
    assert out.count("answer 0:") == 2
    assert "router:" in out and "thought 1:" in out
    assert out.count("= ") >= 2 and "stopped:" in out


def test_chat_without_a_run_is_one_line_error(tmp_path):
    from pseudocot.cli import cli

    result = CliRunner().invoke(cli, ["chat", "--run", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "config.yaml" in result.output


def test_a_router_that_reads_the_thoughts_sees_in_the_loop_what_it_trained_on(run):
    """`thought` features: the stage computes them from the traces' text, the loop from the thoughts it just wrote;
    both must be the same numbers, or the router would be judged on inputs it never saw."""
    import torch

    from pseudocot.freshness import router_chunk
    from pseudocot.pipeline import load_pipeline
    from pseudocot.train.rows import read_split

    cfg = load_config(run, ["router.features=[logprobs, iteration, changed, thought]"])
    info = router_stage.main(cfg)
    assert info["features"] == ["logprobs", "iteration", "changed", "thought"]
    layout = RunLayout.of(cfg)
    task = task_from(cfg.task_of("router"))
    exs = read_split(layout.split("train"), "train")[: cfg.router.train_questions]
    pipe = load_pipeline(cfg, mode="always")
    traces, parts = router_stage.collect(pipe, task, exs, layout, "train", router_chunk(cfg))
    forced = pipe.run([(e.id, p) for e, p in zip(exs, task.prompts(exs))], collect=True)
    assert torch.equal(parts["thought"], torch.tensor([s.thought for t in forced for s in t.features]))
    assert parts["thought"][:, 0].any() and not parts["thought"][:, 0].all()  # answers with and without thoughts
    live = load_pipeline(cfg).run([(e.id, p) for e, p in zip(exs[:8], task.prompts(exs[:8]))])
    assert all(t.answers[0].router_score is not None for t in live if len(t.answers) > 1 or t.stop_reason == "router")


def test_thought_features_read_the_last_thought_and_the_question():
    from pseudocot.pipeline import thought_features

    q = "Sam has 5 books. He gets 6 more. A friend gives him 2 more. How many books does Sam have?"
    assert thought_features(q, [], "13") == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # the answer is the thought's value; one true statement; 2 of the question's 3 numbers used; 5 words
    assert thought_features(q, ["5 + 6 = 11"], "11") == [1.0, 1.0, 1.0, 1.0, 2 / 3, 0.5]
    # a false statement, an answer that is not its value, every number used
    assert thought_features(q, ["5 + 6 = 11", "11 + 2 = 14"], "13") == [1.0, 0.0, 1.0, 0.0, 1.0, 0.5]
    # an answer line: no statement, its number agrees
    assert thought_features(q, ["5 + 6 = 11", "11 + 2 = 13", "The answer is 13."], "13") == [1.0, 1.0, 0.0, 1.0, 1.0, 0.4]


def test_a_router_that_reads_the_thought_first_trains_and_runs(run):
    from pseudocot.config import load_config as load
    from pseudocot.errors import ConfigError
    from pseudocot.pipeline import load_pipeline
    from pseudocot.train.rows import read_split

    with pytest.raises(ConfigError, match="router.reads"):
        load(run, ["router.reads=thought"])  # without the thought feature it would read nothing
    cfg = load(run, ["router.reads=thought", "router.features=[logprobs, iteration, changed, thought]"])
    info = router_stage.main(cfg)
    answer_first = router_stage.main(load(run, ["router.features=[logprobs, iteration, changed, thought]"]))
    assert info["reads"] == "thought" and info["key"] != answer_first["key"]
    # it pays for the thought it rejects: at its strictest threshold every question still has one thought written (and
    # rejected), where a router that decides first writes none; at its loosest it is always
    curve = info["curve"]
    assert curve[0]["call_rate"] == pytest.approx(1.0) and curve[0]["accuracy"] == info["validation"]["always"]["accuracy"]
    assert curve[-1]["accuracy"] == info["validation"]["never"]["accuracy"] and curve[-1]["calls_per_question"] > 0
    cfg = load(run, ["router.reads=thought", "router.features=[logprobs, iteration, changed, thought]"])
    router_stage.main(cfg)
    pipe = load_pipeline(cfg)
    assert pipe.router.reads == "thought"
    task = task_from(cfg.task_of("router"))
    exs = read_split(RunLayout.of(cfg).split("test"), "test")[:12]
    traces = pipe.run([(e.id, p) for e, p in zip(exs, task.prompts(exs))])
    for t in traces:
        assert len(t.answers) == len(t.shown_thoughts) + 1  # the base re-answered after each accepted thought only
        assert all(x.rejected == (t.stop_reason == "router" and k == len(t.thoughts) - 1) for k, x in enumerate(t.thoughts))


def test_a_selecting_router_on_value_labels_trains_and_returns_what_the_simulation_says(run):
    """`router.select: best` with `router.labels: value`: the answer head and its calibration are saved, and the live
    loop returns, of the answers before it stops, the one the head scores highest, as the simulation does."""
    from pseudocot.config import load_config as load
    from pseudocot.pipeline import load_pipeline
    from pseudocot.router import labels, policy
    from pseudocot.train.rows import read_split

    cfg = load(run, ["router.select=best", "router.labels=value"])
    info = router_stage.main(cfg)
    out = RunLayout.of(cfg).root / "router"
    assert (out / "answer.safetensors").is_file()
    assert info["select"] == "best" and info["labels"] == "value" and info["step"]["outputs"] == 3
    for head in ("step", "answer"):
        c = info["calibration"][head]
        assert 0 <= c["ece"] <= 1 and 0 <= c["ece_calibrated"] <= 1 and c["temperature"] > 0
    assert set(info["validation"]["always_best_answer"]) >= {"accuracy", "call_rate"}
    pipe = load_pipeline(cfg)
    assert pipe.router.select == "best"
    task = task_from(cfg.task_of("router"))
    exs = read_split(RunLayout.of(cfg).split("test"), "test")
    qs = [(e.id, p) for e, p in zip(exs, task.prompts(exs))]
    live = pipe.run(qs)
    forced = load_pipeline(cfg, mode="always").run(qs, collect=True)
    correct, available = labels.outcomes(forced, exs, task, 2)
    steps = np.full((len(qs), 2), -np.inf)
    answers = np.full((len(qs), 3), -np.inf)
    for q, t in enumerate(forced):
        if available[q]:
            steps[q, : available[q]] = pipe.router.score(t.features[: available[q]])
        answers[q, : len(t.answers)] = pipe.router.answer_scores(t.features)
    depth = policy.stop_depths(steps, available, np.array([pipe.router.threshold]))[0]
    assert [t.thought_calls for t in live] == depth.tolist()
    for t, f, d, a in zip(live, forced, depth, answers):
        chosen = max(range(d + 1), key=lambda i: (a[i], i))  # the best score, the later answer on a tie
        assert t.selected == chosen and t.final_answer == f.answers[chosen].final
        assert t.final_text == t.answers[chosen].text and all(x.answer_score is not None for x in t.answers)
    picked = labels.selected_correct(correct, answers, available)
    assert np.mean([task.is_correct(t.final_text, e) for t, e in zip(live, exs)]) == pytest.approx(
        picked[np.arange(len(qs)), depth].mean())


def test_top_entropy_reads_the_five_likeliest_tokens_renormalised():
    import math

    from pseudocot.router.features import entropy_stats, top_entropy

    uniform = {f"t{i}": math.log(0.1) for i in range(5)}
    assert top_entropy(uniform) == pytest.approx(math.log(5))  # renormalised over the five: uniform
    assert top_entropy({**uniform, "chosen": math.log(0.01)}) == pytest.approx(math.log(5))  # a 6th (the chosen) is cut
    assert top_entropy({"a": 0.0, "b": -50.0}) == pytest.approx(0.0, abs=1e-12)
    assert entropy_stats([uniform, {"a": 0.0}]) == pytest.approx([math.log(5) / 2, math.log(5), math.log(5), 0.0])
    assert entropy_stats(None) == [0.0, 0.0, 0.0, 0.0]
