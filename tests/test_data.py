"""Training samples from a hand-written CrowdHuman odgt + JPEG; collate; records; bad images."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from kdtrack.config import load_config
from kdtrack.data.dataset import collate, image_uid, load_records, read_image_rgb, training_sample
from kdtrack.data.targets import person_keys

IMG_W, IMG_H = 160, 96  # letterboxed x2 onto the tiny preset's 320x192 canvas, no padding


def _world(tmp_path: Path) -> Path:
    root = tmp_path / "world"
    (root / "crowdhuman" / "Images").mkdir(parents=True)
    image = np.full((IMG_H, IMG_W, 3), 90, np.uint8)
    cv2.imwrite(str(root / "crowdhuman" / "Images" / "img1.jpg"), image)
    boxes = [
        {"tag": "person", "fbox": [10, 20, 40, 60], "vbox": [10, 20, 40, 60], "extra": {"box_id": 0}},
        {"tag": "person", "fbox": [100, 10, 20, 50], "vbox": [100, 10, 20, 50], "extra": {"box_id": 1}},
        {"tag": "mask", "fbox": [60, 0, 10, 10], "vbox": [60, 0, 10, 10], "extra": {"box_id": 2}},
    ]
    (root / "crowdhuman" / "annotation_train.odgt").write_text(json.dumps({"ID": "img1", "gtboxes": boxes}) + "\n")
    return root


def _cfg(root: Path, *extra: str):
    return load_config("tiny", [f"data.root={root}", "data.augment=none", *extra])


def test_training_sample_from_odgt(tmp_path):
    cfg = _cfg(_world(tmp_path))
    (record,) = load_records(cfg)
    s = training_sample(record, cfg, np.random.default_rng(0), views=2)
    assert s["image"].shape == (2, 3, 192, 320) and s["image"].dtype == np.float32
    assert s["heatmap"].shape == (2, 1, 48, 80)
    # box 0: xywh [10,20,40,60] -> xyxy [10,20,50,80] -> x2 on the canvas [20,40,100,160];
    # centre (60,100) / 4 = (15,25) -> index 25*80+15 = 2015; ltrb = (40,60,40,60); offset 0.
    assert s["index"][0, 0] == 2015
    np.testing.assert_allclose(s["size"][0, 0], [40, 60, 40, 60])
    np.testing.assert_allclose(s["offset"][0, 0], [0, 0])
    assert s["mask"][0].sum() == 2 and s["box_index"][0, :3].tolist() == [0, 1, -1]
    # person keys: the same in both views, derived from the image uid and the original row
    keys = person_keys(image_uid(record), 2)
    assert s["ids"][0, :2].tolist() == keys.tolist() == s["ids"][1, :2].tolist()
    # the mask box (60,0)-(70,10) -> canvas (120,0)-(140,20) -> cells x 30..34, y 0..4 are ignored
    assert s["ignore"][0, 0, 0:5, 30:35].all() and s["ignore"][0].sum() == 25


def test_with_original_aligns_teacher_boxes(tmp_path):
    cfg = _cfg(_world(tmp_path), "loss.id_mode=kd", "data.augment=detection")
    (record,) = load_records(cfg)
    s = training_sample(record, cfg, np.random.default_rng(5), with_original=True)
    canvas_boxes = record.boxes_xyxy * 2.0  # letterbox scale 2, no padding
    filled = s["mask"][0]
    np.testing.assert_allclose(s["teacher_boxes_xyxy"][0][filled], canvas_boxes[s["box_index"][0][filled]])
    assert s["orig_image"].shape == (1, 3, 192, 320)
    # KD keeps dataset ids (unknown for CrowdHuman), not person keys
    assert (s["ids"][0][filled] == -1).all()


def test_collate_puts_views_in_two_halves(tmp_path):
    cfg = _cfg(_world(tmp_path))
    (record,) = load_records(cfg)
    samples = [training_sample(record, cfg, np.random.default_rng(i), views=2) for i in range(3)]
    batch = collate(samples)
    assert batch["image"].shape == (6, 3, 192, 320)
    assert batch["ids"].shape == (6, 2)  # slot axis trimmed to the 2 people
    assert batch["ids"][:3].tolist() == batch["ids"][3:].tolist()


def test_bad_image_names_the_path(tmp_path):
    root = _world(tmp_path)
    cfg = _cfg(root)
    (record,) = load_records(cfg)
    Path(record.image_path).write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="img1.jpg: cannot read image"):
        training_sample(record, cfg, np.random.default_rng(0))


def test_image_size_mismatch_is_an_error(tmp_path):
    root = _world(tmp_path)
    path = root / "crowdhuman" / "Images" / "img1.jpg"
    with pytest.raises(ValueError, match="img1.jpg: image is 160x96 but its annotation says 10x10"):
        read_image_rgb(path, (10, 10))


def test_unknown_source_and_empty_root(tmp_path):
    with pytest.raises(ValueError, match="data.root is empty"):
        load_records(load_config("tiny"))
    with pytest.raises(ValueError, match="'kinetics' has no boxes"):
        load_records(_cfg(_world(tmp_path), "data.sources=[kinetics]"))


# --------------------------------------------------------------------------- multi-scale training


def test_multiscale_sample_size_and_targets(tmp_path):
    # 160x96, short side 64: scale 2/3 -> 107x64 placed top-left, canvas padded to 128x64
    cfg = _cfg(_world(tmp_path), "data.multiscale_short_sides=[64]")
    (record,) = load_records(cfg)
    s = training_sample(record, cfg, np.random.default_rng(0), views=2)
    assert s["image"].shape == (2, 3, 64, 128) and s["heatmap"].shape == (2, 1, 16, 32)
    assert (s["image"][:, :, :, 107:] == np.float32(0.5)).all()  # grey padding, right side only
    assert (s["image"][:, :, :, :107] != np.float32(0.5)).all()  # the image (grey 90) fills the rest
    # box 0: xyxy [10,20,50,80] x 2/3 -> centre (20, 33.33) / 4 = (5, 8.33) -> cell (5, 8) -> 8 * 32 + 5
    assert s["index"][0, 0] == 261 and s["index"][1, 0] == 261
    np.testing.assert_allclose(s["offset"][0, 0], [0.0, 1 / 3], atol=1e-5)
    assert s["heatmap"][0, 0, 8, 5] == 1.0
    ko = training_sample(record, load_config("tiny", [f"data.root={cfg.data.root}", "data.augment=none",
                                                      "loss.id_mode=kd", "data.multiscale_short_sides=[64]"]),
                         np.random.default_rng(0), with_original=True)
    assert ko["orig_image"].shape == ko["image"].shape == (1, 3, 64, 128)
    np.testing.assert_allclose(ko["teacher_boxes_xyxy"][0, :2], record.boxes_xyxy * np.float32(2 / 3), rtol=1e-5)


def test_multiscale_draws_one_size_per_sample_and_caps_the_long_side(tmp_path):
    root = _world(tmp_path)
    cfg = _cfg(root, "data.multiscale_short_sides=[64, 96, 128]", "data.augment=idf_view")
    (record,) = load_records(cfg)
    # short 64 -> 107x64 -> 128x64; 96 -> 160x96 -> 160x96; 128 -> 213x128 -> 224x128
    allowed = {(64, 128), (96, 160), (128, 224)}
    seen = set()
    for seed in range(12):
        s = training_sample(record, cfg, np.random.default_rng(seed), views=2)
        seen.add(s["image"].shape[-2:])  # one (V, ...) array: both views share the size
    assert seen == allowed
    # the longer side is capped: short 128 would make it 213 > 200 -> scale 1.25 -> 200x120 -> canvas 224x128
    capped = _cfg(root, "data.multiscale_short_sides=[128]", "data.multiscale_max_long_side=200")
    s = training_sample(record, capped, np.random.default_rng(0))
    assert s["image"].shape[-2:] == (128, 224) and (s["image"][0, :, :, 200:] == np.float32(0.5)).all()
    assert (s["image"][0, :, 120:] == np.float32(0.5)).all()
    # the augmentation draws do not depend on the size draw: the same views at another size
    base = training_sample(record, _cfg(root, "data.multiscale_short_sides=[96]", "data.augment=idf_view"),
                           np.random.default_rng(3), views=2)
    fixed = training_sample(record, _cfg(root, "data.augment=idf_view"), np.random.default_rng(3), views=2)
    np.testing.assert_array_equal(base["box_index"], fixed["box_index"])  # augmentation runs before the resize
    np.testing.assert_allclose(base["size"], fixed["size"] / 2, rtol=1e-5)  # scale 1 here, 2 on the 320x192 letterbox


def test_collate_pads_mixed_sizes_and_readdresses_indices(tmp_path):
    root = _world(tmp_path)
    small_cfg = _cfg(root, "data.multiscale_short_sides=[64]", "data.augment=idf_view")
    big_cfg = _cfg(root, "data.multiscale_short_sides=[128]", "data.augment=idf_view")
    (record,) = load_records(small_cfg)
    samples = [training_sample(record, small_cfg, np.random.default_rng(1), views=2),
               training_sample(record, big_cfg, np.random.default_rng(2), views=2)]
    batch = collate(samples, trim=False)
    assert batch["image"].shape == (4, 3, 128, 224) and batch["heatmap"].shape == (4, 1, 32, 56)
    order = [(0, 0), (1, 0), (0, 1), (1, 1)]  # view-0 images first, then view 1
    for b, (j, v) in enumerate(order):
        s = samples[j]
        h, w = s["heatmap"].shape[-2:]
        H, W = s["image"].shape[-2:]
        img, hm = batch["image"][b].numpy(), batch["heatmap"][b, 0].numpy()
        np.testing.assert_array_equal(img[:, :H, :W], s["image"][v])  # nothing moved
        assert (img[:, H:] == np.float32(0.5)).all() and (img[:, :, W:] == np.float32(0.5)).all()
        np.testing.assert_array_equal(hm[:h, :w], s["heatmap"][v, 0])
        assert hm[h:].sum() == 0 and hm[:, w:].sum() == 0 and batch["ignore"][b, 0, h:].sum() == 0
        filled = s["mask"][v]
        assert filled.any()
        flat = hm.reshape(-1)
        # every box's centre index still points at its own Gaussian peak (1.0), at the same (y, x) cell
        idx = batch["index"][b].numpy()[filled]
        assert (flat[idx] == 1.0).all()
        np.testing.assert_array_equal(idx // 56, s["index"][v][filled] // w)
        np.testing.assert_array_equal(idx % 56, s["index"][v][filled] % w)
        np.testing.assert_array_equal(flat[idx], s["heatmap"][v, 0].reshape(-1)[s["index"][v][filled]])
        rmask = s["region_mask"][v]
        ridx = batch["region_index"][b].numpy()[rmask]
        np.testing.assert_array_equal(ridx // 56, s["region_index"][v][rmask] // w)
        np.testing.assert_array_equal(ridx % 56, s["region_index"][v][rmask] % w)
    # samples of one size are stacked untouched (the fixed-size path)
    same = collate([samples[1], samples[1]], trim=False)
    np.testing.assert_array_equal(same["index"][0].numpy(), samples[1]["index"][0])
    assert same["image"].shape == (4, 3, 128, 224)


def test_feed_batches_carry_uint8_canvases_made_float_on_the_device_bit_for_bit(tmp_path):
    import torch

    from kdtrack.data.dataset import TorchFeed, TrainingDataset
    from kdtrack.data.uint8_canvas import float_canvases

    root = _world(tmp_path)
    cfgs = [_cfg(root, f"data.multiscale_short_sides=[{side}]", "data.augment=idf_view") for side in (64, 128)]
    (record,) = load_records(cfgs[0])
    samples = [training_sample(record, c, np.random.default_rng(i), views=2) for i, c in enumerate(cfgs)]
    kd_cfg = _cfg(root, "loss.id_mode=kd", "data.augment=detection", "model.input_width=352")  # grey side bands
    kd = [training_sample(record, kd_cfg, np.random.default_rng(i), with_original=True) for i in range(2)]
    off = [dict(s, image=s["image"] + np.float32(1e-3)) for s in kd]  # between two levels: no uint8 canvas
    for group in (samples, kd, off):
        before, fed = collate(group), collate(group, uint8=True)  # the host's float32 input / what the feed ships
        after = float_canvases(fed)  # the train step's, on its device
        assert after.keys() == before.keys()
        for key in before:
            assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key
    fed = collate(samples, uint8=True)
    assert (fed["image"].dtype, fed["image_grey"].dtype) == (torch.uint8, torch.uint8)
    assert (collate(samples)["image"] == np.float32(0.5)).any()  # the grey is there, and came back exactly
    assert fed["image"].nbytes + fed["image_grey"].nbytes < 0.3 * collate(samples)["image"].nbytes
    fed_kd = collate(kd, uint8=True)
    assert fed_kd["image"].dtype == fed_kd["orig_image"].dtype == torch.uint8
    assert collate(off, uint8=True)["image"].dtype == torch.float32  # kept as it was
    # the torch DataLoader feed ships the same uint8 canvases
    feed = TorchFeed(TrainingDataset([record], _cfg(root, "train.batch_size_per_worker=1"), views=2),
                     _cfg(root, "train.batch_size_per_worker=1"), rank=0, world=1)
    assert next(iter(feed.epoch_batches(0, 0, 0)))["image"].dtype == torch.uint8


def test_padded_mixed_size_batch_trains(tmp_path):
    from kdtrack.engine import build_optimizer, train_step
    from kdtrack.losses import Criterion
    from kdtrack.models import build_student

    import torch

    root = _world(tmp_path)
    cfgs = [_cfg(root, f"data.multiscale_short_sides=[{side}]", "data.augment=idf_view", "model.width=8",
                 "model.head_conv=16", "model.embedding_dim=16", "loss.queue_size=64") for side in (64, 96)]
    (record,) = load_records(cfgs[0])
    batch = collate([training_sample(record, c, np.random.default_rng(i), views=2) for i, c in enumerate(cfgs)])
    torch.manual_seed(0)
    model, criterion = build_student(cfgs[0].model), Criterion.from_config(cfgs[0])
    opt = build_optimizer(list(model.parameters()) + list(criterion.parameters()), cfgs[0].train)
    from kdtrack.models.momentum import MomentumEncoder

    terms = train_step(model, criterion, batch, opt, device="cpu",
                       key_encoder=MomentumEncoder(model, cfgs[0].loss.key_momentum))
    assert np.isfinite(terms["total"]) and terms["id"] > 0


def test_person_search_source_reads_the_train_split_only(tiny_world):
    """CUHK-SYSU / PRW as KD training data: the manifest's train images with every box (pids as ids,
    unlabelled people -1); the val / test people, whom person search is scored on, never reach a trainer."""
    from kdtrack.data.dataset import dataset_wide_ids
    from kdtrack.formats.person_search import read_manifest

    manifest = read_manifest(tiny_world / "person_search" / "manifest.json")
    train = [img for img in manifest.images if img.split == "train"]
    records = load_records(load_config("tiny", [f"data.root={tiny_world}", "data.sources=[person_search]"]))
    assert [r.image_id for r in records] == [img.file_name for img in train]
    for record, img in zip(records, train):
        assert record.ids.tolist() == img.pids.tolist() and len(record.boxes_xyxy) == len(img.pids)
    held_out = {p for img in manifest.images if img.split != "train" for p in img.pids.tolist() if p > 0}
    seen = {p for r in records for p in r.ids.tolist() if p > 0}
    assert seen and not seen & held_out
    # hard labels (loss.eta < 1): one class per labelled pid, unlabelled boxes stay unknown
    labelled, classes = dataset_wide_ids(records)
    assert classes == len(seen)
    assert sum((r.ids >= 0).sum() for r in labelled) == sum((r.ids > 0).sum() for r in records)


def test_background_swap_pastes_the_people_onto_another_image(tmp_path):
    """``data.background_swap``: each view's people (same keys, same boxes) on a partner's image."""
    root = _world(tmp_path)
    other = np.zeros((IMG_H, IMG_W, 3), np.uint8)
    other[..., 1] = 200  # a green partner image
    cv2.imwrite(str(root / "crowdhuman" / "Images" / "img2.jpg"), other)
    with open(root / "crowdhuman" / "annotation_train.odgt", "a") as f:
        f.write(json.dumps({"ID": "img2", "gtboxes": [
            {"tag": "person", "fbox": [0, 0, 8, 8], "vbox": [0, 0, 8, 8], "extra": {"box_id": 0}}]}) + "\n")
    cfg_off = _cfg(root, "loss.id_mode=contrastive")
    cfg_on = _cfg(root, "loss.id_mode=contrastive", "data.background_swap=1.0")
    first, second = load_records(cfg_on)
    plain = training_sample(first, cfg_off, np.random.default_rng(0), views=2, partners=[second])
    swapped = training_sample(first, cfg_on, np.random.default_rng(0), views=2, partners=[second])
    for key in ("ids", "index", "mask", "size", "region_index", "box_index"):
        assert np.array_equal(plain[key], swapped[key]), key
    canvas = swapped["image"][1].transpose(1, 2, 0)  # x2 letterbox of the 160x96 image
    assert canvas[100, 60].tolist() == pytest.approx(plain["image"][1][:, 100, 60].tolist(), abs=0.02)  # person 0
    assert canvas[5, 300, 1] > 0.7 and canvas[5, 300, 0] < 0.1  # the green partner around the people
    # the partner's person becomes ignored: (0,0)-(8,8) x2 -> cells 0..3
    assert swapped["ignore"][1, 0, 0:4, 0:4].all() and not plain["ignore"][1, 0, 0:4, 0:4].any()
    # background_swap_views=last: view 0 stays the whole image, view 1 is swapped as before
    last = training_sample(first, _cfg(root, "loss.id_mode=contrastive", "data.background_swap=1.0",
                                       "data.background_swap_views=last"),
                           np.random.default_rng(0), views=2, partners=[second])
    assert np.array_equal(last["image"][0], plain["image"][0]) and np.array_equal(last["image"][1], swapped["image"][1])
    # no partner (or probability 0): the draws and pixels are those of before
    again = training_sample(first, cfg_on, np.random.default_rng(0), views=2)
    assert np.array_equal(again["image"], plain["image"])
    # an unreadable partner image fails the sample naming the partner's file (the stream counts it as bad)
    (root / "crowdhuman" / "Images" / "img2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="img2.jpg: cannot read image"):
        training_sample(first, cfg_on, np.random.default_rng(0), views=2, partners=[second])


def test_person_jitter_changes_only_the_pasted_view(tiny_world):
    """data.paste_scale / paste_flip / paste_erase act on the swapped (last) view alone: the first view is
    the same image with the same targets, and the pasted people keep their contrastive keys."""
    overrides = [f"data.root={tiny_world}"]
    plain_cfg = load_config("idf_cpu", overrides)
    jitter_cfg = load_config("idf_cpu", overrides + ["data.paste_scale=[0.5, 1.5]", "data.paste_flip=0.5",
                                                      "data.paste_erase=0.5"])
    records = load_records(jitter_cfg)
    differs = 0
    for i, record in enumerate(records[:6]):
        plain = training_sample(record, plain_cfg, np.random.default_rng(i), views=2, partners=records)
        jitter = training_sample(record, jitter_cfg, np.random.default_rng(i), views=2, partners=records)
        for key in ("image", "index", "mask", "ids", "heatmap"):
            assert np.array_equal(plain[key][0], jitter[key][0]), key
        pasted = jitter["ids"][1][jitter["mask"][1] > 0]
        assert set(pasted.tolist()) <= set(person_keys(image_uid(record), record.num_boxes).tolist())
        differs += not np.array_equal(plain["image"][1], jitter["image"][1])
    assert differs >= 5


def test_paste_masks_moves_coco_people_through_their_outlines(tiny_world):
    """data.paste_masks: a COCO record's swapped view pastes each person through its segmentation outline;
    the whole first view, the targets and the draws are those of the rectangle paste."""
    from kdtrack.structures import POLYGONS_KEY

    overrides = [f"data.root={tiny_world}", "data.sources=[coco]"]
    rect_cfg = load_config("idf_cpu", overrides)
    mask_cfg = load_config("idf_cpu", overrides + ["data.paste_masks=true"])
    records = load_records(mask_cfg)
    assert all(POLYGONS_KEY in r.extra and len(r.extra[POLYGONS_KEY]) == r.num_boxes for r in records)
    differs = 0
    for i, record in enumerate(records[:6]):
        rect = training_sample(record, rect_cfg, np.random.default_rng(i), views=2, partners=records)
        mask = training_sample(record, mask_cfg, np.random.default_rng(i), views=2, partners=records)
        assert np.array_equal(rect["image"][0], mask["image"][0])
        for key in ("index", "mask", "ids", "heatmap"):
            assert np.array_equal(rect[key], mask[key]), key
        differs += not np.array_equal(rect["image"][1], mask["image"][1])
    assert differs >= 5  # the pasted view: the box's own background stayed behind
