"""A stage-2 sweep over DBSCAN's clustering (``pseudo.eps`` ...): each trial re-clusters the stage-1 embeddings
that ``jobs.pseudo_label`` cached (``L/parts``) and trains on its own labels; no trial runs the network. The
real sweep here is also the one across recipes (tests/test_tune_recipes.py checks its presets)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs import pseudo_label
from kdtrack.checkpoint import save_checkpoint
from kdtrack.config import ConfigError, load_config
from kdtrack.models import build_student
from tests.test_tune import SMALL_SWEEP
from tune.spec import load_sweep

DIM = 8


@pytest.fixture(scope="module")
def cached_labels(tiny_world: Path, tmp_path_factory) -> Path:
    """A labels folder as ``jobs.pseudo_label`` leaves it (``parts/*.npz``, then ``labels.parquet``,
    ``videos.parquet``), its embeddings made from the hidden truth: each person a random unit direction plus
    noise (cosine distance within a person about 0.01, between people about 1)."""
    out = tmp_path_factory.mktemp("labels")
    clips, _ = pseudo_label.list_clips(tiny_world / "kinetics", "train")
    cfg = load_config("idf_classify_cpu")
    videos, local = pseudo_label.truth_videos(clips, pseudo_label.truth_root_for(tiny_world / "kinetics"),
                                              cfg.data.min_visibility)
    rng = np.random.default_rng(0)
    embedded = []
    for det in videos:
        centres = rng.normal(size=(int(local[det.video].max()) + 1, DIM))
        vectors = centres[local[det.video]] / np.linalg.norm(centres[local[det.video]], axis=1, keepdims=True)
        vectors = vectors + rng.normal(scale=0.05, size=vectors.shape)
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        det = dataclasses.replace(det, embeddings=vectors)
        pseudo_label.save_part(out, det, pseudo_label.STATUS_OK, "fixture")
        embedded.append(det)
    pseudo_label.relabel(embedded, cfg, out, use_ray=False)
    return out / pseudo_label.LABELS_FILE


def _sweep(tmp_path: Path, labels: Path, search: dict, **tune) -> Path:
    fields = {k: v for k, v in SMALL_SWEEP["set"].items() if k != "loss.queue_size"}
    data = {"train_config": "idf_classify_cpu",
            "set": {**fields, "data.pseudo_labels": str(labels), "loss.supervised_memory": 64,
                    "train.max_iterations": 2, "train.report_every": 2},  # one report per trial
            "search": search, "tune": {"num_samples": 1, "scheduler": "fifo", **tune}}
    path = tmp_path / "eps.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_relabel_reclusters_the_cached_embeddings_with_the_new_values(cached_labels, tmp_path):
    videos = pseudo_label.cached_videos(cached_labels.parent)
    cfg = load_config("idf_classify_cpu")
    tight = pseudo_label.relabel(videos, cfg, tmp_path / "tight", use_ray=False)
    loose = pseudo_label.relabel(videos, load_config("idf_classify_cpu", ["pseudo.eps=1.5"]), tmp_path / "loose",
                                 use_ray=False)
    assert loose["pseudo_ids"] <= len(videos) < tight["pseudo_ids"]  # eps 1.5 joins each video's people
    assert tight["pseudo"]["eps"] == cfg.pseudo.eps and loose["pseudo"]["eps"] == 1.5
    assert {p.name for p in (tmp_path / "tight").iterdir()} == {"labels.parquet", "videos.parquet", "summary.json"}
    with pytest.raises(ConfigError, match="no cached embeddings"):
        pseudo_label.cached_videos(tmp_path)


def test_clustering_fields_are_searched_by_stage_2_only_with_cached_embeddings(cached_labels, tmp_path):
    spec = load_sweep(_sweep(tmp_path, cached_labels, {"pseudo.eps": {"grid": [0.02, 1.5]},
                                                       "pseudo.min_samples": {"choice": [2, 3]}}))
    assert set(spec.search) == {"pseudo.eps", "pseudo.min_samples"}
    with pytest.raises(ConfigError, match="change what the stage-1 network embeds"):
        load_sweep(_sweep(tmp_path, cached_labels, {"pseudo.frame_stride": {"choice": [1, 2]}}))
    oracle = tmp_path / "oracle"  # an --oracle-truth folder: labels but no parts
    oracle.mkdir()
    for name in ("labels.parquet", "videos.parquet"):
        (oracle / name).write_bytes((cached_labels.parent / name).read_bytes())
    with pytest.raises(ConfigError, match="holds no cached embeddings to re-cluster"):
        load_sweep(_sweep(tmp_path, oracle / "labels.parquet", {"pseudo.eps": {"grid": [0.02, 1.5]}}))
    with pytest.raises(ConfigError, match="a local or shared"):
        load_sweep(_sweep(tmp_path, cached_labels, {"pseudo.eps": {"grid": [0.02, 1.5]}}),
                   ["data.pseudo_labels=s3://bucket/L/labels.parquet"])
    path = tmp_path / "idf.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(_sweep(tmp_path, cached_labels, {}).read_text()),
                                    "train_config": "tiny", "search": {"pseudo.eps": {"grid": [0.02, 1.5]}}}))
    with pytest.raises(ConfigError, match="train.recipe 'contrastive' does not train on pseudo-labels"):
        load_sweep(path)


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_across_recipes_relabels_its_stage_2_trials_and_writes_the_comparison(
        ray_session, tiny_world, cached_labels, tmp_path, s3_bucket):
    """The supervised recipe and the classified stage 2 searching ``pseudo.eps``, one trial each, 2 iterations,
    validated once: each child run trains its own recipe with its own drawn value and no value of the other's;
    the stage-2 trial clusters the cached embeddings with its eps into its own labels (the counts a direct
    re-clustering gives), logs them and trains on them; the cached parts are untouched (no trial re-embedded);
    each recipe's best trial is scored on the test reports (oracle-box re-ID, MOT17 val-half tracking) into its
    own run; compare/compare.md shows both recipes, those final columns and the validation baselines. The
    sweep's storage is an S3 bucket (moto on 127.0.0.1): the trials checkpoint there and the final evaluation
    reads their checkpoints from it."""
    from mlflow.tracking import MlflowClient

    from jobs.tune import get_args_parser, main

    parts = sorted((cached_labels.parent / "parts").rglob("*.npz"))
    assert len(parts) == 6  # the tiny world's training clips
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in parts}
    fields = {k: v for k, v in SMALL_SWEEP["set"].items() if k != "loss.queue_size"}
    one_report = {"train.max_iterations": 2, "train.report_every": 2}  # a validation costs what 2 iterations do
    # stage 2 starts from stage 1's network (its preset holds that network's detection outputs)
    stage1_cfg = load_config("idf_classify_cpu", [f"{k}={v}" for k, v in fields.items() if k.startswith("model.")])
    stage1 = save_checkpoint(tmp_path / "stage1", model=build_student(stage1_cfg.model), config=stage1_cfg)
    sweep = {"set": {**fields, **one_report},
             "recipes": {"supervised": {"train_config": "sup_cpu", "set": {"train.lr": 1.0e-3},
                                        "search": {"train.classifier_lr_mult": {"loguniform": [3.0, 30.0]}}},
                         "video_classify": {"train_config": "idf_classify_cpu",
                                            "set": {"data.pseudo_labels": str(cached_labels),
                                                    "loss.supervised_memory": 64, "train.init_from": str(stage1)},
                                            "search": {"pseudo.eps": {"choice": [0.02, 1.5]}}}},
             "tune": {"num_samples": 1, "scheduler": "fifo", "final_eval": ["reid", "mot"]}}
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "sweep"
    result = main(get_args_parser().parse_args(["--config", str(path), "--data-root", str(tiny_world),
                                                "--out", str(out), "--storage", f"s3://{s3_bucket}/sweep"]))
    assert result["exit_code"] == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in parts} == before
    trials = {t["values"]["train.recipe"]: t for t in result["trials"]}
    assert set(trials) == {"supervised", "video_classify"}
    assert all(t["outcome"] == "completed" and t["iteration"] == 2 for t in trials.values())
    stage2, sup = trials["video_classify"], trials["supervised"]
    assert stage2["values"]["train.classifier_lr_mult"] is None and sup["values"]["pseudo.eps"] is None
    eps = stage2["values"]["pseudo.eps"]

    client = MlflowClient(tracking_uri=result["mlflow_uri"])
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert parent.data.tags["kdtrack.recipe"] == "supervised+video_classify"
    assert parent.data.params["search.train.recipe"] == "grid['supervised', 'video_classify']"
    assert parent.data.params["supervised.train_config"] == "sup_cpu"
    assert "baseline/random/mAP" in parent.data.metrics
    run = client.get_run(stage2["mlflow_run_id"])
    expected = pseudo_label.relabel(pseudo_label.cached_videos(cached_labels.parent),
                                    load_config("idf_classify_cpu", [f"pseudo.eps={eps}"]), tmp_path / "direct",
                                    use_ray=False)
    assert run.data.metrics["pseudo/pseudo_ids"] == expected["pseudo_ids"]
    assert run.data.params["pseudo.eps"] == str(eps) and run.data.params["train.recipe"] == "video_classify"
    assert run.data.params["data.pseudo_labels"] == str(out / "labels" / stage2["trial_id"] / "labels.parquet")
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "pseudo_labels")}
    assert "pseudo_labels/labels.parquet" in logged and "pseudo_labels/summary.json" in logged
    sup_params = client.get_run(sup["mlflow_run_id"]).data.params
    assert float(sup_params["train.classifier_lr_mult"]) == pytest.approx(sup["values"]["train.classifier_lr_mult"])
    assert "pseudo.eps" not in sup_params

    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["train"]["recipe"] == result["best"]["values"]["train.recipe"]
    if best["train"]["recipe"] == "video_classify":  # the labels that trial clustered and trained on
        assert best["data"]["pseudo_labels"] == str(out / "labels" / stage2["trial_id"] / "labels.parquet")
    report = (out / "compare" / "compare.md").read_text()
    assert "| supervised |" in report and "| video_classify |" in report
    assert "Baselines on the same validation boxes" in report
    assert result["compare"]["winner"].startswith("Best on `val/person_search/mAP` (max): **")
    assert "compare/compare.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}

    # the final evaluation: each recipe's best trial on the test reports, logged into its own run, read by compare
    for recipe, trial in trials.items():
        final, metrics = result["final"][recipe], client.get_run(trial["mlflow_run_id"]).data.metrics
        assert final["trial_id"] == trial["trial_id"] and final["iteration"] == 2 and "error" not in final
        assert final["checkpoint"].startswith(f"s3://{s3_bucket}/sweep/") and trial["trial_id"] in final["checkpoint"]
        written = json.loads((out / "final" / recipe / "reid.json").read_text())
        assert metrics["reid/person_search/student/mAP"] == pytest.approx(written["person_search"]["student"]["mAP"])
        assert final["reid"]["person_search"]["colour_centre"] == pytest.approx(
            metrics["reid/person_search/colour_centre/mAP"])
        assert metrics["MOT17-val/MOTA"] == pytest.approx(final["mot"]["MOTA"])
        row = next(line for line in report.split("## Every run")[0].splitlines() if line.startswith(f"| {recipe} |"))
        assert f"| {100 * metrics['reid/person_search/student/mAP']:.1f} |" in row
    assert result["compare"]["final"].startswith("Best on the test split's oracle-box person search")
