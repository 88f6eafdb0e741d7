"""Re-ID teacher data: PK sampler, BoT augmentation, contiguous labels, Market crops of the tiny world."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kdtrack.config import TeacherConfig
from kdtrack.formats.market1501 import crop_name
from kdtrack.data.reid_data import (
    ERASE_FILL, PKSampler, ReidCropDataset, contiguous_labels, market_root, random_erase, read_training_crops,
    reid_eval_transform, reid_train_transform,
)

CFG = TeacherConfig(crop_height=32, crop_width=16, pad=2)


def _ids(sampler: PKSampler, labels: np.ndarray) -> list[list[int]]:
    return [[labels[i] for i, _ in batch] for batch in sampler]


def test_pk_batches_hold_p_distinct_ids_with_k_crops_each():
    # 10 identities with 1..10 crops: ids 0-2 have fewer than K=4 crops (drawn with replacement).
    labels = np.repeat(np.arange(10), np.arange(1, 11))
    sampler = PKSampler(labels, p=3, k=4, seed=1)
    # chunks: max(1, n // 4) for n = 1..10 -> 1,1,1,1,1,1,1,2,2,2 = 13; 13 // 3 = 4 batches
    assert len(sampler) == 4
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = _ids(sampler, labels)
        assert len(batches) == 4
        for ids in batches:
            counts = Counter(ids)
            assert len(counts) == 3 and set(counts.values()) == {4}
    # every slot of an epoch has its own augmentation key
    draws = [d for batch in sampler for _, d in batch]
    assert draws == list(range(4 * 12))


def test_pk_sampler_is_a_function_of_seed_and_epoch():
    labels = np.repeat(np.arange(8), 6)
    a, b = PKSampler(labels, 4, 2, seed=3), PKSampler(labels, 4, 2, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)  # each epoch reshuffles
    assert not np.array_equal(PKSampler(labels, 4, 2, seed=4).epoch_batches(2), a.epoch_batches(2))
    # without replacement (every id has a multiple of K crops) an epoch visits each crop at most once
    flat = a.epoch_batches(2).ravel()
    assert len(set(flat.tolist())) == len(flat) == 6 * 4 * 2  # 24 chunks // 4 = 6 batches of 8


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    labels = np.repeat(np.arange(12), 4)  # 12 chunks of K=4, P=2 -> 6 batches; 3 ranks -> 2 each
    shards = [PKSampler(labels, 2, 4, seed=0, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(5)
    batches = [list(s) for s in shards]
    assert [len(b) for b in batches] == [2, 2, 2] == [len(s) for s in shards]
    crops = [i for shard in batches for batch in shard for i, _ in batch]
    assert sorted(crops) == list(range(48))  # disjoint, and together the whole epoch
    draws = [d for shard in batches for batch in shard for _, d in batch]
    assert sorted(draws) == list(range(48))
    # an uneven count is cut to a multiple of the world size: 13 chunks // 2 = 6 batches -> 3 ranks x 2
    assert len(PKSampler(np.repeat(np.arange(13), 4), 2, 4, rank=2, world_size=3)) == 2


def test_pk_sampler_refuses_too_few_identities():
    with pytest.raises(ValueError, match="3 identities"):
        PKSampler(np.arange(3), p=4, k=2)


def test_contiguous_labels():
    labels, class_pids = contiguous_labels([7, 3, 7, 12, 3])
    assert labels.tolist() == [1, 0, 1, 2, 0] and class_pids.tolist() == [3, 7, 12]
    with pytest.raises(ValueError, match="junk -1"):
        contiguous_labels([1, -1])
    with pytest.raises(ValueError, match="> 0"):
        contiguous_labels([0, 2])


def test_train_transform_shape_range_and_determinism():
    rng = np.random.default_rng(0)
    image = (rng.random((50, 23, 3)) * 255).astype(np.uint8)  # any size: resized to 32 x 16
    out = reid_train_transform(image, CFG, np.random.default_rng([0, 1, 2]))
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(out, reid_train_transform(image, CFG, np.random.default_rng([0, 1, 2])))
    plain = reid_eval_transform(image, CFG)
    assert plain.shape == (3, 32, 16)
    expected = cv2.resize(image, (16, 32), interpolation=cv2.INTER_LINEAR)
    assert torch.allclose(plain, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    # with every augmentation off the training transform is the eval transform
    off = TeacherConfig(crop_height=32, crop_width=16, pad=0, flip_prob=0.0, random_erasing=0.0)
    assert torch.equal(reid_train_transform(image, off, np.random.default_rng(0)), plain)
    # flip only: exactly the mirror image
    flip = TeacherConfig(crop_height=32, crop_width=16, pad=0, flip_prob=1.0, random_erasing=0.0)
    assert torch.equal(reid_train_transform(image, flip, np.random.default_rng(0)), plain.flip(-1))


def test_pad_crop_shifts_by_at_most_pad_and_fills_with_zeros():
    image = np.full((32, 16, 3), 255, np.uint8)
    cfg = TeacherConfig(crop_height=32, crop_width=16, pad=4, flip_prob=0.0, random_erasing=0.0)
    zero_rows = set()
    for seed in range(30):
        out = reid_train_transform(image, cfg, np.random.default_rng(seed))
        black = (out == 0).all(dim=0)
        # the zero border is at most `pad` rows / columns wide on one side
        assert int(black.all(dim=1).sum()) <= 4 and int(black.all(dim=0).sum()) <= 4
        zero_rows.add(int(black.all(dim=1).sum()))
    assert len(zero_rows) > 1  # the offset varies


def test_random_erasing_fills_a_rectangle_with_the_mean_pixel():
    image = torch.ones(3, 64, 32)
    random_erase(image, np.random.default_rng(0))
    erased = (image != 1).any(dim=0)
    rows, cols = torch.nonzero(erased, as_tuple=True)
    area = int(erased.sum())
    assert area == (int(rows.max()) - int(rows.min()) + 1) * (int(cols.max()) - int(cols.min()) + 1)  # a rectangle
    assert 0.02 * 64 * 32 * 0.8 <= area <= 0.4 * 64 * 32 * 1.2
    assert torch.allclose(image[:, rows[0], cols[0]], torch.tensor(ERASE_FILL))


def _write_crops(folder: Path, pids_cams: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, (pid, cam) in enumerate(pids_cams):
        cv2.imwrite(str(folder / crop_name(pid, cam, 1, k, 1)), (rng.random((40, 20, 3)) * 255).astype(np.uint8))


def test_dataset_reads_training_crops_with_contiguous_labels(tmp_path):
    _write_crops(tmp_path / "market1501" / "bounding_box_train", [(5, 1), (5, 2), (9, 1), (0, 1), (-1, 2), (2, 3)])
    crops, stats = read_training_crops(tmp_path)
    assert [c.pid for c in crops] == [2, 5, 5, 9]  # sorted by name; junk and distractor left out
    assert stats.filtered_records == 2
    assert market_root(tmp_path / "market1501") == tmp_path / "market1501"  # an unpacked Market root works too
    ds = ReidCropDataset.from_crops(crops, CFG, augment=True, seed=0)
    assert ds.num_classes == 3 and ds.labels.tolist() == [0, 1, 1, 2]
    sample = ds[(1, 7)]
    assert sample["image"].shape == (3, 32, 16) and int(sample["label"]) == 1 and int(sample["index"]) == 1
    assert torch.equal(sample["image"], ds[(1, 7)]["image"])
    ds.set_epoch(1)
    assert not torch.equal(sample["image"], ds[(1, 7)]["image"])  # redrawn each epoch
    loader = torch.utils.data.DataLoader(ds, batch_sampler=PKSampler(ds.labels, 2, 2))
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 16) and batch["label"].shape == (4,)
