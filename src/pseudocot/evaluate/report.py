"""The evaluation report: `report.md` with a table in the shape of the paper's Table 5.1 (systems x
benchmarks x accuracy, BLEU, ROUGE-L), faithfulness, cost, intervals and paired comparisons; the
same numbers as `report.csv` and `report.json`; and three figures under `figures/`:

- `accuracy.png`: accuracy per system with its 95% interval, one panel per task (Figs. 5.1-5.3);
- `accuracy_vs_parameters.png`: accuracy against parameter count, base + TTM counted together (Fig. 5.4);
- `thought_calls.png`: accuracy against thought calls per question: never, always, the router (and
  its threshold sweep on validation, when the router folder has one).

    pseudocot eval report runs/a/eval/results.json runs/b/eval/results.json --out compare/

Several results files are read side by side: systems are then named `<run>/<system>`. Paired
comparisons are only made within one file (the same questions).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pseudocot.errors import DataError
from pseudocot.files import atomic_write_text
from pseudocot.layout import EvalLayout

FIGURES = ("accuracy.png", "accuracy_vs_parameters.png", "thought_calls.png")

COLUMNS = ["source", "task", "system", "kind", "mode", "n", "seeds", "accuracy", "ci_low", "ci_high", "accuracy_std",
           "bleu", "rougeL", "faithfulness", "faithfulness_n", "answer_matches_last_value", "thought_calls_per_question",
           "generated_tokens_per_question", "base_tokens_per_question", "ttm_tokens_per_question",
           "seconds_per_question", "wall_seconds", "parameters", "flops_per_question"]


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A results.json, checked enough that the report can read it."""
    path = Path(path)
    if path.is_dir():
        path = EvalLayout(path).results
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such results file; give the results.json that `pseudocot eval` writes.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); give the results.json that `pseudocot eval` writes.") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict) or not data["tasks"]:
        raise DataError(f"{path}: not a pseudocot results file (no 'tasks'); give the results.json that `pseudocot eval` writes.")
    for task, t in data["tasks"].items():
        if not isinstance(t, dict) or not isinstance(t.get("systems"), dict):
            raise DataError(f"{path}: task '{task}' has no 'systems'; the file is damaged or from another program.")
        for name, s in t["systems"].items():
            if not isinstance(s, dict) or "accuracy" not in s or "ci95" not in s:
                raise DataError(f"{path}: system '{name}' of task '{task}' has no 'accuracy' or 'ci95'; the file is damaged.")
    return data


def _labels(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """What each results file is called in the report: its run name, made unique."""
    labels = [str(r.get("run") or Path(n).parent.name or f"results{i}") for i, (r, n) in enumerate(zip(results, names))]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i}" for i, label in enumerate(labels)]
    return labels


def table_rows(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (results file, task, system) with every scalar of the report."""
    labels = _labels(results, names)
    several = len(results) > 1
    rows = []
    for label, r in zip(labels, results):
        for task, t in r["tasks"].items():
            for name, s in t["systems"].items():
                tokens = s.get("generated_tokens_per_question_by_model") or {}
                params = s.get("parameters") or {}
                rows.append({
                    "source": label, "task": task, "system": f"{label}/{name}" if several else name,
                    "kind": s.get("kind"), "mode": s.get("mode"), "n": s.get("n"), "seeds": len(s.get("seeds") or [0]),
                    "accuracy": s["accuracy"], "ci_low": s["ci95"][0], "ci_high": s["ci95"][1],
                    "accuracy_std": s.get("accuracy_std"), "bleu": s.get("bleu"), "rougeL": s.get("rougeL"),
                    "faithfulness": s.get("faithfulness"), "faithfulness_n": s.get("faithfulness_n"),
                    "answer_matches_last_value": s.get("answer_matches_last_value"),
                    "thought_calls_per_question": s.get("thought_calls_per_question"),
                    "generated_tokens_per_question": s.get("generated_tokens_per_question"),
                    "base_tokens_per_question": tokens.get("base", tokens.get("model")),
                    "ttm_tokens_per_question": tokens.get("ttm"),
                    "seconds_per_question": s.get("seconds_per_question"), "wall_seconds": s.get("wall_seconds"),
                    "parameters": params.get("total"), "flops_per_question": s.get("flops_per_question"),
                    "router_curve": s.get("router_curve"), "router_validation": s.get("router_validation"),
                    "router_calibration": s.get("router_calibration"),
                })
    return rows


def comparison_rows(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    labels = _labels(results, names)
    several = len(results) > 1
    rows = []
    for label, r in zip(labels, results):
        for task, t in r["tasks"].items():
            for key, c in (t.get("comparisons") or {}).items():
                pre = f"{label}/" if several else ""
                rows.append({"source": label, "task": task, "comparison": key, "a": pre + c["a"], "b": pre + c["b"],
                             "delta": c["delta"], "ci_low": c["ci95"][0], "ci_high": c["ci95"][1],
                             "p_value": c["p_value"], "a_only": c.get("a_only"), "b_only": c.get("b_only"), "n": c.get("n")})
    return rows


# ------------------------------------------------------------------------------- formatting


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else "< 0.001"


def _p_is(p: float) -> str:
    """`p = 0.02` or `p < 0.001`, for prose."""
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def _flops(x: float | None) -> str:
    """FLOPs in engineering units: 1.23e9 -> "1.23 G"."""
    if x is None:
        return "–"
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.3g} {unit}"
    return f"{x:.3g}"


def _params(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _md_table(header: list[str], body: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _opening(results: Sequence[dict[str, Any]], rows: list[dict[str, Any]], comps: list[dict[str, Any]]) -> str:
    systems = list(dict.fromkeys(r["system"] for r in rows))
    tasks = {}
    for res in results:
        for name, t in res["tasks"].items():
            tasks.setdefault(name, (t.get("n_questions"), t.get("extraction")))
    task_text = ", ".join(f"{name} ({n} questions, `{ex}` extraction)" for name, (n, ex) in tasks.items())
    n_boot = results[0].get("settings", {}).get("n_boot", 10_000)
    sampled = sorted({r["system"] for r in rows if r["seeds"] > 1})
    decoding = (f"Systems that sample ({', '.join(sampled)}) generated once per seed and their numbers are means over "
                "seeds; the others decoded greedily, so one generation stands for every seed." if sampled else
                "Every system decoded greedily, so one generation per system stands for every seed.")
    setup = "".join(r.get("setup", "") + " " for r in results[:1] if r.get("setup"))
    text = (f"{setup}{'It compares ' if setup else ''}{len(systems)} systems ({', '.join(systems)}) on {task_text}. "
            f"Accuracy is the share of questions whose "
            f"extracted answer equals the reference, with a 95% percentile bootstrap interval over questions "
            f"({n_boot:,} resamples). {decoding}")
    # The headline: the primary task of the first file, against its first system.
    first = results[0]
    primary = first.get("primary_task") or next(iter(first["tasks"]))
    prow = [r for r in rows if r["task"] == primary and r["source"] == rows[0]["source"]]
    if prow:
        best = max(prow, key=lambda r: r["accuracy"])
        tied = [r["system"] for r in prow if r["accuracy"] == best["accuracy"]]
        if len(tied) == len(prow) > 1:
            text += f"\n\nOn {primary}, every system reaches the same accuracy, {_pct(best['accuracy'])}%."
        else:
            who = f"{best['system']} is" if len(tied) == 1 else f"{', '.join(tied)} are"
            text += (f"\n\nOn {primary}, {who} the most accurate: {_pct(best['accuracy'])}% "
                     f"[{_pct(best['ci_low'])}, {_pct(best['ci_high'])}]")
            if len(tied) == 1 and best["thought_calls_per_question"]:
                text += f" with {best['thought_calls_per_question']:.2f} thought calls per question"
            text += "."
        base = prow[0]["system"]
        against = [c for c in comps if c["task"] == primary and c["b"] == base and c["source"] == rows[0]["source"]]
        calls = {r["system"]: r["thought_calls_per_question"] for r in prow}
        if against:
            parts = []
            for c in against:
                part = (f"{c['a']} {100 * c['delta']:+.1f} points [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] "
                        f"(McNemar {_p_is(c['p_value'])}")
                if calls.get(c["a"]) is not None:
                    part += f"; {calls[c['a']]:.2f} thought calls per question"
                parts.append(part + ")")
            text += f" Against {base}: " + "; ".join(parts) + "."
    return text + ("\n\nThe figures (accuracy per system, accuracy against parameters, accuracy against thought calls) "
                   "are in `figures/` and at the end of this report.")


def _questions_section(q: dict[str, Any]) -> list[str]:
    """Where the run's questions came from: the questions stage's documents, items, and what each check rejected."""
    splits = q.get("splits") or {}
    parts = ", ".join(f"{name} {v['questions']} questions of {v['documents']} documents" for name, v in splits.items())
    out = ["## Questions from documents", "",
           f"The questions were written by `{q.get('teacher')}` from {q.get('documents')} documents ({q.get('chunks')} chunks): "
           f"{q.get('items')} items, of which the checks kept {q.get('kept')} ({_pct(q.get('keep_rate'))}%); "
           f"{q.get('malformed') or 0} replies held no readable item after their second try. Split by document: {parts}. "
           "An item failing several checks counts under each.", ""]
    reasons = q.get("rejected") or {}
    body = [[check, str(n), ", ".join(f"`{r}` {m}" for r, m in sorted(reasons.items(), key=lambda kv: -kv[1])
                                      if r.split(":")[0] == check)]
            for check, n in sorted((q.get("rejected_by_check") or {}).items(), key=lambda kv: -kv[1])]
    if body:
        out += [_md_table(["Check", "Rejected", "Reasons"], body, ["l", "r", "l"]), ""]
    return out


def _precision(p: dict[str, Any] | None) -> str:
    """A stage's `precision` record as a few words: `fp32`, `fp32, bf16 autocast`, `bfloat16 + uint8 weights`."""
    if not p:
        return "–"
    weights = [w.replace("float32", "fp32") for w in p.get("weights") or []]
    text = " + ".join(weights) + (" weights" if weights != ["fp32"] else "")
    return text + (f", {p['autocast']} autocast" if p.get("autocast") else "")


MACHINE_COLUMNS = ("machine", "threads", "variables", "torch", "transformers", "trl", "peft", "accelerate", "pseudocot")


def sources(results: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, dict[str, str]]]:
    """Where a results.json's numbers came from, as (what, precision, summary) rows: the process that wrote it, each
    system whose answers were last generated in another environment, and each model folder the systems read that
    records its training. Empty for a results file written before environments were recorded."""
    from pseudocot.models.environment import summary

    own = summary(results.get("environment"))
    if not own:
        return []
    rows: list[tuple[str, dict[str, Any] | None, dict[str, str]]] = [("evaluation", None, own)]
    seen = set()
    for task in results.get("tasks", {}).values():
        for name, s in task.get("systems", {}).items():
            other = s.get("answered_on")
            if other and other != own and name not in seen:
                seen.add(name)
                rows.append((f"answers of {name}", None, other))
    for path, m in (results.get("trained_on") or {}).items():
        rows.append((f"{m.get('role')}: `{Path(path).name}`", m.get("precision"), m.get("environment") or {}))
    return rows


def _machine_section(results: Sequence[dict[str, Any]], names: Sequence[str]) -> list[str]:
    """Where the numbers came from (`sources` of each results file)."""
    body = []
    for r, label in zip(results, _labels(results, names)):
        prefix = f"{label}: " if len(results) > 1 else ""
        body += [[prefix + what, _precision(precision), *(env.get(c, "–") for c in MACHINE_COLUMNS)]
                 for what, precision, env in sources(r)]
    if not body:
        return []
    return ["## Machine", "",
            "What each number was computed on: the process that scored the answers, any system whose answers were "
            "last generated elsewhere (another shard, a cache written by another commit), and every trained model the "
            "systems read that records it, with the precision it trained in. Results move with the CPU (its vector "
            "ISA, bf16 instructions) and library versions; the full records are `environment` in results.json and in "
            "each model's (and the router's) metrics.json.", "",
            _md_table(["What", "Precision", "Machine", "Threads", "Variables", "torch", "transformers", "trl", "peft",
                       "accelerate", "pseudocot"], body, ["l"] * 3 + ["r"] + ["l"] * 7), ""]


def render_markdown(results: Sequence[dict[str, Any]], names: Sequence[str], figures: Sequence[str]) -> str:
    rows = table_rows(results, names)
    comps = comparison_rows(results, names)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    by = {(r["system"], r["task"]): r for r in rows}
    out = ["# Evaluation report", "", _opening(results, rows, comps), ""]

    out += ["## Accuracy, BLEU and ROUGE-L", "",
            "Accuracy in % with its 95% interval; BLEU (0-100) and ROUGE-L (F, 0-1) of everything the system wrote "
            "(thoughts, then the answer) against the reference reasoning (– where the data has none).", ""]
    header = ["System"] + [h for t in tasks for h in (f"{t} accuracy", f"{t} BLEU", f"{t} ROUGE-L")]
    body = []
    for s in systems:
        cells = [s]
        for t in tasks:
            r = by.get((s, t))
            cells += ([f"{_pct(r['accuracy'])} [{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]", _num(r["bleu"]),
                       _num(r["rougeL"], 3)] if r else ["–", "–", "–"])
        body.append(cells)
    out += [_md_table(header, body), ""]

    out += ["## Faithfulness and cost", "",
            "Faithfulness: share of true `a op b = c` statements in what the system wrote (over the n texts that state "
            "any); answer = last value: share of those texts whose answer is the last statement's result. Cost per "
            "question: thought calls, generated tokens (base + TTM for the pipeline), estimated forward FLOPs (2 x "
            "parameters x tokens each model ran through, cached prefixes not charged: `pseudocot.cost`), seconds of "
            "generation; parameters count base and TTM together for systems that think.", ""]
    header = ["System", "Task", "Faithfulness (n)", "Answer = last value", "Thought calls", "Tokens (base + TTM)",
              "FLOPs", "Seconds", "Parameters"]
    body = []
    for r in rows:
        tokens = _num(r["generated_tokens_per_question"])
        if r["ttm_tokens_per_question"] is not None:
            tokens += f" ({_num(r['base_tokens_per_question'])} + {_num(r['ttm_tokens_per_question'])})"
        body.append([r["system"], r["task"], f"{_pct(r['faithfulness'])}% ({r['faithfulness_n']})" if r["faithfulness"] is not None else "–",
                     f"{_pct(r['answer_matches_last_value'])}%" if r["answer_matches_last_value"] is not None else "–",
                     _num(r["thought_calls_per_question"], 2), tokens, _flops(r["flops_per_question"]),
                     _num(r["seconds_per_question"], 3), _params(r["parameters"])])
    out += [_md_table(header, body, ["l", "l"] + ["r"] * 7), ""]

    questions = next((r["questions"] for r in results if r.get("questions")), None)
    if questions:
        out += _questions_section(questions)

    calibrated = {r["system"]: r["router_calibration"] for r in rows if r.get("router_calibration")}
    if calibrated:
        out += ["## Router calibration", "",
                "Expected calibration error of the router's heads on its validation rows (10 bins): the step head (go on?) "
                "and the answer head (is this answer right?), before temperature scaling and after it (cross-fitted on "
                "two halves of the rows); scaling keeps the order of the scores, so every decision is the same.", ""]
        body = [[name, head, f"{100 * c['ece']:.1f}%", f"{100 * c['ece_calibrated']:.1f}%", f"{c['temperature']:.2f}"]
                for name, heads in calibrated.items() for head, c in heads.items()]
        out += [_md_table(["System", "Head", "ECE", "ECE, scaled", "Temperature"], body, ["l", "l", "r", "r", "r"]), ""]

    if comps:
        out += ["## Paired comparisons", "",
                "Accuracy of A minus B on the same questions, in points, with a paired bootstrap 95% interval; p from "
                "the exact McNemar test on the questions exactly one of them gets right (A only / B only).", ""]
        header = ["Task", "A vs B", "Δ accuracy", "95% interval", "McNemar p", "A only / B only"]
        body = [[c["task"], f"{c['a']} vs {c['b']}", f"{100 * c['delta']:+.1f}",
                 f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]", _p(c["p_value"]), f"{c['a_only']} / {c['b_only']}"]
                for c in comps]
        out += [_md_table(header, body, ["l", "l", "r", "r", "r", "r"]), ""]

    out += _machine_section(results, names)

    if figures:
        captions = {"accuracy.png": "Accuracy per system with 95% intervals.",
                    "accuracy_vs_parameters.png": "Accuracy against parameter count (base + TTM counted together).",
                    "thought_calls.png": "Accuracy against thought calls per question: never, always and the router.",
                    "flops.png": "Accuracy against estimated FLOPs per question: every system, and the router's validation "
                                 "sweep beside the policies it was judged against (random, heuristic, oracle).",
                    "grpo_rewards.png": "GRPO: each reward's mean per step, and the share of groups whose rewards did not differ."}
        out += ["## Figures", ""]
        for f in figures:
            out += [f"![{captions.get(f, f)}](figures/{f})", "", f"*{captions.get(f, f)}*", ""]
    out += ["## Files", "", "The numbers above as data: `report.csv` (one row per system and task) and `report.json` "
            "(rows and comparisons). Sources: " + ", ".join(f"`{n}`" for n in names) + ".", ""]
    return "\n".join(out)


def write_report(results: Sequence[dict[str, Any]], out: str | os.PathLike[str], names: Sequence[str] | None = None,
                 figures: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv, report.json and (with `figures`) figures/*.png into `out`."""
    out = Path(out)
    names = list(names or [f"results{i}" for i in range(len(results))])
    rows = table_rows(results, names)
    comps = comparison_rows(results, names)
    written: dict[str, Path] = {}
    made: list[str] = []
    if figures:
        from pseudocot.evaluate.figures import draw_all

        curve = next((r["grpo"]["curve"] for r in results if (r.get("grpo") or {}).get("curve")), None)
        made = draw_all(rows, EvalLayout(out).figures, curve)
        written.update({f: EvalLayout(out).figures / f for f in made})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    written["report.csv"] = atomic_write_text(EvalLayout(out).report_file(".csv"), buf.getvalue())
    flat = [{k: v for k, v in r.items() if k in COLUMNS} for r in rows]
    written["report.json"] = atomic_write_text(EvalLayout(out).report_file(".json"), json.dumps(
        {"sources": names, "rows": flat, "comparisons": comps}, indent=2) + "\n")
    written["report.md"] = atomic_write_text(EvalLayout(out).report, render_markdown(results, names, made))
    return written
