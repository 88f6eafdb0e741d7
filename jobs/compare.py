"""Recipes side by side, from MLflow: a Markdown table and PNG plots of the training runs of an experiment.

    python -m jobs.compare --mlflow-uri sqlite:///$PWD/runs/sweep/mlflow.db --experiment kdtrack --out runs/compare
    python -m jobs.compare --mlflow-uri http://mlflow:5000 --experiment kdtrack --parent-run RUN_ID --out DIR

Every run that logged a ``train.recipe`` param is a row (a sweep's trials, or ``jobs.train`` runs logged into
one experiment); ``--parent-run`` keeps that sweep's children and logs the report as artifacts of the parent
(``compare/``). Columns: the objective (``--metric``, best and last report, and the step of the last), then
what ``jobs.evaluate`` logged into the run: oracle-box person search and MOT cross-time mAP of the student, the
colour, person-centred colour and random-init baselines on the same boxes, and MOTA / IDF1 / HOTA. Per recipe,
its best run by the objective at the run's last report (its last checkpoint is the model it leaves, and the one
a sweep's final evaluation scores); the report names the winner and its margin over the next recipe. Values are
x 100 (percent). Plots: the objective against training iterations, one line per run, one colour per recipe; the
final person-search mAP of each recipe's best run beside the baselines. With ``--parent-run``, the baselines the
sweep scored on its validation boxes (``baseline/<embedder>/<metric>`` of the parent) are stated beside the
objective, and, when the sweep trained the hybrid and both its parents (KD, IDF stage 1), whether the hybrid
beats both: it is kept only if it does. When the runs carry test-split person search (``jobs.tune``'s
``tune.final_eval`` logs it into each recipe's best trial), the winner and the hybrid's verdict are stated on
it too, apart from the objective's.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from jobs._cli import InputError, run_cli
from kdtrack.io import atomic_save, atomic_write_text

RECIPE_PARAM = "train.recipe"
PARENT_TAG = "mlflow.parentRunId"
ARTIFACT_DIR = "compare"
# (header, metric key pattern): what jobs.evaluate logs into a training run (reid: --run-id; mot: its dataset)
COLUMNS = (
    ("PS mAP", "reid/person_search/student/mAP"),
    ("MOT x-time mAP", "reid/mot/student/mAP"),
    ("PS colour_centre", "reid/person_search/colour_centre/mAP"),
    ("PS colour", "reid/person_search/colour/mAP"),
    ("PS random init", "reid/person_search/random/mAP"),
    ("MOTA", "MOT*/MOTA"),
    ("IDF1", "MOT*/IDF1"),
    ("HOTA", "MOT*/HOTA"),
)
BASELINE_COLUMNS = ("PS colour_centre", "PS colour", "PS random init")
FINAL_HEADER, FINAL_WHAT = "PS mAP", "the test split's oracle-box person search (`reid/person_search/student/mAP`)"
HYBRID, HYBRID_PARENTS = "hybrid", ("kd", "contrastive")  # kdtrack's hybrid recipe and the two it combines


@dataclass
class RunRow:
    """One training run: its recipe, the objective's history ``[(step, value)]`` and the final columns."""

    run_id: str
    name: str
    recipe: str
    status: str
    history: list[tuple[int, float]] = field(default_factory=list)
    finals: dict[str, float] = field(default_factory=dict)

    def at_last(self) -> str:
        """``"45.7 at iteration 600"``: the last objective and the step it was reported at (runs a scheduler
        stopped early are compared at fewer iterations: the reader should see it)."""
        return f"{_pct(self.last())} at iteration {self.history[-1][0]}" if self.history else _pct(self.last())

    def last(self) -> float:
        """The objective at the run's last report: that of its last checkpoint, the model the run leaves (its
        logged model; the one a sweep's final evaluation scores). NaN when it reported none, or not a number."""
        value = self.history[-1][1] if self.history else math.nan
        return value if math.isfinite(value) else math.nan

    def best(self, mode: str) -> float:
        """The best objective of any report (shown beside the last; a checkpoint may be gone)."""
        values = [v for _, v in self.history if math.isfinite(v)]
        if not values:
            return math.nan
        return max(values) if mode == "max" else min(values)


def _final(metrics: dict[str, float], pattern: str) -> float:
    keys = sorted(k for k in metrics if fnmatch.fnmatchcase(k, pattern))
    return float(metrics[keys[0]]) if keys else math.nan


def collect_runs(client: Any, experiment: str, metric: str, parent_run: str = "") -> list[RunRow]:
    """The training runs of ``experiment`` (the children of ``parent_run`` when given), oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise InputError(f"--experiment {experiment!r}: no such MLflow experiment (there are: {names})")
    if parent_run:
        try:
            client.get_run(parent_run)
        except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise InputError(f"--parent-run {parent_run}: not found ({type(exc).__name__})") from None
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for run in runs:
        if RECIPE_PARAM not in run.data.params:
            continue
        if parent_run and run.data.tags.get(PARENT_TAG) != parent_run:
            continue
        history = sorted((m.step, float(m.value)) for m in client.get_metric_history(run.info.run_id, metric))
        rows.append(RunRow(run.info.run_id, run.info.run_name or run.info.run_id[:8], run.data.params[RECIPE_PARAM],
                           run.info.status, history,
                           {header: _final(run.data.metrics, pattern) for header, pattern in COLUMNS}))
    return rows


def ranked(rows: Sequence[RunRow], mode: str) -> list[RunRow]:
    """``rows`` best first by the objective at their last report; rows without one last, in their order."""
    def key(row: RunRow) -> tuple[int, float]:
        value = row.last()
        return (1, 0.0) if not math.isfinite(value) else (0, -value if mode == "max" else value)

    return sorted(rows, key=key)


def best_per_recipe(rows: Sequence[RunRow], mode: str) -> dict[str, RunRow]:
    """Each recipe's run with the best objective at its last report, as a sweep's final evaluation picks it (a run
    without one only when the recipe has no other)."""
    best: dict[str, RunRow] = {}
    for row in ranked(rows, mode):
        best.setdefault(row.recipe, row)
    return best


def _pct(value: float) -> str:
    return f"{100 * value:.1f}" if math.isfinite(value) else "–"


def _winner_line(best: dict[str, RunRow], value: Callable[[RunRow], float], describe: Callable[[RunRow], str],
                 what: str, mode: str) -> str:
    """Which recipe wins on ``value``, and by how much over the next one."""
    sign = 1.0 if mode == "max" else -1.0
    reported = sorted((r for r in best.values() if math.isfinite(value(r))), key=lambda r: -sign * value(r))
    if not reported:
        return f"No run reported {what}: no winner."
    first = reported[0]
    line = f"Best on {what} ({mode}): **{first.recipe}**, {describe(first)} (run `{first.name}`)"
    if len(reported) == 1:
        return line + "; the only recipe that reported it."
    second = reported[1]
    a, b = value(first), value(second)
    ratio = f", {a / b:.2f}x" if b > 0 else ""
    return line + f", ahead of **{second.recipe}** ({describe(second)}) by {100 * abs(a - b):.1f} points{ratio}."


def _hybrid_line(best: dict[str, RunRow], value: Callable[[RunRow], float], describe: Callable[[RunRow], str],
                 what: str, mode: str) -> str:
    """Whether the hybrid beats both its parents on ``value`` ("" when one of the three is missing)."""
    if HYBRID not in best or not all(p in best for p in HYBRID_PARENTS):
        return ""
    if not all(math.isfinite(value(best[r])) for r in (HYBRID, *HYBRID_PARENTS)):
        return f"The hybrid or one of its parents reported no {what}: no verdict on the hybrid there."
    sign = 1.0 if mode == "max" else -1.0
    hybrid = sign * value(best[HYBRID])
    behind = [p for p in HYBRID_PARENTS if hybrid <= sign * value(best[p])]
    against = ", ".join(f"{p} {describe(best[p])}" for p in HYBRID_PARENTS)
    if not behind:
        return f"The hybrid ({describe(best[HYBRID])}) beats both its parents ({against}) on {what}: kept."
    return (f"The hybrid ({describe(best[HYBRID])}) does not beat {' and '.join(behind)} ({against}) on "
            f"{what}: not worth keeping on this evidence.")


def verdict(best: dict[str, RunRow], metric: str, mode: str) -> str:
    """Which recipe wins on the objective (each run's last report), and by how much over the next one."""
    return _winner_line(best, RunRow.last, RunRow.at_last, f"`{metric}`", mode)


def hybrid_verdict(best: dict[str, RunRow], metric: str, mode: str) -> str:
    """Whether the hybrid beats both its parents on the objective ("" when one of the three is missing)."""
    return _hybrid_line(best, RunRow.last, RunRow.at_last, f"`{metric}`", mode)


def _final_ps(row: RunRow) -> float:
    return row.finals.get(FINAL_HEADER, math.nan)


def _final_at(row: RunRow) -> str:
    step = f" at iteration {row.history[-1][0]}" if row.history else ""
    return _pct(_final_ps(row)) + step


def final_verdict(best: dict[str, RunRow]) -> str:
    """The winner on the test split's person search (``jobs.evaluate reid`` of each recipe's best run: its last
    checkpoint, at its last report), and the hybrid against its parents there ("" when no run was evaluated)."""
    if not any(math.isfinite(_final_ps(r)) for r in best.values()):
        return ""
    lines = [_winner_line(best, _final_ps, _final_at, FINAL_WHAT, "max"),
             _hybrid_line(best, _final_ps, _final_at, FINAL_WHAT, "max")]
    return "\n\n".join(line for line in lines if line)


def baselines_line(baselines: dict[str, float], metric: str) -> str:
    """``Same validation boxes: colour 22.4, random 11.5`` (the sweep's baselines for the objective)."""
    if not baselines:
        return ""
    shown = ", ".join(f"{name} {_pct(v)}" for name, v in sorted(baselines.items(), key=lambda kv: -kv[1]))
    return f"Baselines on the same validation boxes (`{metric}`): {shown}."


def parent_baselines(client: Any, parent_run: str, metric: str) -> dict[str, float]:
    """``{embedder: value}`` of the objective's metric that ``jobs.tune`` logged on its parent run."""
    key = metric.split("/")[-1]
    metrics = client.get_run(parent_run).data.metrics
    return {name.split("/")[1]: float(v) for name, v in metrics.items()
            if name.startswith("baseline/") and name.count("/") == 2 and name.split("/")[2] == key}


def markdown_report(rows: Sequence[RunRow], metric: str, mode: str, source: str,
                    baselines: dict[str, float] | None = None) -> str:
    best = best_per_recipe(rows, mode)
    headers = ["recipe", "run", "status", "last step", f"{metric} best", "last", *(h for h, _ in COLUMNS)]
    extra = [line for line in (hybrid_verdict(best, metric, mode), baselines_line(baselines or {}, metric),
                               final_verdict(best)) if line]
    lines = ["# Recipes side by side\n", f"{len(rows)} training runs from {source}; values x 100 (percent for mAP, MOTA, IDF1, HOTA).\n",
             verdict(best, metric, mode) + "\n", *(line + "\n" for line in extra), "## Each recipe's best run\n",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]

    def line(row: RunRow) -> str:
        last_step, last = row.history[-1] if row.history else ("–", math.nan)
        cells = [row.recipe, f"`{row.name}`", row.status, str(last_step), _pct(row.best(mode)), _pct(last),
                 *(_pct(row.finals[h]) for h, _ in COLUMNS)]
        return "| " + " | ".join(cells) + " |"

    lines += [line(r) for r in ranked(list(best.values()), mode)]
    lines += ["", "## Every run\n", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += [line(r) for r in sorted(rows, key=lambda r: (r.recipe, r.name))]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_objective(rows: Sequence[RunRow], metric: str, path: Path, baselines: dict[str, float] | None = None
                   ) -> Path:
    """The objective against iterations, one colour per recipe; the sweep's baselines as grey dotted lines."""
    plt = _pyplot()
    recipes = sorted({r.recipe for r in rows})
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(recipes)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for recipe in recipes:
        for i, row in enumerate(r for r in rows if r.recipe == recipe and r.history):
            steps, values = zip(*row.history)
            ax.plot(steps, [100 * v for v in values], marker="o", ms=3, color=colours[recipe],
                    label=recipe if i == 0 else None, alpha=0.85)
    for name, value in sorted((baselines or {}).items(), key=lambda kv: -kv[1]):
        if math.isfinite(value):
            ax.axhline(100 * value, ls=":", color="grey", lw=1)
            ax.annotate(name, (0.01, 100 * value), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                        va="bottom")
    ax.set_xlabel("training iteration")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="recipe")
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_finals(best: dict[str, RunRow], path: Path) -> Path | None:
    """Person-search mAP of each recipe's best run, the baselines of those runs as dashed lines."""
    shown = {name: row for name, row in best.items() if math.isfinite(row.finals[FINAL_HEADER])}
    if not shown:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted(shown)
    ax.bar(names, [100 * shown[n].finals[FINAL_HEADER] for n in names], color="tab:blue")
    for header, style in zip(BASELINE_COLUMNS, ("--", ":", "-.")):
        values = [r.finals[header] for r in shown.values() if math.isfinite(r.finals[header])]
        if values:  # the same boxes in every run: their mean (they differ only through random init's seed)
            ax.axhline(100 * sum(values) / len(values), ls=style, color="black", lw=1,
                       label=header.replace("PS ", ""))
    ax.set_ylabel("oracle-box person search mAP (%)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-uri", required=True, help="tracking URI (sqlite:///..., http://...)")
    parser.add_argument("--experiment", default="kdtrack")
    parser.add_argument("--parent-run", default="", help="a sweep's parent run: its trials only, report logged to it")
    parser.add_argument("--metric", default="val/person_search/mAP", help="the objective compared")
    parser.add_argument("--mode", choices=("max", "min"), default="max")
    parser.add_argument("--out", required=True, help="folder for compare.md and the PNG plots")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.mlflow_uri)
    rows = collect_runs(client, args.experiment, args.metric, args.parent_run)
    if not rows:
        scope = f"children of run {args.parent_run}" if args.parent_run else f"runs of {args.experiment!r}"
        raise InputError(f"no training runs ({RECIPE_PARAM} param) among the {scope} at {args.mlflow_uri}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = f"experiment `{args.experiment}`" + (f", sweep run `{args.parent_run}`" if args.parent_run else "")
    best = best_per_recipe(rows, args.mode)
    baselines = parent_baselines(client, args.parent_run, args.metric) if args.parent_run else {}
    files = [atomic_write_text(out / "compare.md", markdown_report(rows, args.metric, args.mode, source, baselines)),
             plot_objective(rows, args.metric, out / "objective.png", baselines)]
    finals = plot_finals(best, out / "final_person_search.png")
    files += [finals] if finals else []
    if args.parent_run:
        for path in files:
            client.log_artifact(args.parent_run, str(path), ARTIFACT_DIR)
    print((out / "compare.md").read_text())
    return {"runs": len(rows), "recipes": sorted(best), "files": [str(p) for p in files],
            "winner": verdict(best, args.metric, args.mode), "hybrid": hybrid_verdict(best, args.metric, args.mode),
            "final": final_verdict(best), "baselines": baselines}


if __name__ == "__main__":
    sys.exit(run_cli(main, None, "jobs.compare", partial_failure=()))
