"""A stage-2 sweep over DBSCAN's clustering (``pseudo.eps`` ...): each trial re-clusters the stage-1 embeddings
that ``jobs.pseudo_label`` cached (``L/parts``) and trains on its own labels; no trial runs the network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs import pseudo_label
from kdtrack.config import ConfigError, load_config
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
def test_an_eps_sweep_relabels_per_trial_without_re_embedding(ray_session, tiny_world, cached_labels, tmp_path):
    """Two trials (eps 0.02 and 1.5) of the classified stage 2: each clusters the cached embeddings into its own
    labels, trains 2 iterations on them and logs them; the cached parts are untouched (no trial re-embedded)."""
    from mlflow.tracking import MlflowClient

    from jobs.tune import get_args_parser, main

    parts = sorted((cached_labels.parent / "parts").rglob("*.npz"))
    assert len(parts) == 6  # the tiny world's training clips
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in parts}
    out = tmp_path / "sweep"
    result = main(get_args_parser().parse_args(["--config", str(_sweep(tmp_path, cached_labels,
                                                                       {"pseudo.eps": {"grid": [0.02, 1.5]}})),
                                                "--data-root", str(tiny_world), "--out", str(out)]))
    assert result["exit_code"] == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in parts} == before
    trials = {t["values"]["pseudo.eps"]: t for t in result["trials"]}
    assert set(trials) == {0.02, 1.5} and all(t["outcome"] == "completed" for t in trials.values())
    client = MlflowClient(tracking_uri=result["mlflow_uri"])
    ids = {}
    for eps, trial in trials.items():
        run = client.get_run(trial["mlflow_run_id"])
        ids[eps] = run.data.metrics["pseudo/pseudo_ids"]
        assert run.data.params["pseudo.eps"] == str(eps)
        assert run.data.params["data.pseudo_labels"] == str(out / "labels" / trial["trial_id"] / "labels.parquet")
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "pseudo_labels")}
        assert "pseudo_labels/labels.parquet" in logged and "pseudo_labels/summary.json" in logged
    assert ids[1.5] < ids[0.02]  # the loose eps merged people: the trials trained on different labels
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["data"]["pseudo_labels"] == str(out / "labels" / result["best"]["trial_id"] / "labels.parquet")
