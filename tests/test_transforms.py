"""Box-aware augmentation: per-box fields stay aligned, presets are deterministic, letterbox round trip."""

from __future__ import annotations

import dataclasses
import typing

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from kdtrack.config import DataConfig
from kdtrack.data.letterbox import letterbox_transform
from kdtrack.data.transforms import (PRESETS, AugmentParams, BoxAugment, ChannelGain, build_pipeline, two_views,
                                     with_view_changes)

H, W = 100, 200


def _image() -> np.ndarray:
    return (np.random.default_rng(0).random((H, W, 3)) * 255).astype(np.uint8)


def _target() -> dict:
    return {
        "boxes_xyxy": np.array([[40, 10, 90, 90], [140, 10, 190, 90], [80, 20, 120, 80]], np.float32),
        "box_index": np.array([0, 1, 2]),
        "ids": np.array([5, 6, 7]),
        "ignore_boxes_xyxy": np.array([[60, 0, 70, 10]], np.float32),
    }


def test_crop_drops_a_box_and_keeps_the_others_aligned():
    aug = BoxAugment("none", min_box_size=2.0, min_visible_fraction=0.25)
    aug.pipeline = v2.CenterCrop((H, 100))  # keeps x in [50, 150)
    image, out = aug(_image(), _target(), np.random.default_rng(0))
    assert image.shape == (H, 100, 3)
    # box 0 [40,90] -> [-10,40]: 40/50 = 80 % visible, clamped to [0,40]; kept.
    # box 1 [140,190] -> [90,140]: 10/50 = 20 % < 25 % visible; dropped with its id 6.
    # box 2 [80,120] -> [30,70]: fully inside; kept.
    np.testing.assert_allclose(out["boxes_xyxy"], [[0, 10, 40, 90], [30, 20, 70, 80]])
    assert out["box_index"].tolist() == [0, 2]
    assert out["ids"].tolist() == [5, 7]
    np.testing.assert_allclose(out["ignore_boxes_xyxy"], [[10, 0, 20, 10]])  # ignore box shifted by -50


def test_flip_moves_person_and_ignore_boxes():
    aug = BoxAugment("none")
    aug.pipeline = v2.RandomHorizontalFlip(p=1.0)
    image, out = aug(_image(), _target(), np.random.default_rng(0))
    np.testing.assert_array_equal(image, _image()[:, ::-1])
    # x' = W - x: [40, 90] -> [110, 160]; ignore [60, 70] -> [130, 140]
    np.testing.assert_allclose(out["boxes_xyxy"][0], [110, 10, 160, 90])
    np.testing.assert_allclose(out["ignore_boxes_xyxy"], [[130, 0, 140, 10]])
    assert out["ids"].tolist() == [5, 6, 7]


@pytest.mark.parametrize("preset", ["detection", "idf_view"])
def test_presets_are_deterministic_and_keep_fields_aligned(preset):
    aug = BoxAugment(preset)
    target = _target()
    outs = []
    for seed in (3, 3, 4):
        image, out = aug(_image(), target, np.random.default_rng(seed))
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        # every surviving box still carries the id of the person it came from
        assert out["ids"].tolist() == target["ids"][out["box_index"]].tolist()
        assert (out["boxes_xyxy"][:, 2:] - out["boxes_xyxy"][:, :2] >= 2.0).all()
        assert (out["boxes_xyxy"] >= 0).all() and (out["boxes_xyxy"][:, [0, 2]] <= W).all()
        outs.append((image, out))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1]["boxes_xyxy"], outs[1][1]["boxes_xyxy"])
    assert not np.array_equal(outs[0][0], outs[2][0])


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown augmentation preset 'fancy'"):
        BoxAugment("fancy")
    assert set(PRESETS) == {"none", "detection", "idf_view", "idf_view_colour"}
    # data.augment offers exactly these presets (and auto): one added to either side only is caught here
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["augment"])) == set(PRESETS) | {"auto"}


def test_misaligned_target_raises():
    bad = _target()
    bad["ids"] = np.array([1, 2])
    with pytest.raises(ValueError, match="3 boxes but 3 box_index and 2 ids"):
        BoxAugment("none")(_image(), bad, np.random.default_rng(0))


def test_two_views_share_person_identity():
    aug = BoxAugment("idf_view")
    (img_a, a), (img_b, b) = two_views(_image(), _target(), np.random.default_rng(1), aug)
    assert not np.array_equal(img_a, img_b)
    for view in (a, b):
        assert view["ids"].tolist() == _target()["ids"][view["box_index"]].tolist()
    common = set(a["box_index"].tolist()) & set(b["box_index"].tolist())
    assert common  # zoom-in keeps at least one person in both views here


def test_letterboxed_boxes_map_back():
    # 640x480 -> 320x192: scale = min(192/480, 320/640) = 0.4, resized 256x192,
    # pad_x = round((320 - 256)/2 - 0.1) = 32, pad_y = 0.
    tf = letterbox_transform(640, 480, 320, 192)
    boxes = np.array([[100, 50, 200, 250]], np.float32)
    on_canvas = tf.boxes_to_letterbox(boxes)
    np.testing.assert_allclose(on_canvas, [[100 * 0.4 + 32, 20, 200 * 0.4 + 32, 100]], rtol=1e-6)  # [72,20,112,100]
    np.testing.assert_allclose(tf.boxes_from_letterbox(on_canvas), boxes, rtol=1e-5)


def test_occlusion_drops_people_it_hides():
    """A box hidden by more than max_hidden of its area collapses (then sanitize drops it); others stay."""
    from kdtrack.data.transforms import Occlusion

    g = np.random.default_rng(0)
    checked_hidden = checked_kept = 0
    for seed in range(40):
        torch.manual_seed(seed)
        x1, y1 = g.uniform(0, 80, 30), g.uniform(0, 50, 30)
        boxes = np.stack([x1, y1, x1 + g.uniform(4, 30, 30), y1 + g.uniform(4, 30, 30)], 1).astype(np.float32)
        sample = {"image": tv_tensors.Image(torch.zeros(3, 64, 96, dtype=torch.uint8)),
                  "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(64, 96))}
        out = Occlusion(area=(0.1, 0.4), aspect=(0.5, 2.0), max_hidden=0.75)(sample)
        painted = (out["image"] != 0).any(0).numpy()
        if not painted.any():
            continue  # the random colour happened to be black
        ys, xs = np.nonzero(painted)
        rx0, rx1, ry0, ry1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        ix = np.clip(np.minimum(boxes[:, 2], rx1) - np.maximum(boxes[:, 0], rx0), 0, None)
        iy = np.clip(np.minimum(boxes[:, 3], ry1) - np.maximum(boxes[:, 1], ry0), 0, None)
        hidden = ix * iy / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) > 0.75
        got = out["boxes"].as_subclass(torch.Tensor).numpy()
        collapsed = got[:, 2] <= got[:, 0]
        assert np.array_equal(collapsed, hidden), seed
        assert np.allclose(got[~hidden], boxes[~hidden])
        checked_hidden += int(hidden.sum())
        checked_kept += int((~hidden).sum())
    assert checked_hidden > 5 and checked_kept > 100


def test_paste_people_keeps_the_people_and_swaps_their_surroundings():
    from kdtrack.data.transforms import paste_people

    image, target = _image(), _target()
    background = np.full((50, 100, 3), 7, np.uint8)  # half the size: resized to the image's
    bg_people = np.array([[10, 5, 20, 25]], np.float32)
    out, t = paste_people(image, target, background, bg_people, feather=0.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    inside = np.zeros((H, W), bool)
    for x1, y1, x2, y2 in target["boxes_xyxy"].astype(int):
        inside[y1:y2, x1:x2] = True
    assert np.array_equal(out[inside], image[inside])
    assert (out[~inside] == 7).all()
    for key in ("boxes_xyxy", "box_index", "ids"):
        assert np.array_equal(t[key], target[key])
    # the background's person (x2 scale) joins the image's own ignore box
    np.testing.assert_allclose(t["ignore_boxes_xyxy"], [[60, 0, 70, 10], [20, 10, 40, 50]])
    # feathered: the box centre is the person's, the edge a blend, far away the background
    soft, _ = paste_people(image, target, background, bg_people, feather=2.0)
    assert np.array_equal(soft[50, 60], image[50, 60]) and (soft[95, 5] == 7).all()
    assert not np.array_equal(soft[50, 40], image[50, 40]) and not (soft[50, 40] == 7).all()  # box 0's left edge


def test_paste_people_relayout_moves_each_person_and_drops_the_hidden():
    from kdtrack.data.transforms import paste_people

    image = _image()
    target = {"boxes_xyxy": np.array([[10, 10, 30, 50], [100, 20, 130, 80]], np.float32),
              "box_index": np.array([3, 8]), "ids": np.array([5, 6]),
              "ignore_boxes_xyxy": np.array([[60, 0, 70, 10]], np.float32)}
    background = np.zeros((H, W, 3), np.uint8)
    moved = 0
    for seed in range(20):
        out, t = paste_people(image, target, background, np.zeros((0, 4)), feather=0.0,
                              rng=np.random.default_rng(seed))
        assert t["ignore_boxes_xyxy"].shape == (0, 4)  # the image's own ignore boxes stay behind
        for box, row in zip(t["boxes_xyxy"].astype(int), t["box_index"]):
            src = target["boxes_xyxy"][list(target["box_index"]).index(row)].astype(int)
            assert (box[2] - box[0], box[3] - box[1]) == (src[2] - src[0], src[3] - src[1])
            moved += not np.array_equal(box, src)
    assert moved > 30
    # one person: its pixels land exactly in its new box, the rest is the background
    lone = {k: v[:1] for k, v in target.items() if k != "ignore_boxes_xyxy"}
    out, t = paste_people(image, lone, background, np.zeros((0, 4)), feather=0.0, rng=np.random.default_rng(1))
    x1, y1, x2, y2 = t["boxes_xyxy"][0].astype(int)
    assert np.array_equal(out[y1:y2, x1:x2], image[10:50, 10:30])
    assert out.astype(int).sum() == image[10:50, 10:30].astype(int).sum()
    # a person pasted under another one that covers it is dropped with its fields
    twins = {"boxes_xyxy": np.array([[10, 10, 30, 50], [10, 10, 30, 50]], np.float32),
             "box_index": np.array([0, 1]), "ids": np.array([1, 2])}
    dropped = 0
    for seed in range(200):
        _, t = paste_people(image, twins, background, np.zeros((0, 4)), feather=0.0, rng=np.random.default_rng(seed))
        dropped += len(t["ids"]) < 2
        assert len(t["ids"]) == len(t["box_index"]) == len(t["boxes_xyxy"]) >= 1
    assert dropped > 0


def test_paste_people_through_outlines_moves_the_person_not_its_box():
    """With an instance map a person with an outline is pasted through it (its box's background stays behind);
    a person without one (map 0 in its box) falls back to the rectangle."""
    from kdtrack.data.transforms import paste_people

    image, target = _image(), _target()
    outlines = np.zeros((H, W), np.int32)
    outlines[30:80, 55:75] = 1  # box 0 (40..90 x 10..90): a 20 px wide body in the middle
    outlines[20:80, 90:110] = 3  # box 2 (80..120 x 20..80)
    background = np.full((H, W, 3), 7, np.uint8)
    out, t = paste_people(image, {**target, "instance_map": outlines}, background, np.zeros((0, 4)), feather=0.0)
    body = outlines > 0
    assert np.array_equal(out[body], image[body])
    assert (out[15:25, 45:50] == 7).all()  # inside box 0, outside its outline: background now
    assert np.array_equal(out[10:90, 140:190], image[10:90, 140:190])  # box 1 has no outline: its rectangle
    for key in ("boxes_xyxy", "box_index", "ids"):
        assert np.array_equal(t[key], target[key])
    # the rectangle paste of the same target keeps the box's own background
    rect, _ = paste_people(image, target, background, np.zeros((0, 4)), feather=0.0)
    assert np.array_equal(rect[15:25, 45:50], image[15:25, 45:50])
    with pytest.raises(ValueError, match="instance_map is"):
        paste_people(image, {**target, "instance_map": outlines[:10]}, background, np.zeros((0, 4)))


def test_person_jitter_mirrors_zooms_and_erases_each_pasted_person():
    """PersonJitter: a lone person's pixels land mirrored / zoomed in its new box, which keeps its float
    offsets times the zoom; erasing fills one flat block inside it and leaves the rest of the person; an
    inactive jitter leaves every draw as it was, and a jitter needs the relayout's rng."""
    from kdtrack.data.transforms import PersonJitter, paste_people

    image = _image()
    lone = {"boxes_xyxy": np.array([[10.5, 10, 30, 50]], np.float32), "box_index": np.array([4]),
            "ids": np.array([9])}
    crop = image[10:50, 10:30]  # the whole pixels under the box
    background = np.zeros((H, W, 3), np.uint8)
    none = np.zeros((0, 4))
    out, t = paste_people(image, lone, background, none, feather=0.0, rng=np.random.default_rng(3),
                          jitter=PersonJitter(flip=1.0))
    x1, y1, x2, y2 = t["boxes_xyxy"][0]
    nx, ny = int(np.floor(x1)), int(y1)
    assert np.array_equal(out[ny:ny + 40, nx:nx + 20], crop[:, ::-1])
    np.testing.assert_allclose([x1 - nx, x2 - nx, y2 - y1], [20 - 20.0, 20 - (10.5 - 10), 40])  # mirrored offsets in the 20-px patch
    out, t = paste_people(image, lone, background, none, feather=0.0, rng=np.random.default_rng(3),
                          jitter=PersonJitter(scale=(2.0, 2.0)))
    ys, xs = np.nonzero(out.sum(axis=2) > 0)
    nx, ny = xs.min(), ys.min()  # where the zoomed patch landed
    np.testing.assert_allclose(t["boxes_xyxy"][0], [nx + 1.0, ny, nx + 40, ny + 80])  # the offsets zoomed too
    zoomed = cv2.resize(crop, (40, 80), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[ny:ny + 80, nx:nx + 40].astype(int) - zoomed).max() <= 1
    assert (out.sum(axis=2) > 0).sum() <= 40 * 80  # nothing outside the zoomed patch
    # a zoom the image cannot hold is capped at the image
    _, t = paste_people(image, lone, background, none, feather=0.0, rng=np.random.default_rng(0),
                        jitter=PersonJitter(scale=(5.0, 5.0)))
    assert t["boxes_xyxy"][0, 3] - t["boxes_xyxy"][0, 1] <= H
    blocks = 0
    for seed in range(10):
        out, t = paste_people(image, lone, background, none, feather=0.0, rng=np.random.default_rng(seed),
                              jitter=PersonJitter(erase=1.0))
        x1, y1 = int(np.floor(t["boxes_xyxy"][0, 0])), int(t["boxes_xyxy"][0, 1])
        patch = out[y1:y1 + 40, x1:x1 + 20]
        changed = (patch != crop).any(axis=2)
        ys, xs = np.nonzero(changed)
        assert changed.sum() >= 1 and changed.sum() <= 0.4 * 40 * 20 + 40
        block = patch[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert (block == block[0, 0]).all()  # one flat colour over one rectangle
        blocks += 1
    assert blocks == 10
    # inactive: the draws and the output are those of no jitter
    plain = paste_people(image, _target(), background, none, feather=2.0, rng=np.random.default_rng(5))
    same = paste_people(image, _target(), background, none, feather=2.0, rng=np.random.default_rng(5),
                        jitter=PersonJitter())
    assert np.array_equal(plain[0], same[0]) and np.array_equal(plain[1]["boxes_xyxy"], same[1]["boxes_xyxy"])
    with pytest.raises(ValueError, match="needs rng"):
        paste_people(image, lone, background, none, jitter=PersonJitter(flip=0.5))


def test_augment_carries_the_instance_map_without_changing_the_draws():
    """The outlines are warped with the image (nearest, 0 where the warp fills), and their presence changes
    neither the image nor the boxes of any draw."""
    image, target = _image(), _target()
    outlines = np.zeros((H, W), np.int32)
    for row, (x1, y1, x2, y2) in enumerate(target["boxes_xyxy"].astype(int)):
        outlines[y1 + 5:y2 - 5, x1 + 5:x2 - 5] = row + 1
    augment = BoxAugment("idf_view")
    for seed in range(8):
        plain_image, plain = augment(image, target, np.random.default_rng(seed))
        warped_image, warped = augment(image, {**target, "instance_map": outlines}, np.random.default_rng(seed))
        assert np.array_equal(plain_image, warped_image) and np.array_equal(plain["boxes_xyxy"], warped["boxes_xyxy"])
        instances = warped["instance_map"]
        assert instances.shape == plain_image.shape[:2] and set(np.unique(instances)) <= {0, 1, 2, 3}
        for box, row in zip(warped["boxes_xyxy"], warped["box_index"]):  # each outline stays inside its box
            ys, xs = np.nonzero(instances == row + 1)
            if len(xs):
                assert box[0] - 2 <= xs.mean() <= box[2] + 2 and box[1] - 2 <= ys.mean() <= box[3] + 2
    assert "instance_map" not in plain


def test_the_affine_fill_of_images_is_the_scalar_grey_it_was():
    """RandomAffine fills images with 127 and instance maps with 0 (a per-type fill): every image and box of
    the preset's warp is the one the scalar fill 127 gave, so no training sample changed with the maps."""
    image = tv_tensors.Image(torch.from_numpy(_image()).permute(2, 0, 1).contiguous())
    boxes = tv_tensors.BoundingBoxes(torch.tensor(_target()["boxes_xyxy"]), format="XYXY", canvas_size=(H, W))
    for seed in range(10):
        outs = []
        for fill in (127, {tv_tensors.Image: 127, tv_tensors.Mask: 0}):
            affine = v2.RandomAffine(degrees=10, translate=(0.2, 0.2), scale=(0.5, 1.5), shear=2, fill=fill)
            torch.manual_seed(seed)
            outs.append(affine({"image": image, "boxes": boxes}))
        assert torch.equal(outs[0]["image"], outs[1]["image"]) and torch.equal(outs[0]["boxes"], outs[1]["boxes"])


def test_channel_gain_scales_each_channel_by_one_factor_within_its_range():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.full((3, 4, 5), 100, dtype=torch.uint8))
    gain = ChannelGain(0.15)
    for _ in range(20):
        out = gain(image)
        per_channel = out.float().mean(dim=(1, 2))
        assert torch.all(out == out[:, :1, :1])  # one factor per channel, the same at every pixel
        assert torch.all((per_channel >= 85) & (per_channel <= 115)), per_channel  # 100 x [0.85, 1.15], rounded
    # a hand value: gains (1.1, 0.9, 1.0) on (200, 100, 250) -> (220, 90, 250); float images clip at 1
    red = tv_tensors.Image(torch.tensor([200, 100, 250], dtype=torch.uint8).view(3, 1, 1))
    out = gain.transform(red, {"gains": torch.tensor([1.1, 0.9, 1.0])})
    assert out.flatten().tolist() == [220, 90, 250]
    bright = tv_tensors.Image(torch.tensor([0.95, 0.5, 0.1]).view(3, 1, 1))
    out = gain.transform(bright, {"gains": torch.tensor([1.1, 0.9, 1.0])})
    assert torch.allclose(out.flatten(), torch.tensor([1.0, 0.45, 0.1]))
    with pytest.raises(ValueError, match="strength must be in"):
        ChannelGain(1.0)


def test_data_white_balance_and_random_erasing_change_the_preset_and_off_changes_nothing():
    """``data.white_balance`` puts a per-channel gain in the preset's colour step, ``data.random_erasing`` its
    occlusion; both 0 leave the preset's draws byte-identical; a preset without colour jitter ("none") gets a
    colour step that always runs."""
    detection = PRESETS["detection"]
    assert with_view_changes(detection) is detection
    assert with_view_changes(detection, 0.15) == dataclasses.replace(detection, channel_gain=0.15)
    assert with_view_changes(detection, 0.15, 0.5) == dataclasses.replace(detection, channel_gain=0.15,
                                                                          occlusion_prob=0.5)
    assert with_view_changes(None, 0.1) == AugmentParams(color_prob=1.0, channel_gain=0.1)
    assert with_view_changes(None, 0.0, 0.3) == AugmentParams(occlusion_prob=0.3)
    with pytest.raises(ValueError, match="data.white_balance must be in"):
        with_view_changes(detection, 1.0)
    with pytest.raises(ValueError, match="data.random_erasing must be in"):
        with_view_changes(detection, 0.0, 1.5)
    for preset in ("detection", "idf_view"):
        plain = BoxAugment(preset)(_image(), _target(), np.random.default_rng(3))
        zero = BoxAugment(preset, white_balance=0.0, random_erasing=0.0)(_image(), _target(), np.random.default_rng(3))
        assert np.array_equal(plain[0], zero[0])
    # on a flat grey image with no geometry, each output channel is 128 x one gain in [0.8, 1.2]
    flat = np.full((H, W, 3), 128, np.uint8)
    augment = BoxAugment("none", white_balance=0.2)
    levels = np.array([augment(flat, _target(), np.random.default_rng(seed))[0].reshape(-1, 3)
                       for seed in range(12)])  # (draws, pixels, 3)
    assert np.all(levels == levels[:, :1]), "one gain per channel, the same at every pixel"
    per_channel = levels[:, 0].astype(float)
    assert per_channel.min() >= 128 * 0.8 - 1 and per_channel.max() <= 128 * 1.2 + 1
    assert np.ptp(per_channel[:, 0] - per_channel[:, 1]) > 0, "the channels move independently"
    # erasing at chance 1: every draw covers a block of the grey image with one flat colour, the rest untouched
    erased = BoxAugment("none", random_erasing=1.0)(flat, _target(), np.random.default_rng(0))[0]
    changed = np.any(erased != 128, axis=2)
    rows, cols = np.nonzero(changed)
    assert changed.any() and changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert len(np.unique(erased[changed], axis=0)) == 1


def _hue_shifts(preset: str, draws: int = 40) -> np.ndarray:
    """Hue change (degrees, circular) of a flat saturated colour under the preset's colour ops alone."""
    colour_only = dataclasses.replace(PRESETS[preset], affine_degrees=0.0, affine_translate=0.0, affine_scale=(1.0, 1.0),
                                      affine_shear=0.0, flip_prob=0.0, motion_blur_prob=0.0, jpeg_prob=0.0,
                                      occlusion_prob=0.0, color_prob=1.0)
    pipeline = build_pipeline(colour_only)
    rgb = np.array([200, 60, 40], np.uint8)  # a red coat
    hue0 = float(cv2.cvtColor(rgb.reshape(1, 1, 3), cv2.COLOR_RGB2HSV_FULL)[0, 0, 0]) * 360 / 256
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.from_numpy(rgb).view(3, 1, 1).expand(3, 8, 8).contiguous())
    shifts = []
    for _ in range(draws):
        out = pipeline(image)[:, 4, 4].numpy().astype(np.uint8).reshape(1, 1, 3)
        hue = float(cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)[0, 0, 0]) * 360 / 256
        shifts.append(min(abs(hue - hue0), 360 - abs(hue - hue0)))
    return np.array(shifts)


def test_idf_view_colour_keeps_a_persons_hue_where_the_papers_view_shifts_it():
    kept, shifted = _hue_shifts("idf_view_colour"), _hue_shifts("idf_view")
    assert kept.max() < 8.0, kept  # white-balance jitter tints, it does not turn red into orange
    assert shifted.max() > 20.0, shifted  # ColorJitter hue 0.1 moves up to 36 degrees
    base, colour = PRESETS["idf_view"], PRESETS["idf_view_colour"]
    assert (colour.hue, colour.saturation) == (0.0, 0.1)
    assert {k: v for k, v in vars(base).items() if k not in ("hue", "saturation", "channel_gain")} == \
        {k: v for k, v in vars(colour).items() if k not in ("hue", "saturation", "channel_gain")}
