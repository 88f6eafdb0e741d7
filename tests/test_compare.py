"""jobs.compare: recipes side by side from a real MLflow store (runs logged as jobs.train / jobs.tune log them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jobs import compare
from jobs._cli import InputError

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _store(tmp_path: Path) -> tuple[str, str]:
    """A sweep parent with three trials (two recipes) and one run outside the sweep; returns (uri, parent)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("kdtrack", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="sweep-1", tags={"kdtrack.sweep": "tune_x"}).info.run_id
    client.log_param(parent, "train_config", "idf_cpu")  # a sweep parent has no train.recipe: no row

    def run(name, recipe, history, finals, child=True):
        tags = {compare.PARENT_TAG: parent} if child else {}
        rid = client.create_run(exp, run_name=name, tags=tags).info.run_id
        client.log_param(rid, "train.recipe", recipe)
        for step, value in history:
            client.log_metric(rid, "val/person_search/mAP", value, step=step)
        for key, value in finals.items():
            client.log_metric(rid, key, value)
        client.set_terminated(rid)
        return rid

    base = {"reid/person_search/colour_centre/mAP": 0.297, "reid/person_search/colour/mAP": 0.109,
            "reid/person_search/random/mAP": 0.048}
    run("idf-a", "contrastive", [(60, 0.10), (120, 0.14), (240, 0.12)], {})  # best report 14.0, last 12.0
    run("idf-b", "contrastive", [(60, 0.08), (120, 0.13)],
        {"reid/person_search/student/mAP": 0.150, "MOT17-val/MOTA": 0.427, **base})
    run("sup-a", "supervised", [(60, 0.20), (120, 0.31)],
        {"reid/person_search/student/mAP": 0.398, "reid/mot/student/mAP": 0.90, **base})
    run("outside", "kd", [(60, 0.99)], {}, child=False)
    return uri, parent


def test_report_of_a_sweep_names_the_winner_and_is_logged_to_its_parent(tmp_path):
    uri, parent = _store(tmp_path)
    result = compare.main(["--mlflow-uri", uri, "--parent-run", parent, "--out", str(tmp_path / "out")])
    assert result["runs"] == 3 and result["recipes"] == ["contrastive", "supervised"]  # kd is not in the sweep
    text = (tmp_path / "out" / "compare.md").read_text()
    # runs are compared at their last report, the checkpoint each leaves: contrastive's is idf-b (13.0), not
    # idf-a, whose best report (14.0) was not its last (12.0); hand-computed: 31.0 - 13.0 = 18.0, 0.31 / 0.13 = 2.38x
    assert ("**supervised**, 31.0 at iteration 120 (run `sup-a`), ahead of **contrastive** (13.0 at iteration 120) "
            "by 18.0 points, 2.38x."
            in text)
    best_rows = text.split("## Every run")[0]
    assert best_rows.index("| supervised |") < best_rows.index("| contrastive |")
    assert "| contrastive | `idf-b` | FINISHED | 120 | 13.0 | 13.0 | 15.0 | – | 29.7 | 10.9 | 4.8 | 42.7 |" in text
    every_row = text.split("## Every run")[1]
    assert "| contrastive | `idf-a` | FINISHED | 240 | 14.0 | 12.0 |" in every_row and "`idf-a`" not in best_rows
    for name in ("objective.png", "final_person_search.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, compare.ARTIFACT_DIR)}
    assert logged == {f"{compare.ARTIFACT_DIR}/{n}" for n in ("compare.md", "objective.png", "final_person_search.png")}

    # without --parent-run: every training run of the experiment, the kd run included (and nothing logged)
    everything = compare.main(["--mlflow-uri", uri, "--out", str(tmp_path / "all")])
    assert everything["runs"] == 4 and "**kd**, 99.0" in everything["winner"]


def test_bad_input_is_named(tmp_path):
    uri, parent = _store(tmp_path)
    with pytest.raises(InputError, match="--experiment 'nope': no such MLflow experiment"):
        compare.main(["--mlflow-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "o")])
    with pytest.raises(InputError, match="--parent-run 0123: not found"):
        compare.main(["--mlflow-uri", uri, "--parent-run", "0123", "--out", str(tmp_path / "o")])
    done = subprocess.run([sys.executable, "-m", "jobs.compare", "--mlflow-uri", uri, "--parent-run", "0123",
                           "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "jobs.compare: --parent-run 0123: not found" in done.stderr


def test_the_hybrid_is_kept_only_when_it_beats_both_parents():
    def row(recipe, value):
        return compare.RunRow(recipe, recipe, recipe, "FINISHED", [(100, value)])

    best = {r.recipe: r for r in (row("kd", 0.20), row("contrastive", 0.15), row("hybrid", 0.18))}
    line = compare.hybrid_verdict(best, "val/person_search/mAP", "max")
    assert line == ("The hybrid (18.0 at iteration 100) does not beat kd (kd 20.0 at iteration 100, contrastive "
                    "15.0 at iteration 100) on `val/person_search/mAP`: not worth keeping on this evidence.")
    best["hybrid"] = row("hybrid", 0.25)
    assert compare.hybrid_verdict(best, "val/person_search/mAP", "max").endswith(": kept.")
    best["hybrid"] = row("hybrid", 0.20)  # a tie is no win
    assert "does not beat kd" in compare.hybrid_verdict(best, "val/person_search/mAP", "max")
    del best["contrastive"]
    assert compare.hybrid_verdict(best, "val/person_search/mAP", "max") == ""  # no verdict without both parents


def test_the_sweeps_validation_baselines_are_stated_beside_the_objective(tmp_path):
    uri, parent = _store(tmp_path)
    client = MlflowClient(uri)
    for name, value in (("random", 0.115), ("colour", 0.224), ("colour_centre", 0.301)):
        client.log_metric(parent, f"baseline/{name}/mAP", value)
        client.log_metric(parent, f"baseline/{name}/top1", value / 2)  # another metric: not the objective's
    result = compare.main(["--mlflow-uri", uri, "--parent-run", parent, "--out", str(tmp_path / "out")])
    assert result["baselines"] == pytest.approx({"random": 0.115, "colour": 0.224, "colour_centre": 0.301})
    text = (tmp_path / "out" / "compare.md").read_text()
    assert ("Baselines on the same validation boxes (`val/person_search/mAP`): colour_centre 30.1, colour 22.4, "
            "random 11.5.") in text


def test_the_test_split_verdict_reads_each_recipes_final_person_search():
    def row(recipe, objective, final, last_step=300):
        finals = {"PS mAP": final} if final is not None else {}
        return compare.RunRow(recipe, recipe, recipe, "FINISHED", [(150, objective), (last_step, objective)], finals)

    best = {r.recipe: r for r in (row("kd", 0.289, 0.288), row("contrastive", 0.233, 0.150),
                                  row("hybrid", 0.286, 0.307, 600), row("supervised", 0.457, None))}
    line = compare.final_verdict(best)
    first, hybrid = line.split("\n\n")
    # hand-computed: 30.7 - 28.8 = 1.9 points, 0.307 / 0.288 = 1.07x; supervised was not evaluated: not ranked
    assert first == ("Best on the test split's oracle-box person search (`reid/person_search/student/mAP`) (max): "
                     "**hybrid**, 30.7 at iteration 600 (run `hybrid`), ahead of **kd** (28.8 at iteration 300) "
                     "by 1.9 points, 1.07x.")
    assert hybrid.startswith("The hybrid (30.7 at iteration 600) beats both its parents (kd 28.8 at iteration 300, "
                             "contrastive 15.0 at iteration 300)") and hybrid.endswith(": kept.")
    # on the objective the same hybrid loses to kd: the two verdicts are separate
    assert "does not beat kd" in compare.hybrid_verdict(best, "val/person_search/mAP", "max")
    assert compare.final_verdict({r: row(r, 0.2, None) for r in ("kd", "hybrid")}) == ""
