"""The evaluation report (`pseudocot.evaluate.report`, `figures`): report.md in the shape of the
paper's Table 5.1, the same numbers as CSV and JSON, the three figures, and `pseudocot eval report`
rebuilding it from one or several results files."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from eval_fakes import arith_data, check_png, eval_config, fake_entries
from pseudocot.cli import cli
from pseudocot.evaluate.report import FIGURES, read_results, render_markdown, write_report
from pseudocot.stages import eval as eval_stage


@pytest.fixture(scope="module")
def two_runs(arith_tokenizer, tmp_path_factory):
    """Two finished fake evaluations (run names `a` and `b`) with parameter counts."""
    root = tmp_path_factory.mktemp("runs")
    examples, data = arith_data(root, n=30)
    params = {"never": 1_000_000, "always": 1_300_000, "router": 1_300_000}
    out = []
    for name, n in (("a", 30), ("b", 20)):
        cfg = eval_config(root / name, data, name=name, max_questions=n)
        eval_stage.main(cfg, entries=fake_entries(examples, arith_tokenizer, parameters=params))
        out.append(root / name / "eval")
    return out


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_stage_report_tables_and_files(two_runs):
    out = two_runs[0]
    results = read_results(out / "results.json")
    md = (out / "report.md").read_text()
    # Table 5.1: systems as rows, accuracy / BLEU / ROUGE-L per benchmark
    assert "| System | arith accuracy | arith BLEU | arith ROUGE-L |" in md
    s = results["systems"]
    lo, hi = (100 * x for x in s["router"]["ci95"])
    assert f"| router | {100 * s['router']['accuracy']:.1f} [{lo:.1f}, {hi:.1f}] | {s['router']['bleu']:.1f} |" in md
    assert "## Faithfulness and cost" in md and "## Paired comparisons" in md
    c = results["comparisons"]["router_vs_never"]
    assert f"| arith | router vs never | {100 * c['delta']:+.1f} |" in md
    assert "On arith, always is the most accurate: 100.0%" in md
    assert "Every system decoded greedily" in md
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["system"] for r in rows] == ["never", "always", "router"]
    assert float(rows[2]["accuracy"]) == s["router"]["accuracy"] and rows[2]["parameters"] == "1300000"
    data = json.loads((out / "report.json").read_text())
    assert len(data["rows"]) == 3 and len(data["comparisons"]) == 3
    assert data["rows"][0]["thought_calls_per_question"] == 0
    for f in FIGURES:
        check_png(out / "figures" / f)


def test_report_rebuilds_from_several_results(two_runs, tmp_path):
    a, b = two_runs
    result = invoke("eval", "report", a / "results.json", b, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "6 systems (a/never, a/always, a/router, b/never, b/always, b/router)" in md
    assert "| a/router |" in md and "| b/router |" in md
    assert "| arith | b/router vs b/never |" in md
    rows = list(csv.DictReader((tmp_path / "cmp" / "report.csv").open()))
    assert [(r["source"], r["n"]) for r in rows] == [("a", "30")] * 3 + [("b", "20")] * 3
    for f in FIGURES:
        check_png(tmp_path / "cmp" / "figures" / f)
    # one file rebuilt elsewhere gives the same report as the stage wrote
    result = invoke("eval", "report", a / "results.json", "--out", tmp_path / "one", "--no-figures")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "one" / "report.csv").read_text() == (a / "report.csv").read_text()
    assert not (tmp_path / "one" / "figures").exists()


def test_report_of_a_sampled_system_and_missing_counts(two_runs, tmp_path):
    results = json.loads((two_runs[0] / "results.json").read_text())
    s = results["tasks"]["arith"]["systems"]
    s["router"]["seeds"], s["router"]["parameters"] = [0, 1, 2], None
    md = render_markdown([results], ["r.json"], [])
    assert "Systems that sample (router) generated once per seed" in md
    write_report([results], tmp_path, ["r.json"])
    check_png(tmp_path / "figures" / "accuracy_vs_parameters.png")  # router left out, noted on the figure


def test_a_run_with_grpo_gets_its_reward_curves(two_runs, tmp_path):
    results = json.loads((two_runs[0] / "results.json").read_text())
    results["grpo"] = {"target": "ttm", "rewards": {"base_correct": 1.0, "arithmetic": 1.0}, "steps": 20, "curve": [
        {"step": s, "rewards/base_correct/mean": 0.3 + s / 100, "rewards/arithmetic/mean": 0.4, "frac_reward_zero_std": 0.1,
         "rewards/base_correct/zero_spread_groups": 0.2, "base_correct/without_thoughts": 0.18} for s in (10, 20)]}
    write_report([results], tmp_path, ["r.json"])
    check_png(tmp_path / "figures" / "grpo_rewards.png")
    assert "![GRPO: each reward's mean per step" in (tmp_path / "report.md").read_text()
    del results["grpo"]
    write_report([results], tmp_path / "plain", ["r.json"])
    assert not (tmp_path / "plain" / "figures" / "grpo_rewards.png").exists()


def test_the_cost_figure_draws_systems_and_the_routers_validation_policies(two_runs, tmp_path):
    results = json.loads((two_runs[0] / "results.json").read_text())
    write_report([results], tmp_path / "none", ["r.json"])  # fake models: no parameter per model, so no FLOPs
    assert not (tmp_path / "none" / "figures" / "flops.png").exists()
    systems = results["tasks"]["arith"]["systems"]
    for name, f in (("never", 1.0e6), ("always", 4.0e6), ("router", 2.5e6)):
        systems[name]["flops_per_question"] = f
    systems["router"]["router_curve"] = [{"accuracy": a, "calls_per_question": c, "call_rate": c / 2.6, "flops_per_question": f}
                                         for a, c, f in ((0.4, 0.0, 1.0e6), (0.8, 1.2, 2.4e6), (0.95, 2.6, 4.0e6))]
    systems["router"]["router_validation"] = {
        k: {"accuracy": a, "calls_per_question": 1.2, "call_rate": 0.45, "flops_per_question": f}
        for k, a, f in (("random_same_calls", 0.6, 2.4e6), ("heuristic_same_calls", 0.65, 2.5e6), ("oracle", 0.97, 2.2e6))}
    written = write_report([results], tmp_path, ["r.json"])
    check_png(written["flops.png"])
    md = (tmp_path / "report.md").read_text()
    assert "![Accuracy against estimated FLOPs per question" in md and "| FLOPs |" in md
    assert "| 2.5 M |" in md  # the router's FLOPs in the cost table
    assert "## Router calibration" not in md  # a router without calibration (older router.json): no section


def test_the_report_gives_the_routers_calibration(two_runs, tmp_path):
    results = json.loads((two_runs[0] / "results.json").read_text())
    results["tasks"]["arith"]["systems"]["router"]["router_calibration"] = {
        "step": {"ece": 0.081, "ece_calibrated": 0.023, "temperature": 1.7}, "answer": {"ece": 0.012, "ece_calibrated": 0.02, "temperature": 0.9}}
    write_report([results], tmp_path, ["r.json"])
    md = (tmp_path / "report.md").read_text()
    assert "## Router calibration" in md
    assert "| router | step | 8.1% | 2.3% | 1.70 |" in md and "| router | answer | 1.2% | 2.0% | 0.90 |" in md


@pytest.mark.parametrize("content, message", [
    (None, "no such results file"),
    ("{", "not valid JSON"),
    ('{"systems": {}}', "not a pseudocot results file (no 'tasks')"),
    ('{"tasks": {"arith": {"systems": {"x": {"accuracy": 0.5}}}}}', "system 'x' of task 'arith' has no 'accuracy' or 'ci95'"),
])
def test_report_errors_are_one_line(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    result = invoke("eval", "report", path, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}: ") and message in result.stderr
