"""IDF stages 2 and 3: pseudo-labelled frame pairs, frozen parts, and the video recipe's driver checks. Its fits on Ray
Train are tests/test_recipes_two_workers.py's (stage 2 from an init checkpoint with the detection heads frozen, on
the Ray Data stream; stage 3's freeze; the classifying variant)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import pseudo_label
from jobs import train as train_job
from kdtrack.config import ConfigError, load_config
from kdtrack.data.dataset import collate
from kdtrack.engine import build_optimizer, freeze_parts, train_step, trainable_parameters
from kdtrack.losses import Criterion
from kdtrack.models import build_student
from kdtrack.models.momentum import MomentumEncoder
from kdtrack.data.video_pairs import ClipLabels, VideoPairDataset, pseudo_id_classes, read_clip_labels

FAST = ["model.width=8", "model.head_conv=16", "model.embedding_dim=16", "loss.queue_size=64"]


@pytest.fixture(scope="module")
def oracle_labels(tiny_world: Path, tmp_path_factory) -> Path:
    """Stage-2 labels written from the tiny world's hidden truth (``jobs.pseudo_label --oracle-truth``)."""
    out = tmp_path_factory.mktemp("oracle")
    pseudo_label.main(["--oracle-truth", "--videos", str(tiny_world / "kinetics"), "--out", str(out)])
    return out / "labels.parquet"


def _video_cfg(tiny_world: Path, labels: Path, *extra: str):
    return load_config("tiny", [*FAST, "train.recipe=video", "loss.id_mode=contrastive", f"data.root={tiny_world}",
                                f"data.pseudo_labels={labels}", *extra])


def test_biased_pairs_take_one_frame_from_each_half() -> None:
    frames = np.array([1, 2, 3, 7, 8, 10])
    clip = ClipLabels("v", "v.mp4", 10, frames, {}, {})
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = clip.pair(rng, "biased")
        assert a <= 5 < b
    pairs = {clip.pair(rng, "random") for _ in range(200)}
    assert any(a > 5 and b > 5 for a, b in pairs) and all(a != b for a, b in pairs)


def test_pseudo_ids_become_dense_classes_in_first_seen_order() -> None:
    first = ClipLabels("a", "a.mp4", 9, np.array([1, 2]), {}, {2: np.array([3, 9]), 1: np.array([7, -1, 3])})
    second = ClipLabels("b", "b.mp4", 9, np.array([4]), {}, {4: np.array([12, -1, 7])})
    clips, count = pseudo_id_classes([first, second])
    assert count == 4  # 7, 3, 9, 12; outliers stay out
    assert clips[0].ids[1].tolist() == [0, -1, 1] and clips[0].ids[2].tolist() == [1, 2]
    assert clips[1].ids[4].tolist() == [3, -1, 0]
    assert first.ids[1].tolist() == [7, -1, 3]  # the input is left as it was
    assert pseudo_id_classes([]) == ([], 0)


def test_video_classify_has_a_class_per_pseudo_identity_of_the_kept_clips(tiny_world: Path,
                                                                          oracle_labels: Path) -> None:
    import pyarrow.parquet as pq

    cfg = load_config("idf_classify_cpu", [f"data.root={tiny_world}", f"data.pseudo_labels={oracle_labels}"])
    _, loop_data = train_job.training_data(cfg)
    kept = {c.video for c in read_clip_labels(oracle_labels, tiny_world)}
    table = pq.read_table(oracle_labels).to_pandas()
    people = table[table["video"].isin(kept) & (table["pseudo_id"] >= 0)]["pseudo_id"].nunique()
    assert loop_data[train_job.ID_CLASSES_KEY] == people > 3
    ids = np.concatenate([i for c in loop_data["clips"] for i in c["ids"].values()])
    assert sorted(set(ids[ids >= 0].tolist())) == list(range(people))
    assert train_job.with_id_classes(cfg, loop_data).loss.num_id_classes == people
    small = load_config("idf_classify_cpu", [f"data.root={tiny_world}", f"data.pseudo_labels={oracle_labels}",
                                             "loss.num_id_classes=2"])
    with pytest.raises(ConfigError, match=f"2 < the {people} pseudo-identities of the clips"):
        train_job.with_id_classes(small, loop_data)


def test_pair_samples_share_pseudo_ids_across_frames(tiny_world: Path, oracle_labels: Path) -> None:
    cfg = _video_cfg(tiny_world, oracle_labels)
    clips = read_clip_labels(oracle_labels, tiny_world)
    assert clips and all(len(c.frames) >= 2 for c in clips)
    ds = VideoPairDataset(clips, cfg)
    shared = 0
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape[0] == 2  # two views: the two frames
        keys = [set(sample["ids"][v][sample["mask"][v] > 0].tolist()) for v in range(2)]
        labelled = {int(k) for f in clips[i].ids.values() for k in f if k >= 0}
        assert (keys[0] | keys[1]) - {-1} <= labelled
        shared += bool(keys[0] & keys[1])
    assert shared >= len(ds) // 2  # most pairs hold a person seen in both frames: a cross-time positive
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape[0] == 4


def test_background_swap_pastes_the_second_frame_onto_another_clip(tiny_world: Path, oracle_labels: Path) -> None:
    clips = read_clip_labels(oracle_labels, tiny_world)
    plain = VideoPairDataset(clips, _video_cfg(tiny_world, oracle_labels))
    swap = ["data.background_swap=1.0", "data.background_swap_views=last"]
    in_place = VideoPairDataset(clips, _video_cfg(tiny_world, oracle_labels, *swap, "data.background_relayout=false"))
    moved = VideoPairDataset(clips, _video_cfg(tiny_world, oracle_labels, *swap, "data.background_relayout=true"))
    for i in range(min(len(clips), 3)):
        a, b, c = plain[i], in_place[i], moved[i]
        for key in ("image", "ids", "mask", "index"):
            np.testing.assert_array_equal(a[key][0], b[key][0])  # view 0 stays the whole frame
        np.testing.assert_array_equal(a["ids"][1], b["ids"][1])  # in place: the same people, the same keys
        np.testing.assert_array_equal(a["index"][1], b["index"][1])
        assert np.abs(a["image"][1] - b["image"][1]).mean() > 0.02  # another scene around them (pixels in [0, 1])
        assert b["ignore"][1].sum() >= a["ignore"][1].sum()  # the partner frame's people are ignored
        kept = set(c["ids"][1][c["mask"][1] > 0].tolist())
        assert kept <= set(a["ids"][1][a["mask"][1] > 0].tolist())  # moved: a subset (the hidden are dropped)
        assert not np.array_equal(a["index"][1][a["mask"][1] > 0], c["index"][1][c["mask"][1] > 0])


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str) -> bool:
    after = model.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)
               and after[k].dtype.is_floating_point)


def test_frozen_parts_do_not_change(tiny_world: Path, oracle_labels: Path) -> None:
    cfg = _video_cfg(tiny_world, oracle_labels)
    batch = collate([VideoPairDataset(read_clip_labels(oracle_labels, tiny_world), cfg)[i] for i in range(2)])
    for parts, fixed, moving in ((("detection",), ("heads.heatmap", "heads.size", "heads.offset"),
                                  ("body", "heads.embedding")),
                                 (("body", "identity"), ("body", "heads.embedding", "embedding_norm"),
                                  ("heads.heatmap",))):
        torch.manual_seed(0)
        model = build_student(cfg.model)
        freeze_parts(model, parts)
        loss_cfg = cfg if "detection" in parts else load_config(
            "tiny", [*FAST, "loss.id_mode=none", "loss.heatmap_weight=1"])
        criterion = Criterion.from_config(loss_cfg)
        optimizer = build_optimizer(trainable_parameters(model) + list(criterion.parameters()), cfg.train)
        keys = MomentumEncoder(model, 0.99) if "detection" in parts else None
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for it in range(2):
            train_step(model, criterion, batch, optimizer, device="cpu", iteration=it, key_encoder=keys)
        for prefix in fixed:  # parameters and BatchNorm statistics
            assert not _changed(before, model, prefix), prefix
        for prefix in moving:
            assert _changed(before, model, prefix), prefix
    with pytest.raises(ValueError, match="unknown part"):
        freeze_parts(build_student(cfg.model), ["neck"])


def test_video_recipe_needs_labels_and_init_file(tiny_world: Path, tmp_path: Path) -> None:
    args = argparse.Namespace(config="tiny", overrides=["train.recipe=video", "loss.id_mode=contrastive"],
                              data_root=str(tiny_world), smoke_test=False, init_from=None)
    with pytest.raises(ConfigError, match="data.pseudo_labels"):
        train_job.resolve_config(args)
    args.overrides.append("data.pseudo_labels=x.parquet")
    args.init_from = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="init_from"):
        train_job.resolve_config(args)
