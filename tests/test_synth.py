"""The synthetic world: identities, rendering geometry, visibility, motion, determinism, real-format readers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kdtrack.config import SynthConfig
from kdtrack.formats import (
    read_coco_persons,
    read_crowdhuman,
    read_gt,
    read_kinetics,
    read_manifest,
    read_market1501,
    read_mot_sequence,
    read_video_info,
)
from kdtrack.synth import datasets
from kdtrack.synth.appearance import (
    APPEARANCE_FIELDS,
    CLONE_ATTRIBUTES,
    appearance_differences,
    make_identity_bank,
    random_identity,
)
from kdtrack.synth.motion import simulate_walkers, view_from_heading
from kdtrack.synth.render import VIEWS, render_person, sprite_size
from kdtrack.synth.rng import unit_rng
from kdtrack.synth.scene import Camera, PersonActor, compose_scene
from kdtrack.synth.world import generate_world, plan_units

# A world small enough to generate twice in a few seconds, every format present. Populations:
# 10 MOT + 3/3/4 person-search train/val/test + 2/2 Market = 24 identities.
MINI = SynthConfig(
    num_identities=24, crowdhuman_train_images=3, crowdhuman_val_images=2, coco_train_images=3, coco_val_images=2,
    kinetics_clips=1, kinetics_val_clips=1, kinetics_clip_frames=6, mot_sequences=1, mot_sequence_frames=8,
    mot_ids=10, person_search_cameras=2, person_search_train_images=4, person_search_test_images=6,
    person_search_queries=3, person_search_val_images=4, person_search_val_queries=1, person_search_train_ids=3,
    person_search_val_ids=3, person_search_test_ids=4, person_search_gallery_sizes=(3, 5), reid_cameras=2,
    reid_train_ids=2, reid_test_ids=2, reid_crops_per_id=2, reid_junk_crops=1, reid_distractor_crops=1, shard_size=3,
)


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory) -> Path:
    """``MINI`` generated once for this module (seed 0); its root."""
    root = tmp_path_factory.mktemp("mini_world")
    generate_world(MINI, root)
    return root


def _appearance(ident) -> tuple:
    return tuple(getattr(ident, f) for f in APPEARANCE_FIELDS)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file except world.json (which records the wall time)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "world.json"}


# --------------------------------------------------------------------------- identities and sprites


def test_unit_rng_depends_on_seed_and_name_only():
    a = unit_rng(3, "coco", "train", 7).random(4)
    b = unit_rng(3, "coco", "train", 7).random(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, unit_rng(3, "coco", "train", 8).random(4))
    assert not np.array_equal(a, unit_rng(4, "coco", "train", 7).random(4))
    with pytest.raises(ValueError, match="seed"):
        unit_rng(-1, "x")


def test_hard_negatives_differ_in_exactly_the_changed_attribute():
    bank = make_identity_bank(seed=0, num_identities=40, hard_negative_fraction=0.5)
    clones = [ident for ident in bank if ident.clone_of > 0]
    assert len(clones) == 20  # round(0.5 * 40)
    by_pid = {ident.pid: ident for ident in bank}
    for clone in clones:
        assert clone.changed_attribute in CLONE_ATTRIBUTES
        assert appearance_differences(clone, by_pid[clone.clone_of]) == [clone.changed_attribute]
    # the change is visible: some view of the clone renders differently from its original
    for clone in clones[:6]:
        base = by_pid[clone.clone_of]
        assert any(not np.array_equal(render_person(clone, 80, v, 0.3).image, render_person(base, 80, v, 0.3).image)
                   for v in VIEWS), clone.changed_attribute
    assert [i.pid for i in bank] == list(range(1, 41))


def test_backpack_shows_from_behind_not_from_the_front():
    rng = np.random.default_rng(0)
    ident = dataclasses.replace(random_identity(rng, 1), bag="backpack", bag_color=(255, 0, 255),
                                top_color=(0, 200, 0), top_color2=(0, 200, 0), logo_color=None)
    def bag_pixels(view: str) -> int:
        s = render_person(ident, 100, view, 0.0)
        return int(np.all(s.image == (255, 0, 255), axis=-1).sum())
    assert bag_pixels("back") > 5 * max(bag_pixels("front"), 1)  # straps only from the front


def test_sprite_size_and_mirrored_side_views():
    # 100 px tall at width_scale 1.0: width = round(100 * 0.4) = 40
    assert sprite_size(100, 1.0) == (100, 40)
    ident = random_identity(np.random.default_rng(1), 1)
    left, right = render_person(ident, 60, "left", 1.0), render_person(ident, 60, "right", 1.0)
    assert np.array_equal(left.alpha, right.alpha[:, ::-1])
    # legs swing with the gait phase
    assert not np.array_equal(render_person(ident, 60, "right", 0.0).alpha, right.alpha)


# --------------------------------------------------------------------------- composition and visibility


def _actor(pid: int, foot_x: float, foot_y: float, height: float = 60.0) -> PersonActor:
    ident = dataclasses.replace(random_identity(np.random.default_rng(pid), pid), width_scale=1.0)
    return PersonActor(ident, foot_x, foot_y, height, "front", 0.0, pid)


def test_single_person_is_fully_visible_with_tight_box():
    bg = np.zeros((100, 100, 3), np.uint8)
    _, (pl,), _, _ = compose_scene(bg, [_actor(1, 50.0, 80.0)])
    # sprite 60 x 24 (round(60 * 0.4)) with feet at (50, 80): full box [38, 20, 62, 80]
    assert pl.full_xyxy.tolist() == [38.0, 20.0, 62.0, 80.0]
    assert pl.visibility == pytest.approx(1.0)
    vx1, vy1, vx2, vy2 = pl.visible_xyxy
    assert 38 <= vx1 < vx2 <= 62 and 20 <= vy1 < vy2 <= 80
    assert vy2 - vy1 > 50  # the silhouette spans most of the height


def test_occlusion_and_truncation_lower_visibility():
    bg = np.zeros((100, 120, 3), np.uint8)
    far, near = _actor(1, 50.0, 70.0), _actor(2, 58.0, 90.0)  # near is drawn last (lower feet)
    _, (pf, pn), _, _ = compose_scene(bg, [far, near])
    assert pn.visibility == pytest.approx(1.0)
    assert 0.0 < pf.visibility < 0.9
    for pl in (pf, pn):
        assert np.all(pl.visible_xyxy[:2] >= pl.full_xyxy[:2]) and np.all(pl.visible_xyxy[2:] <= pl.full_xyxy[2:])
    # feet at x = 0: the left half of the body is outside the image -> about half visible
    _, (cut,), _, _ = compose_scene(bg, [_actor(3, 0.0, 90.0)])
    assert 0.3 < cut.visibility < 0.7
    assert cut.visible_xyxy[0] == 0.0


# --------------------------------------------------------------------------- motion


def test_walkers_keep_identity_and_move_with_bounded_speed():
    cam = Camera(width=320, height=192, horizon_y=60.0, gain=0.85)
    rng = np.random.default_rng(5)
    bank = make_identity_bank(0, 30, 0.3)
    fps, speed = 10.0, (0.5, 1.1)
    walkers = simulate_walkers(rng, cam, bank, 60, fps, (3, 6), speed, 0.9, 0.05, num_static=1)
    assert len({w.track_id for w in walkers}) == len(walkers)
    assert len({w.identity.pid for w in walkers}) == len(walkers)  # one track per identity
    assert sum(w.speed == 0 for w in walkers) == 1
    for w in walkers:
        frames = sorted(w.states)
        assert frames == list(range(frames[0], frames[-1] + 1))  # never reappears after leaving
        for f0, f1 in zip(frames, frames[1:]):
            a, b = w.states[f0], w.states[f1]
            step = math.hypot(b.foot_x - a.foot_x, b.foot_y - a.foot_y)
            # at most speed_max body heights per second: 1.1 * h / 10 px per frame
            assert step <= speed[1] * max(a.height, b.height) / fps + 1e-6
    assert view_from_heading(1.0, 0.1) == "right" and view_from_heading(0.1, -1.0) == "back"


# --------------------------------------------------------------------------- identity populations


@pytest.mark.parametrize("cfg", [MINI, SynthConfig()], ids=["mini", "tiny"])
def test_identity_populations_are_disjoint_and_sized(cfg):
    pops = datasets.identity_populations(cfg)
    assert tuple(pops) == datasets.POPULATIONS
    assert {k: len(v) for k, v in pops.items()} == datasets.population_sizes(cfg)
    every = [p for pids in pops.values() for p in pids]
    assert len(every) == len(set(every))  # pairwise disjoint
    assert set(every) <= {ident.pid for ident in datasets.identity_bank(cfg)}
    assert datasets.identity_populations(cfg) == pops  # deterministic
    counts = datasets.population_counts(cfg)
    assert counts["bank"] == cfg.num_identities and counts["unused"] == cfg.num_identities - len(every)


def test_populations_keep_hard_negative_clones_with_their_original():
    cfg = SynthConfig()
    where = {p: name for name, pids in datasets.identity_populations(cfg).items() for p in pids}
    clones = [i for i in datasets.identity_bank(cfg) if i.clone_of > 0 and i.pid in where]
    # families are dealt whole; only the 5 slice boundaries can split one
    assert clones and sum(where[c.pid] != where.get(c.clone_of) for c in clones) <= len(datasets.POPULATIONS) - 1


def test_too_small_identity_bank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"num_identities = 23 is too small .*mot_ids 10 .*reid_test_ids 2 = 24"):
        datasets.identity_populations(dataclasses.replace(MINI, num_identities=23))
    with pytest.raises(ValueError, match="num_identities"):
        plan_units(dataclasses.replace(MINI, num_identities=23))  # before any unit runs
    with pytest.raises(ValueError, match="person_search_val_queries = 4 exceeds synth.person_search_val_ids = 3"):
        datasets.identity_populations(dataclasses.replace(MINI, person_search_val_queries=4))
    with pytest.raises(ValueError, match="mot_ids must be >= 0"):
        datasets.identity_populations(dataclasses.replace(MINI, mot_ids=-1))


def test_still_images_hold_only_fresh_people(monkeypatch, tmp_path):
    """CrowdHuman / COCO people are never bank members and never appear in two images (or twice in one)."""
    scenes = []
    real = datasets.render_still

    def spy(*args, **kwargs):
        scenes.append(real(*args, **kwargs))
        return scenes[-1]

    monkeypatch.setattr(datasets, "render_still", spy)
    for split in ("train", "val"):
        datasets.crowdhuman_shard(MINI, str(tmp_path), split, 0)
        datasets.coco_shard(MINI, str(tmp_path), split, 0)
    assert len(scenes) == MINI.crowdhuman_train_images + MINI.crowdhuman_val_images + MINI.coco_train_images \
        + MINI.coco_val_images
    people = [actor.identity for scene in scenes for actor in scene.people]
    assert len(people) > 10 and all(ident.pid == -1 for ident in people)
    looks = [_appearance(ident) for ident in people]
    assert len(set(looks)) == len(looks)
    assert not set(looks) & {_appearance(ident) for ident in datasets.identity_bank(MINI)}
    assert any(ident.changed_attribute for ident in people)  # in-image look-alikes (hard negatives) exist


# --------------------------------------------------------------------------- whole world


def test_generation_is_deterministic_and_seed_dependent(mini_world, tmp_path):
    generate_world(MINI, tmp_path / "b")
    generate_world(dataclasses.replace(MINI, seed=1), tmp_path / "c")
    ha, hb, hc = _hashes(mini_world), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert len(ha) > 50 and ha == hb
    common = set(ha) & set(hc)
    assert sum(ha[k] != hc[k] for k in common) > 0.9 * len(common)


def test_units_run_in_any_order(tmp_path):
    units = [u for u in plan_units(MINI) if u[0] in ("crowdhuman", "mot17")]
    generate_world(MINI, tmp_path / "fwd", units=units)
    generate_world(MINI, tmp_path / "rev", map_fn=lambda f, xs: [f(x) for x in xs][::-1][::-1], units=units[::-1])
    assert _hashes(tmp_path / "fwd") == _hashes(tmp_path / "rev")


def test_ray_tasks_write_the_same_files(tmp_path, ray_session):
    from jobs.generate_synth import ray_map_fn

    units = [("crowdhuman", "val", 0), ("mot17", 0)]
    generate_world(MINI, tmp_path / "serial", units=units)
    generate_world(MINI, tmp_path / "ray", units=units, map_fn=ray_map_fn(num_cpus_per_task=0.5))
    hs = _hashes(tmp_path / "serial")
    assert len(hs) > 10 and hs == _hashes(tmp_path / "ray")


def test_job_cli_smoke(tmp_path, capsys):
    from jobs.generate_synth import get_args_parser, main

    small = ["synth.crowdhuman_train_images=2", "synth.crowdhuman_val_images=1", "synth.coco_train_images=1",
             "synth.coco_val_images=1", "synth.kinetics_clips=0", "synth.kinetics_val_clips=0",
             "synth.mot_sequences=0", "synth.person_search_train_images=2", "synth.person_search_test_images=4",
             "synth.reid_train_ids=1", "synth.reid_test_ids=1", "synth.reid_junk_crops=0",
             "synth.reid_distractor_crops=0"]
    args = get_args_parser().parse_args(["--preset", "tiny", "--out", str(tmp_path), "--seed", "3",
                                         *sum((["--set", s] for s in small), [])])
    summary = main(args)
    assert summary["seed"] == 3 and summary["counts"]["crowdhuman/train/images"] == 2
    assert json.loads((tmp_path / "world.json").read_text())["counts"] == summary["counts"]
    assert "crowdhuman/train/images" in capsys.readouterr().out


def test_mini_world_keeps_populations_apart(mini_world):
    """MOT walkers, person-search train/val/test and Market train/test never share an identity."""
    world = json.loads((mini_world / "world.json").read_text())
    pops = {k: set(v) for k, v in datasets.identity_populations(MINI).items()}
    assert {k: world["counts"][f"identities/{k}"] for k in pops} == {k: len(v) for k, v in pops.items()}

    track_pids = world["mot17_track_pids"]["MOT17-SYN01-SDP"]
    gt = read_gt(mini_world / "MOT17" / "train" / "MOT17-SYN01-SDP" / "gt" / "gt.txt")
    walkers = {str(int(t)) for t in np.unique(gt[np.isin(gt[:, 7], (1, 7)), 1])}
    assert walkers and walkers <= set(track_pids)
    mot_pids = {track_pids[t] for t in walkers}
    assert mot_pids <= pops["mot"]

    manifest = read_manifest(mini_world / "person_search" / "manifest.json")
    ps = {split: {int(p) for im in manifest.images if im.split == split for p in im.pids if p > 0}
          for split in ("train", "val", "test")}
    for split, pids in ps.items():
        assert pids and pids <= pops[f"person_search_{split}"]
    assert not ps["train"] & ps["val"] and not ps["train"] & ps["test"] and not ps["val"] & ps["test"]

    market = {}
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        crops, _ = read_market1501(mini_world / "market1501", split)
        market[split] = {c.pid for c in crops if c.pid > 0}
    assert market["bounding_box_train"] <= pops["market_train"]
    assert market["query"] | market["bounding_box_test"] <= pops["market_test"]
    market_pids = set().union(*market.values())
    assert not mot_pids & (set().union(*ps.values()) | market_pids)
    assert not set().union(*ps.values()) & market_pids

    # val queries: val images, galleries of val images only; test queries likewise on test
    assert len(manifest.queries_of("val")) == MINI.person_search_val_queries
    assert manifest.queries_of("test") == manifest.queries and len(manifest.queries) == MINI.person_search_queries
    for split in ("val", "test"):
        for q in manifest.queries_of(split):
            assert manifest.image(q.file_name).split == split and manifest.query_split(q) == split
            for size in q.galleries:
                gallery = manifest.gallery(q, size)
                assert gallery and {manifest.image(g).split for g in gallery} == {split}
                assert any(q.pid in manifest.image(g).pids for g in gallery)
    assert list(manifest.queries_of("val")[0].galleries) == ["3"]  # only the sizes that fit 4 val images


# --------------------------------------------------------------------------- the tiny world through the readers


def test_tiny_world_crowdhuman_and_coco_parse(tiny_world):
    world = json.loads((tiny_world / "world.json").read_text())
    counts = world["counts"]
    cfg = SynthConfig()
    records, stats = read_crowdhuman(tiny_world / "crowdhuman" / "annotation_train.odgt",
                                     tiny_world / "crowdhuman" / "Images")
    assert len(records) == cfg.crowdhuman_train_images == counts["crowdhuman/train/images"]
    assert sum(r.num_boxes for r in records) == counts["crowdhuman/train/persons"]
    vis = np.concatenate([r.visibility for r in records])
    assert np.all((vis >= 0) & (vis <= 1)) and (vis < 0.9).mean() > 0.05  # some people are occluded
    assert any(len(r.ignore_boxes_xyxy) for r in records)  # posters / crowds
    for line in (tiny_world / "crowdhuman" / "annotation_train.odgt").read_text().splitlines():
        for box in json.loads(line)["gtboxes"]:
            fx, fy, fw, fh = box["fbox"]
            vx, vy, vw, vh = box["vbox"]
            assert fx - 1e-3 <= vx and fy - 1e-3 <= vy and vx + vw <= fx + fw + 1e-3 and vy + vh <= fy + fh + 1e-3
            assert set(box) == {"tag", "fbox", "vbox", "hbox", "head_attr", "extra"}

    coco, _ = read_coco_persons(tiny_world / "coco" / "annotations" / "instances_train2017.json",
                                tiny_world / "coco" / "train2017")
    data = json.loads((tiny_world / "coco" / "annotations" / "instances_train2017.json").read_text())
    with_person = {a["image_id"] for a in data["annotations"] if a["category_id"] == 1 and not a["iscrowd"]}
    assert len(coco) == len(with_person) < len(data["images"])  # distractor-only images exist and are dropped
    assert any(a["iscrowd"] == 1 for a in data["annotations"])
    assert {a["category_id"] for a in data["annotations"]} >= {1, 15}
    assert all(len(poly) >= 6 for a in data["annotations"] for poly in a["segmentation"])


def test_tiny_world_mot17_sequences(tiny_world):
    cfg = SynthConfig()
    seqs = sorted((tiny_world / "MOT17" / "train").iterdir())
    assert [s.name for s in seqs] == ["MOT17-SYN01-SDP", "MOT17-SYN02-SDP"]
    for seq in seqs:
        info, records = read_mot_sequence(seq)
        assert info.seq_length == cfg.mot_sequence_frames == len(records)
        gt = read_gt(seq / "gt" / "gt.txt")
        assert set(np.unique(gt[:, 7]).astype(int)) >= {1, 7, 8}
        assert np.all(gt[gt[:, 7] != 1, 6] == 0) and np.all(gt[gt[:, 7] == 1, 6] == 1)
        assert np.all((gt[:, 8] >= 0) & (gt[:, 8] <= 1))
        assert len({(f, i) for f, i in gt[:, :2]}) == len(gt)  # one box per id per frame
        for tid in np.unique(gt[gt[:, 7] == 1, 1]):
            rows = gt[gt[:, 1] == tid]
            rows = rows[np.argsort(rows[:, 0])]
            dx = np.abs(np.diff(rows[:, 2] + rows[:, 4] / 2))
            # <= 1.1 body heights / s at 10 fps, plus 1 px rounding and the entry/exit clipping
            assert np.all(dx <= 0.11 * rows[1:, 5] + 2.0 + 1e-6)
        det = np.loadtxt(seq / "det" / "det.txt", delimiter=",").reshape(-1, 10)
        assert np.all(det[:, 1] == -1) and np.all((det[:, 6] > 0) & (det[:, 6] <= 1))


def test_tiny_world_kinetics_person_search_market(tiny_world):
    cfg = SynthConfig()
    clips, _ = read_kinetics(tiny_world / "kinetics" / "train.csv", tiny_world / "kinetics")
    assert len(clips) == cfg.kinetics_clips
    val, _ = read_kinetics(tiny_world / "kinetics" / "validate.csv", tiny_world / "kinetics")
    assert len(val) == cfg.kinetics_val_clips
    for clip in clips[:2]:
        n, fps, w, h = read_video_info(clip.path)
        assert (n, w, h) == (cfg.kinetics_clip_frames, cfg.image_width, cfg.image_height)
        rel = Path(clip.path).relative_to(tiny_world / "kinetics").with_suffix(".txt")
        truth = read_gt(tiny_world / "kinetics_truth" / rel)
        assert len(truth) and truth[:, 0].max() <= n and len({(f, i) for f, i in truth[:, :2]}) == len(truth)

    manifest = read_manifest(tiny_world / "person_search" / "manifest.json")
    assert manifest.protocol == "cuhk" and len(manifest.queries) == cfg.person_search_queries
    assert len(manifest.val_queries) == cfg.person_search_val_queries
    assert sum(im.split == "val" for im in manifest.images) == cfg.person_search_val_images
    train_pids = {p for im in manifest.images if im.split == "train" for p in im.pids if p > 0}
    val_pids = {p for im in manifest.images if im.split == "val" for p in im.pids if p > 0}
    test_pids = {p for im in manifest.images if im.split == "test" for p in im.pids if p > 0}
    assert train_pids and val_pids and test_pids
    assert not train_pids & test_pids and not val_pids & (train_pids | test_pids)
    assert len({im.camera for im in manifest.images}) == cfg.person_search_cameras
    assert {im.camera for im in manifest.images if im.split == "val"} == {im.camera for im in manifest.images}
    for q in manifest.queries + manifest.val_queries:
        qcam = manifest.image(q.file_name).camera
        for size, gallery in q.galleries.items():
            assert len(gallery) <= int(size) and q.file_name not in gallery
            hits = [g for g in gallery if q.pid in manifest.image(g).pids]
            assert hits and all(manifest.image(g).camera != qcam for g in hits)

    train, _ = read_market1501(tiny_world / "market1501", "bounding_box_train")
    assert len(train) == cfg.reid_train_ids * cfg.reid_crops_per_id
    assert all(len({c.camera for c in train if c.pid == p}) >= 2 for p in {c.pid for c in train})
    test, _ = read_market1501(tiny_world / "market1501", "bounding_box_test", keep_junk=True)
    assert sum(c.pid == -1 for c in test) == cfg.reid_junk_crops
    assert sum(c.pid == 0 for c in test) == cfg.reid_distractor_crops
    query, _ = read_market1501(tiny_world / "market1501", "query")
    assert {c.pid for c in query} == {c.pid for c in test if c.pid > 0}
