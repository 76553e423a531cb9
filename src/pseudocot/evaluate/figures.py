"""The report's figures as PNG, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes the report's rows (`report.table_rows`) and writes one file; `draw_all` writes
them and returns their names (`flops.png`, accuracy against estimated FLOPs, where the systems' costs are
known). A run with GRPO also gets its reward curves (`grpo_rewards_figure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

DPI = 150


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    from pseudocot.files import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")


def _colors(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    return {s: cmap(i % 10) for i, s in enumerate(systems)}


def _err(r: dict[str, Any]) -> list[list[float]]:
    """Error bar lengths (below, above) in percent."""
    return [[100 * (r["accuracy"] - r["ci_low"])], [100 * (r["ci_high"] - r["accuracy"])]]


def _label_points(ax: Any, points: Sequence[tuple[float, float, str]]) -> None:
    """Name each point to the right of it; systems on the same spot share one label, and labels of
    points at the same x closer than 5 units in y are stacked so they do not overlap."""
    spots: dict[tuple[float, float], list[str]] = {}
    for x, y, name in points:
        spots.setdefault((round(x, 9), round(y, 9)), []).append(name)
    by_x: dict[float, list[tuple[float, str]]] = {}
    for (x, y), names in spots.items():
        by_x.setdefault(x, []).append((y, ", ".join(names)))
    for x, labels in by_x.items():
        labels.sort(reverse=True)
        dy, last = 5, None
        for y, text in labels:
            dy = dy - 12 if last is not None and last - y < 5 else 5
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, dy), fontsize=9)
            last = y


def _percent_axis(ax: Any, top: float) -> None:
    """y from just below 0 (so points at 0% are not cut) to `top`, with no negative tick labels."""
    from matplotlib.ticker import MaxNLocator

    ticks = [t for t in MaxNLocator(nbins=6).tick_values(0, top) if 0 <= t <= top]
    ax.set_yticks(ticks)
    ax.set_ylim(-3, top)


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def accuracy_figure(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Bars of accuracy per system with 95% intervals, one panel per task."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    colors = _colors(rows)
    n_max = max(sum(1 for r in rows if r["task"] == t) for t in tasks)
    fig = _figure(max(4.0, 1.0 + 0.9 * n_max) * len(tasks), 4.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        mine = [r for r in rows if r["task"] == task]
        xs = range(len(mine))
        for x, r in zip(xs, mine):
            ax.bar(x, 100 * r["accuracy"], color=colors[r["system"]], width=0.7)
            ax.errorbar(x, 100 * r["accuracy"], yerr=_err(r), color="black", capsize=5, linewidth=1.2)
            ax.annotate(f"{100 * r['accuracy']:.1f}", (x, 100 * r["ci_high"]), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=9)
        ax.set_xticks(list(xs), [r["system"] for r in mine], rotation=20 if len(mine) > 4 else 0, ha="right" if len(mine) > 4 else "center")
        ax.set_ylim(0, min(105, 100 * max(r["ci_high"] for r in mine) + 12))
        ax.set_ylabel("accuracy (%)")
        n = mine[0]["n"]
        ax.set_title(f"{task} (n = {n}; bars: 95% bootstrap interval)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Accuracy per system")
    _save(fig, path)


def parameters_figure(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against parameter count (log scale), one marker series per task."""
    fig = _figure(6.4, 4.4)
    ax = fig.subplots()
    counted = [r for r in rows if r.get("parameters")]
    markers = "osD^v<>ph*"
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    colors = _colors(rows)
    for ti, task in enumerate(tasks):
        mine = [r for r in counted if r["task"] == task]
        for r in mine:
            ax.errorbar(r["parameters"], 100 * r["accuracy"], yerr=_err(r), fmt=markers[ti % len(markers)],
                        color=colors[r["system"]], capsize=4, markersize=7,
                        label=task if r is mine[0] and len(tasks) > 1 else None)
        _label_points(ax, [(r["parameters"], 100 * r["accuracy"], r["system"]) for r in mine])
    if counted:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _count(x)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
        lo = min(r["parameters"] for r in counted)
        hi = max(r["parameters"] for r in counted)
        ax.set_xlim(lo / 1.6, hi * 2.2)
        sizes = sorted({r["parameters"] for r in counted})
        ax.set_xticks(sizes, [_count(n) for n in sizes])  # ticks at the systems' own sizes
        _percent_axis(ax, min(105, 100 * max(r["ci_high"] for r in counted) + 10))
    else:
        ax.text(0.5, 0.5, "no parameter counts (endpoints need `parameters` in the config)", ha="center",
                va="center", transform=ax.transAxes)
    left_out = sorted({r["system"] for r in rows if not r.get("parameters")})
    if left_out:
        ax.text(0.01, 0.01, "not shown (no count): " + ", ".join(left_out), transform=ax.transAxes, fontsize=8, alpha=0.7)
    if len(tasks) > 1 and counted:
        ax.legend(fontsize=8)
    ax.set_xlabel("parameters (base + TTM for systems that think)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against model size (bars: 95% interval)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def _sweep(ax: Any, r: dict[str, Any], colors: dict[str, Any], x: str) -> None:
    """A router's validation threshold sweep (`router_curve`) as a dashed line, against its points' `x`."""
    curve = [c for c in r.get("router_curve") or [] if c.get(x) is not None]
    if curve:
        pts = sorted((c[x], 100 * c["accuracy"]) for c in curve)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color=colors[r["system"]], alpha=0.6,
                linewidth=1.2, label=f"{r['system']}: threshold sweep (validation)")


def _systems(ax: Any, rows: Sequence[dict[str, Any]], colors: dict[str, Any], x: Any) -> None:
    """Each system's accuracy at `x(row)` with its interval, named beside it."""
    for r in rows:
        ax.errorbar(x(r), 100 * r["accuracy"], yerr=_err(r), fmt="o", color=colors[r["system"]], capsize=4, markersize=8)
    _label_points(ax, [(x(r), 100 * r["accuracy"], r["system"]) for r in rows])


def thought_calls_figure(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against thought calls per question for the pipeline systems, one panel per task; a
    router's validation threshold sweep drawn as a line where results carry it."""
    pipeline = [r for r in rows if r.get("kind") == "pipeline"] or list(rows)
    tasks = list(dict.fromkeys(r["task"] for r in pipeline))
    colors = _colors(rows)
    fig = _figure(6.4 * len(tasks), 4.4)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        mine = [r for r in pipeline if r["task"] == task]
        for r in mine:
            _sweep(ax, r, colors, "calls_per_question")
        _systems(ax, mine, colors, lambda r: r["thought_calls_per_question"] or 0.0)
        hi = max([r["thought_calls_per_question"] or 0.0 for r in mine] + [1.0])
        ax.set_xlim(-0.08 * hi, hi * 1.25)
        _percent_axis(ax, min(105, 100 * max(r["ci_high"] for r in mine) + 10))
        ax.set_xlabel("thought calls per question (TTM)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task}: accuracy against thinking (bars: 95% interval)", fontsize=10)
        ax.grid(alpha=0.3)
        if any(r.get("router_curve") for r in mine):
            ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


VALIDATION_POLICIES = (("never", "never"), ("always", "always"), ("random_same_calls", "random, same calls"),
                      ("heuristic_same_calls", "heuristic, same calls"), ("oracle", "oracle"), ("depth", "depth router"))
"""The policies of `router.json`'s validation block drawn on the cost figure, and their labels."""


def flops_figure(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against estimated FLOPs per question (`pseudocot.cost`), one panel per task: every evaluated system
    with its interval; where a router was evaluated, its validation threshold sweep and the validation policies it was
    judged against (never, always, random and the heuristic at its calls, the oracle, the depth router) as open marks."""
    costed = [r for r in rows if r.get("flops_per_question")]
    tasks = list(dict.fromkeys(r["task"] for r in costed))
    colors = _colors(rows)
    fig = _figure(6.4 * len(tasks), 4.6)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        mine = [r for r in costed if r["task"] == task]
        for r in mine:
            _sweep(ax, r, colors, "flops_per_question")
            val = r.get("router_validation") or {}
            for i, (key, label) in enumerate(VALIDATION_POLICIES):
                o = val.get(key) or {}
                if o.get("flops_per_question"):
                    ax.plot(o["flops_per_question"], 100 * o["accuracy"], marker="osD^vP"[i], fillstyle="none",
                            linestyle="none", color="grey", markersize=7, label=f"{label} (validation)")
        _systems(ax, mine, colors, lambda r: r["flops_per_question"])
        hi = max(r["flops_per_question"] for r in mine)
        ax.set_xlim(0, hi * 1.3)
        _percent_axis(ax, min(105, 100 * max(r["ci_high"] for r in mine) + 10))
        ax.set_xlabel("estimated FLOPs per question (2 x parameters x tokens run)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task}: accuracy against compute (bars: 95% interval)", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def grpo_rewards_figure(curve: Sequence[dict[str, Any]], path: Path) -> None:
    """Each GRPO reward's mean per logged step (left), and the share of groups whose rewards did not differ
    (right: those groups teach nothing), from the grpo stage's `metrics.json` curve."""
    fig = _figure(10, 3.6)
    left, right = fig.subplots(1, 2)
    steps = [c["step"] for c in curve]
    names = sorted({k.split("/")[1] for c in curve for k in c if k.startswith("rewards/") and k.endswith("/mean")})
    for name in names:
        left.plot(steps, [c.get(f"rewards/{name}/mean") for c in curve], marker=".", label=name)
    if any(c.get("base_correct/without_thoughts") is not None for c in curve):
        left.plot(steps, [c.get("base_correct/without_thoughts") for c in curve], linestyle="--", color="grey",
                  label="base alone (no thoughts)")
    left.set_xlabel("GRPO step")
    left.set_ylabel("mean reward")
    left.set_title("GRPO: rewards", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(steps, [c.get("frac_reward_zero_std") for c in curve], marker=".", color="black", label="total reward")
    for name in names:
        values = [c.get(f"rewards/{name}/zero_spread_groups") for c in curve]
        if any(v is not None for v in values):
            right.plot(steps, values, marker=".", alpha=0.7, label=name)
    right.set_xlabel("GRPO step")
    right.set_ylabel("share of groups")
    right.set_ylim(-0.03, 1.03)
    right.set_title("groups with no reward spread", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    _save(fig, path)


def draw_all(rows: Sequence[dict[str, Any]], folder: Path, grpo_curve: Sequence[dict[str, Any]] | None = None) -> list[str]:
    accuracy_figure(rows, folder / "accuracy.png")
    parameters_figure(rows, folder / "accuracy_vs_parameters.png")
    thought_calls_figure(rows, folder / "thought_calls.png")
    made = ["accuracy.png", "accuracy_vs_parameters.png", "thought_calls.png"]
    if any(r.get("flops_per_question") for r in rows):
        flops_figure(rows, folder / "flops.png")
        made.append("flops.png")
    if grpo_curve:
        grpo_rewards_figure(grpo_curve, folder / "grpo_rewards.png")
        made.append("grpo_rewards.png")
    return made
