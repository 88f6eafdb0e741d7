"""Re-ID teacher training data: Market-1501-style crops, BoT augmentation, a PK sampler.

The teacher (``kdtrack.models.reid``) is trained as the strong baseline (Luo
et al., "Bag of Tricks", BoT) and fastreid train it: batches of P identities x
K crops each, so that batch-hard triplet mining always finds positives and
negatives; every crop is resized to ``crop_height x crop_width``, flipped with
probability 0.5, zero-padded by 10 pixels and randomly cropped back, then
randomly erased. The network normalises with the ImageNet mean/std itself, so
samples are RGB float32 in [0, 1], shape ``(3, crop_height, crop_width)``.

Determinism: the :class:`PKSampler` draws epoch ``e`` from
``default_rng([seed, e])`` on every rank (each rank keeps its own share), and
the augmentation of the ``j``-th crop of the epoch from
``default_rng([seed, e, j])``, whatever the number of loader processes.
Pure torch / numpy / OpenCV (no Ray).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch

from kdtrack.config import TeacherConfig
from kdtrack.data.dataset import read_image_rgb
from kdtrack.formats.common import MissingFileError, OnError, ReadStats
from kdtrack.formats.market1501 import SPLITS, ReidCrop, read_market1501
from kdtrack.models.reid import IMAGENET_MEAN

MARKET_DIR = "market1501"  # Market-1501 folder under a data root laid out as the synthetic world
TRAIN_SPLIT = "bounding_box_train"
# Random erasing (Zhong et al. 2020, as BoT / fastreid use it): erased area 2-40 % of the crop,
# aspect ratio h/w in [0.3, 1/0.3], up to 100 attempts to fit the rectangle inside the crop.
ERASE_AREA = (0.02, 0.4)
ERASE_MIN_ASPECT = 0.3
ERASE_ATTEMPTS = 100
ERASE_FILL = IMAGENET_MEAN  # fastreid fills with the mean pixel: 0 after the network's normalisation


def market_root(data_root: str | os.PathLike) -> Path:
    """The Market-1501 folder of ``data_root``: ``<root>/market1501`` (the synthetic world's layout),
    or ``data_root`` itself when it holds the split folders (an unpacked ``Market-1501-v15.09.15``)."""
    root = Path(data_root)
    if (root / TRAIN_SPLIT).is_dir() or (root / "query").is_dir():
        return root
    if (root / MARKET_DIR).is_dir():
        return root / MARKET_DIR
    raise MissingFileError(f"{root}: no Market-1501 crops (expected {MARKET_DIR}/ or {', '.join(SPLITS)} in it)")


def read_training_crops(data_root: str | os.PathLike, on_error: OnError = "raise") -> tuple[list[ReidCrop], ReadStats]:
    """The crops of ``bounding_box_train`` that train the teacher: junk (-1) and distractors (0000) left out."""
    return read_market1501(market_root(data_root), TRAIN_SPLIT, keep_junk=False, keep_distractors=False,
                           on_error=on_error)


def contiguous_labels(pids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (N,) int64 in 0..C-1, class_pids (C,) int64)``: pids sorted ascending, class ``c`` is
    ``class_pids[c]``. Junk (-1) and distractor (0) pids are refused: they are not identities."""
    pids = np.asarray(pids, np.int64).reshape(-1)
    if pids.size and pids.min() <= 0:
        raise ValueError(f"training pids must be > 0 (junk -1 and distractors 0 are not identities), "
                         f"got {sorted(set(pids[pids <= 0].tolist()))}")
    class_pids, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int64), class_pids.astype(np.int64)


# --------------------------------------------------------------------------- augmentation


def resize_crop(image_rgb: np.ndarray, cfg: TeacherConfig) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(crop_height, crop_width, 3)`` uint8 (bilinear)."""
    size = (cfg.crop_width, cfg.crop_height)
    if image_rgb.shape[1] == size[0] and image_rgb.shape[0] == size[1]:
        return image_rgb
    return cv2.resize(image_rgb, size, interpolation=cv2.INTER_LINEAR)


def to_tensor(image_rgb: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1).float().div_(255.0)


def random_erase(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Fill one random rectangle of a ``(3, H, W)`` image with :data:`ERASE_FILL` in place (see the
    constants); unchanged when no attempt fits."""
    _, height, width = image.shape
    fill = torch.tensor(ERASE_FILL, dtype=image.dtype).view(3, 1, 1)
    for _ in range(ERASE_ATTEMPTS):
        area = rng.uniform(*ERASE_AREA) * height * width
        aspect = rng.uniform(ERASE_MIN_ASPECT, 1.0 / ERASE_MIN_ASPECT)
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if 0 < h < height and 0 < w < width:
            y = int(rng.integers(0, height - h + 1))
            x = int(rng.integers(0, width - w + 1))
            image[:, y:y + h, x:x + w] = fill
            return image
    return image


def reid_train_transform(image_rgb: np.ndarray, cfg: TeacherConfig, rng: np.random.Generator) -> torch.Tensor:
    """BoT training augmentation: resize, flip (``cfg.flip_prob``), zero-pad ``cfg.pad`` + random crop
    back to the crop size, random erasing (``cfg.random_erasing``). ``(3, H, W)`` float32 in [0, 1]."""
    image = resize_crop(image_rgb, cfg)
    if rng.random() < cfg.flip_prob:
        image = image[:, ::-1]
    if cfg.pad > 0:
        p, (h, w) = cfg.pad, image.shape[:2]
        padded = np.zeros((h + 2 * p, w + 2 * p, 3), np.uint8)
        padded[p:p + h, p:p + w] = image
        y, x = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
        image = padded[y:y + h, x:x + w]
    tensor = to_tensor(image)
    if rng.random() < cfg.random_erasing:
        random_erase(tensor, rng)
    return tensor


def reid_eval_transform(image_rgb: np.ndarray, cfg: TeacherConfig) -> torch.Tensor:
    """Test time: resize only. ``(3, crop_height, crop_width)`` float32 in [0, 1]."""
    return to_tensor(resize_crop(image_rgb, cfg))


# --------------------------------------------------------------------------- dataset and sampler


class ReidCropDataset(torch.utils.data.Dataset):
    """Crops with their class labels; ``dataset[i]`` or ``dataset[(i, draw)]`` (what :class:`PKSampler`
    yields) -> ``{"image": (3, H, W) float32 [0, 1], "label": int64, "index": int64}``.

    ``augment``: BoT augmentation drawn from ``default_rng([seed, epoch, draw])`` (``draw`` defaults to
    ``i``); without it, the test-time resize only.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], cfg: TeacherConfig, *,
                 augment: bool = True, seed: int = 0) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        self.cfg = cfg
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0

    @classmethod
    def from_crops(cls, crops: Sequence[ReidCrop], cfg: TeacherConfig, **kwargs) -> "ReidCropDataset":
        """Labels are the crops' pids made contiguous (:func:`contiguous_labels`)."""
        labels, _ = contiguous_labels([c.pid for c in crops])
        return cls([c.path for c in crops], labels, cfg, **kwargs)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), int(key))
        image = read_image_rgb(self.paths[index])
        if self.augment:
            tensor = reid_train_transform(image, self.cfg, np.random.default_rng([self.seed, self.epoch, draw]))
        else:
            tensor = reid_eval_transform(image, self.cfg)
        return {"image": tensor, "label": torch.tensor(self.labels[index]), "index": torch.tensor(index)}


class PKSampler(torch.utils.data.Sampler):
    """Batches of ``p`` distinct identities x ``k`` crops each, for one rank of ``world_size``.

    An epoch is drawn from ``default_rng([seed, epoch])`` identically on every rank: each identity's
    crops are shuffled and cut into chunks of ``k`` (a remainder is dropped; an identity with fewer
    than ``k`` crops gives one chunk drawn with replacement); batches take one chunk from each of
    ``p`` identities drawn uniformly among those with chunks left (BoT's RandomIdentitySampler);
    when fewer than ``p`` have chunks left the batch is topped up with fresh chunks of other
    identities. The epoch has ``B = (chunks // p // world_size) * world_size`` batches (at least
    ``world_size``), so the length is known in advance and equal on every rank; rank ``r`` takes
    batches ``r, r + world_size, ...`` (disjoint shares).

    Yields lists of ``(crop index, draw)`` pairs, ``draw`` = the slot's position in the epoch (all
    ranks), the key of the crop's augmentation draw (a crop drawn twice is augmented twice).
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        if p < 1 or k < 1:
            raise ValueError(f"PK sampler needs p >= 1 and k >= 1, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.classes = np.unique(self.labels)
        if len(self.classes) < p:
            raise ValueError(f"PK sampler: {len(self.classes)} identities cannot fill a batch of p={p} distinct ones")
        self.p, self.k = int(p), int(k)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.members = [np.flatnonzero(self.labels == c) for c in self.classes]
        chunks = sum(max(1, len(m) // self.k) for m in self.members)
        self.num_batches = max(1, chunks // self.p // self.world_size) * self.world_size  # all ranks

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches of this rank per epoch."""
        return self.num_batches // self.world_size

    def _fresh_chunk(self, rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
        return rng.choice(members, self.k, replace=len(members) < self.k)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """``(B, p * k)`` crop indices of every rank's batches of ``epoch`` (identity-major inside a batch)."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        chunks: list[list[np.ndarray]] = []
        for members in self.members:
            if len(members) < self.k:
                chunks.append([self._fresh_chunk(rng, members)])
            else:
                perm = rng.permutation(members)
                n = len(perm) // self.k
                chunks.append(list(perm[:n * self.k].reshape(n, self.k)))
        left = np.array([len(c) for c in chunks])
        batches = np.empty((self.num_batches, self.p * self.k), np.int64)
        all_ids = np.arange(len(self.members))
        for b in range(self.num_batches):
            available = all_ids[left > 0]
            if len(available) >= self.p:
                chosen = rng.choice(available, self.p, replace=False)
            else:
                others = rng.choice(all_ids[left == 0], self.p - len(available), replace=False)
                chosen = np.concatenate([rng.permutation(available), others])
            parts = []
            for c in chosen:
                if left[c] > 0:
                    left[c] -= 1
                    parts.append(chunks[c][left[c]])
                else:
                    parts.append(self._fresh_chunk(rng, self.members[c]))
            batches[b] = np.concatenate(parts)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.epoch_batches(self.epoch)
        size = self.p * self.k
        for b in range(self.rank, self.num_batches, self.world_size):
            yield [(int(i), b * size + j) for j, i in enumerate(batches[b])]


class PKBatches:
    """Every rank's P x K batches of an epoch as items (the teacher's Ray Data stream maps these):
    ``sample_at(epoch, b)`` is batch ``b`` of ``epoch`` — the crops :class:`PKSampler` puts there, with the
    same augmentation draws, collated as the ``DataLoader`` over the sampler collates them."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], cfg: TeacherConfig, *, p: int, k: int,
                 seed: int = 0, world_size: int = 1) -> None:
        self.dataset = ReidCropDataset(paths, labels, cfg, augment=True, seed=seed)
        self.sampler = PKSampler(labels, p, k, seed=seed, world_size=world_size)
        self._epoch: int | None = None
        self._batches = np.empty((0, 0), np.int64)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def sample_at(self, epoch: int, b: int) -> dict[str, torch.Tensor]:
        if self._epoch != epoch:
            self._batches, self._epoch = self.sampler.epoch_batches(epoch), int(epoch)
        self.dataset.set_epoch(epoch)
        size = self._batches.shape[1]
        crops = [self.dataset[(int(i), int(b) * size + j)] for j, i in enumerate(self._batches[int(b)])]
        return torch.utils.data.default_collate(crops)


class PKFeed:
    """A worker's share of the P x K batches through a ``DataLoader`` (the teacher recipe with
    ``data.loader: torch``): a ``kdtrack.data.dataset.Feed``. Teacher checkpoints fall after whole epochs, so an
    epoch always starts from its first batch (``skip`` is not read)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], cfg: TeacherConfig, *, seed: int, rank: int,
                 world_size: int, loader_workers: int = 0, pin_memory: bool = False) -> None:
        self.dataset = ReidCropDataset(paths, labels, cfg, augment=True, seed=seed)
        self.sampler = PKSampler(self.dataset.labels, cfg.train_p, cfg.train_k, seed=seed, rank=rank,
                                 world_size=world_size)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler,
                                                  num_workers=loader_workers, pin_memory=pin_memory)

    @property
    def per_epoch(self) -> int:
        return len(self.sampler)

    def epoch_batches(self, epoch: int, iteration: int, skip: int) -> torch.utils.data.DataLoader:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        return self.loader
