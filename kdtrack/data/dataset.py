"""Training samples: read an annotated image, augment (one or two views), letterbox, encode targets.

A sample is a dict of numpy arrays, each with a leading VIEW axis ``V`` (1, or
2 for the contrastive recipe): ``image (V, 3, H, W)`` float32 RGB in [0, 1]
on the network canvas, then every ``encode_targets`` key (``heatmap (V,1,h,w)``,
``index (V,K)``, ...). Two replacements make the targets self-describing:

- ``box_index (V, K)`` is the ORIGINAL annotation row of each slot's box
  (-1 for empty slots), carried through augmentation;
- ``ids (V, K)`` are, for the contrastive recipe, globally unique person keys
  ``uid(image) << 16 | original row`` (the same person has the same key in
  both views and no other image can produce it), else the dataset ids.

``with_original=True`` (KD) adds ``orig_image (V, 3, H, W)``, the letterboxed
UN-augmented image, and ``teacher_boxes_xyxy (V, K, 4)``, the original box of
each slot on that canvas: teacher crops are cut there, aligned slot by slot.

``collate`` stacks view 0 of every sample, then view 1: a batch of B two-view
samples is ``2B`` images whose person keys pair up across the halves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Protocol, Sequence

import cv2
import numpy as np
import torch

from kdtrack.config import Config
from kdtrack.formats.mot import DETECTOR_SUFFIXES as MOT_DETECTOR_SUFFIXES  # noqa: F401  (re-exported)
from kdtrack.formats.mot import dedupe_detector_copies
from kdtrack.data.letterbox import student_canvas
from kdtrack.structures import POLYGONS_KEY, ImageRecord
from kdtrack.data.targets import SLOT_KEYS, encode_targets, person_keys
from kdtrack.data.teacher_store import attach_stored_targets, read_teacher_table
from kdtrack.data.transforms import BoxAugment, PersonJitter, paste_people
from kdtrack.data.uint8_canvas import CANVAS_KEYS, GREY, GREY_LEVEL, GREY_SUFFIX, pack_grey, split_canvases

UID_BITS = 46  # person_keys allows image uids below 2**(62 - 16)
KNOWN_SOURCES = ("crowdhuman", "coco", "mot17", "person_search")
PERSON_SEARCH_TRAIN_SPLIT = "train"  # the only person-search split a trainer reads: val / test people stay held out
SLOT_AXIS_KEYS = SLOT_KEYS + ("teacher_boxes_xyxy", "teacher")  # keys whose axis after (batch) is the slot axis K


def augment_preset(cfg: Config) -> str:
    """``data.augment``; ``"auto"`` picks IDF's view transforms for contrastive, FairMOT's otherwise."""
    if cfg.data.augment != "auto":
        return cfg.data.augment
    return "idf_view" if cfg.loss.contrasts_people else "detection"


def build_augment(cfg: Config) -> BoxAugment:
    return BoxAugment(
        augment_preset(cfg), min_box_size=cfg.data.min_box_size, min_visible_fraction=cfg.data.min_visible_fraction,
        white_balance=cfg.data.white_balance, random_erasing=cfg.data.random_erasing,
    )


def image_uid(record: ImageRecord) -> int:
    """Stable 46-bit id of an image from ``source/image_id`` (or its path): the same on every worker."""
    name = f"{record.source}/{record.image_id or record.image_path}"
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << UID_BITS) - 1)


def read_image_rgb(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; an unreadable file or a size that differs from the annotation names the path."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"{path}: cannot read image (missing or not a decodable image file)")
    if expected_size is not None:
        w, h = expected_size
        if bgr.shape[1] != w or bgr.shape[0] != h:
            raise ValueError(f"{path}: image is {bgr.shape[1]}x{bgr.shape[0]} but its annotation says {w}x{h}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def instance_map(polygons: Sequence[Any], height: int, width: int) -> np.ndarray:
    """``(height, width)`` int32: ``j + 1`` on the pixels inside box ``j``'s outline polygons (later boxes drawn
    over earlier ones), 0 elsewhere and for boxes without polygons (None)."""
    out = np.zeros((height, width), np.int32)
    for j, person in enumerate(polygons):
        if person is not None and len(person):
            cv2.fillPoly(out, [np.round(np.asarray(p, np.float64)).astype(np.int32).reshape(-1, 2) for p in person],
                         int(j + 1))
    return out


def encode_view(
    image: np.ndarray,
    target: dict[str, np.ndarray],
    source: str,
    cfg: Config,
    keys: np.ndarray | None,
    original: tuple[np.ndarray, np.ndarray] | None,
    short_side: int | None = None,
) -> dict[str, np.ndarray]:
    """Canvas + targets of one view: letterboxed to ``model.input_width x input_height``, or with
    ``short_side`` (multi-scale) resized and padded by ``resize_pad`` to a per-sample size."""
    m = cfg.model
    canvas, tf = student_canvas(image, cfg, short_side)
    boxes = tf.boxes_to_letterbox(target["boxes_xyxy"])
    ignore = tf.boxes_to_letterbox(target["ignore_boxes_xyxy"])
    rows = target["box_index"]
    ids = keys[rows] if keys is not None else target["ids"]
    enc = encode_targets(
        boxes, ids, ignore, canvas.shape[1:], down_ratio=m.down_ratio,
        size_channels=m.size_channels, max_objects=cfg.loss.max_objects, min_overlap=cfg.loss.min_overlap,
        centre_region_radius=cfg.loss.centre_region_radius, source=source,
    )
    out = {k: v.numpy() for k, v in enc.items()}
    slot_rows = out["box_index"]  # row in the augmented list (-1 empty) -> original annotation row
    filled = slot_rows >= 0
    out["box_index"] = np.where(filled, rows[np.maximum(slot_rows, 0)] if len(rows) else -1, -1).astype(np.int64)
    out["image"] = canvas
    if original is not None:
        orig_canvas, orig_boxes = original
        tb = np.zeros((cfg.loss.max_objects, 4), np.float32)
        tb[filled] = orig_boxes[out["box_index"][filled]]
        out["orig_image"] = orig_canvas
        out["teacher_boxes_xyxy"] = tb
    return out


def training_sample(
    record: ImageRecord,
    cfg: Config,
    rng: np.random.Generator,
    *,
    views: int = 1,
    with_original: bool = False,
    augment: BoxAugment | None = None,
    partners: Sequence[ImageRecord] = (),
) -> dict[str, np.ndarray]:
    """One training sample of ``record`` (see the module docstring for the keys and shapes).

    With ``data.background_swap`` > 0 and ``partners`` given, each view (or only the last one, with
    ``data.background_swap_views: last``), with that probability, has its people pasted onto another
    record's image drawn from ``partners`` (``paste_people``): the view's people keep their keys,
    their surroundings change.

    With ``data.multiscale_short_sides`` set, one shorter side is drawn from it with ``rng``
    (after the views' generators are spawned, so the augmentation draws are the same as without
    it) and every canvas of the sample (each view, ``orig_image``) gets that size.
    """
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    augment = augment or build_augment(cfg)
    image = read_image_rgb(record.image_path, (record.width, record.height))
    target = {
        "boxes_xyxy": record.boxes_xyxy,
        "box_index": np.arange(record.num_boxes, dtype=np.int64),
        "ids": record.ids,
        "ignore_boxes_xyxy": record.ignore_boxes_xyxy,
    }
    if cfg.data.paste_masks and cfg.data.background_swap > 0 and POLYGONS_KEY in record.extra:
        target["instance_map"] = instance_map(record.extra[POLYGONS_KEY], record.height, record.width)
    keys = person_keys(image_uid(record), record.num_boxes) if cfg.loss.contrasts_people else None
    view_rngs = rng.spawn(views)
    sides = cfg.data.multiscale_short_sides
    short_side = int(sides[int(rng.integers(len(sides)))]) if sides else None
    original = None
    if with_original:
        orig_canvas, tf = student_canvas(image, cfg, short_side)
        original = (orig_canvas, tf.boxes_to_letterbox(record.boxes_xyxy))
    swappable = range(views) if cfg.data.background_swap_views == "all" else range(views - 1, views)
    per_view = [
        encode_view(*_view(image, target, view_rng, augment, cfg, partners if v in swappable else ()),
                    record.image_path, cfg, keys, original, short_side)
        for v, view_rng in enumerate(view_rngs)
    ]
    return {k: np.stack([v[k] for v in per_view]) for k in per_view[0]}


def _view(image: np.ndarray, target: dict[str, np.ndarray], rng: np.random.Generator, augment: BoxAugment,
          cfg: Config, partners: Sequence[ImageRecord]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One augmented view; then, with probability ``data.background_swap``, its people on another
    image (drawn after the augmentation, so that without a swap the draws are those of before)."""

    def draw_partner(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        partner = partners[int(rng.integers(len(partners)))]
        background = read_image_rgb(partner.image_path, (partner.width, partner.height))
        return background, np.concatenate([partner.boxes_xyxy.reshape(-1, 4), partner.ignore_boxes_xyxy.reshape(-1, 4)])

    return swap_background(augment(image, target, rng), rng, cfg, draw_partner if partners else None)


def swap_background(view: tuple[np.ndarray, dict[str, np.ndarray]], rng: np.random.Generator, cfg: Config,
                    draw_partner: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]] | None,
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """With probability ``data.background_swap``, a view's people pasted onto the image that
    ``draw_partner(rng)`` returns with the boxes of its own people (``paste_people``; moved to random
    places with ``data.background_relayout``). Image samples and video frame pairs share this."""
    swap = cfg.data.background_swap
    if swap > 0 and draw_partner is not None and rng.random() < swap:
        background, people = draw_partner(rng)
        view = paste_people(*view, background, people, rng=rng if cfg.data.background_relayout else None,
                            jitter=person_jitter(cfg))
    return view


def person_jitter(cfg: Config) -> PersonJitter | None:
    """``data.paste_scale`` / ``paste_flip`` / ``paste_erase`` as the jitter of each pasted person (None: off)."""
    d = cfg.data
    jitter = PersonJitter(scale=tuple(float(x) for x in d.paste_scale), flip=d.paste_flip, erase=d.paste_erase)
    return jitter if jitter.active else None


def collate(samples: Sequence[dict[str, Any]], trim: bool = True, uint8: bool = False) -> dict[str, torch.Tensor]:
    """``(V, ...)`` samples -> ``(V * B, ...)`` tensors, all view-0 images first, then view 1.

    A canvas (``image``, ``orig_image``) may be a float32 array or a ``Uint8Canvas`` (as the Ray Data stream
    delivers it). By default it is collated as float32; with ``uint8`` (the feeds) as uint8 levels plus its
    ``<key>_grey`` bits, which the train step turns into the same float32 canvas on the device
    (``kdtrack.data.uint8_canvas``); a canvas that cannot be held exactly keeps the batch's key float32.

    With ``trim`` the slot axis K is cut to the most objects of any image in the
    batch (objects sit at the front of the slots, so nothing is lost).

    Samples of different canvas sizes (multi-scale training) are padded at the right and
    bottom to the batch's largest H and W: ``image``/``orig_image`` with the letterbox grey,
    ``heatmap``/``ignore`` with zeros (background: no centre, not ignored), and the flat
    ``y * w + x`` cell indices ``index``/``region_index`` re-addressed for the padded
    output width (the same cell, so every box still points at its own heatmap peak). Boxes
    (``teacher_boxes_xyxy``) and sizes are in pixels from the top-left corner: unchanged.
    Samples of one size are stacked untouched.
    """
    if not samples:
        raise ValueError("collate: empty list of samples")
    samples = split_canvases(list(samples), uint8)
    keys = set(samples[0])
    views = samples[0]["image"].shape[0]
    batch: dict[str, torch.Tensor] = {}
    for j, s in enumerate(samples):
        if set(s) != keys or s["image"].shape[0] != views:
            raise ValueError(f"collate: sample {j} has keys/views {sorted(s)}/{s['image'].shape[0]}, "
                             f"expected {sorted(keys)}/{views}")
    if len({s["image"].shape[-2:] for s in samples}) > 1:
        height = max(s["image"].shape[-2] for s in samples)
        width = max(s["image"].shape[-1] for s in samples)
        samples = [_pad_sample(s, height, width) for s in samples]
        for k in samples[0]:
            if len({s[k].shape for s in samples}) > 1:
                raise ValueError(f"collate: key '{k}' has shapes {sorted({s[k].shape for s in samples})} "
                                 "that padding the canvases does not reconcile")
    for k in samples[0]:
        stacked = np.stack([s[k] for s in samples], axis=1)  # (V, B, ...)
        stacked = stacked.reshape(-1, *stacked.shape[2:])
        batch[k] = torch.from_numpy(np.ascontiguousarray(pack_grey(stacked) if k.endswith(GREY_SUFFIX) else stacked))
    if trim:
        n = max(int(batch["mask"].sum(1).max()), 1)
        for k in SLOT_AXIS_KEYS:
            if k in batch:
                batch[k] = batch[k][:, :n].contiguous()
    return batch


def _pad_sample(sample: dict[str, np.ndarray], height: int, width: int) -> dict[str, np.ndarray]:
    """One sample's canvases padded right/bottom to ``height x width`` (see :func:`collate`)."""
    h_in, w_in = sample["image"].shape[-2:]
    h_map, w_map = sample["heatmap"].shape[-2:]
    if h_in % h_map or w_in % w_map or h_in // h_map != w_in // w_map:
        raise ValueError(f"collate: image {h_in}x{w_in} and heatmap {h_map}x{w_map} do not share a stride")
    stride = h_in // h_map
    if height % stride or width % stride:
        raise ValueError(f"collate: padded canvas {height}x{width} is not a multiple of the stride {stride}")
    pads = {"heatmap": (height // stride, width // stride, 0), "ignore": (height // stride, width // stride, 0)}
    for k in CANVAS_KEYS:  # the grey: a float value, or (uint8) any level under a set grey bit
        pads[k] = (height, width, GREY_LEVEL if sample.get(k, np.empty(0)).dtype == np.uint8 else np.float32(GREY))
        pads[k + GREY_SUFFIX] = (height, width, True)
    out = dict(sample)
    for k, (h, w, value) in pads.items():
        if k in out:
            a = out[k]
            spec = [(0, 0)] * (a.ndim - 2) + [(0, h - a.shape[-2]), (0, w - a.shape[-1])]
            out[k] = np.pad(a, spec, constant_values=value)
    w_out = width // stride
    for k in ("index", "region_index"):
        if k in out:
            out[k] = (out[k] // w_map) * w_out + out[k] % w_map
    return out


class EpochSeededDataset(torch.utils.data.Dataset):
    """Map-style dataset whose sample ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``: new
    augmentations every epoch, the same ones on any worker and on a rerun. Subclasses define ``sample``."""

    def __init__(self, items: Sequence[Any], cfg: Config) -> None:
        self.items = list(items)
        self.cfg = cfg
        self.augment = build_augment(cfg)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.sample_at(self.epoch, i)

    def sample_at(self, epoch: int, i: int) -> dict[str, np.ndarray]:
        """Item ``i``'s sample of ``epoch``: the torch path (``__getitem__``) and the Ray Data stream
        (``data_pipelines.training``) draw through here, so both give the same augmentations."""
        return self.sample(self.items[i], np.random.default_rng([self.cfg.train.seed, int(epoch), int(i)]))

    def sample(self, item: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError


class SkipFirstSampler(torch.utils.data.Sampler):
    """The wrapped sampler's order with its first ``skip`` indices left out, for one epoch: a resume from a
    checkpoint taken inside an epoch (``train.report_every``) continues that epoch where it stopped, with
    the same samples and, the draws being seeded by (seed, epoch, record), the same augmentations."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int = 0):
        self.sampler, self.skip = sampler, max(0, int(skip))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class Feed(Protocol):
    """What the training loop asks of its data, whichever feeds it: the Ray Data stream
    (``data_pipelines.training.WorkerStream``), a ``DataLoader`` over image records or clips
    (:class:`TorchFeed`) or over P x K re-ID batches (``kdtrack.data.reid_data.PKFeed``). A stream also
    counts the unreadable items it skipped (``bad_counts()``)."""

    @property
    def per_epoch(self) -> int:
        """Batches per epoch on this rank."""
        ...

    def epoch_batches(self, epoch: int, iteration: int, skip: int) -> Iterable[Any]:
        """The batches left in ``epoch`` after its first ``skip`` (a resume inside an epoch), the run at
        global ``iteration``."""
        ...


def feed_collate(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """A feed's collate: canvases as uint8 (the train step makes them float32 on its device)."""
    return collate(samples, uint8=True)


class TorchFeed:
    """A worker's batches from a plain ``DataLoader`` over its rank-strided shard (``data.loader: torch``,
    the single-process debug path): a :class:`Feed`. Its batches carry uint8 canvases (:func:`feed_collate`),
    in pinned memory with ``pin_memory`` (a CUDA worker), as the Ray Data stream's do."""

    def __init__(self, dataset: EpochSeededDataset, cfg: Config, rank: int, world: int,
                 pin_memory: bool = False) -> None:
        from torch.utils.data import DataLoader, DistributedSampler

        self.dataset = dataset
        self.sampler = SkipFirstSampler(DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                           seed=cfg.train.seed, drop_last=True))
        self.loader = DataLoader(dataset, batch_size=cfg.train.batch_size_per_worker, sampler=self.sampler,
                                 collate_fn=feed_collate, num_workers=cfg.data.loader_workers, drop_last=True,
                                 pin_memory=pin_memory)
        if len(self.loader) == 0:
            raise ValueError(f"{len(dataset)} samples on {world} worker(s) do not fill one batch of "
                             f"{cfg.train.batch_size_per_worker}")

    @property
    def per_epoch(self) -> int:
        return len(self.loader)

    def epoch_batches(self, epoch: int, iteration: int, skip: int):
        """The batches left in ``epoch`` after the first ``skip`` (a resume inside an epoch)."""
        self.sampler.skip = skip
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        return iter(self.loader)


class TrainingDataset(EpochSeededDataset):
    """Image records: one view (detection, KD) or two augmented views (IDF stage 1) per sample."""

    def __init__(self, records: Sequence[ImageRecord], cfg: Config, *, views: int = 1,
                 with_original: bool = False, teacher_store: str = "") -> None:
        super().__init__(records, cfg)
        self.views = views
        self.with_original = with_original
        # KD from offline teacher embeddings (kdtrack.data.teacher_store): each sample carries its targets
        # ``teacher (V, K, D)`` instead of the un-augmented canvas the online teacher would crop
        self.teacher_store = teacher_store
        self._table: Any = None

    @property
    def records(self) -> list[ImageRecord]:
        return self.items

    def sample(self, item: ImageRecord, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if not self.teacher_store:
            return training_sample(item, self.cfg, rng, views=self.views, with_original=self.with_original,
                                   augment=self.augment, partners=self.items)
        if self._table is None:  # read once per process (a DataLoader worker or a Ray Data decode actor)
            self._table = read_teacher_table(self.teacher_store)
        sample = training_sample(item, self.cfg, rng, views=self.views, augment=self.augment, partners=self.items)
        attach_stored_targets(sample, self._table.image_rows(item))
        return sample


# Moved to kdtrack.formats.mot (public: dedupe_detector_copies); the old private name stays for external importers.
_dedupe_mot_copies = dedupe_detector_copies


def load_records_with_stats(cfg: Config) -> tuple[list[ImageRecord], dict[str, Any]]:
    """Records of every ``cfg.data.sources`` under ``cfg.data.root`` and the readers' stats per source.

    crowdhuman: ``crowdhuman/annotation_train.odgt`` + ``Images/``; coco: ``coco/annotations/
    instances_train2017.json`` + ``train2017/``; mot17: ``MOT17/train/<SEQ>`` (``data.mot_split``);
    person_search: the train split of ``person_search/manifest.json`` (CUHK-SYSU / PRW converted by
    ``kdtrack.formats.person_search``), every box, pids as ids.
    """
    from kdtrack.formats import coco, crowdhuman, mot
    from kdtrack.formats import person_search as ps
    from kdtrack.formats.common import ReadStats

    if not cfg.data.root:
        raise ValueError("data.root is empty: pass --data-root (e.g. a world made by jobs.generate_synth)")
    root = Path(cfg.data.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a directory")
    records: list[ImageRecord] = []
    stats: dict[str, Any] = {}
    for source in cfg.data.sources:
        if source == "crowdhuman":
            recs, st = crowdhuman.read_crowdhuman(
                root / "crowdhuman" / "annotation_train.odgt", root / "crowdhuman" / "Images",
                on_error=cfg.data.on_error)
        elif source == "coco":
            recs, st = coco.read_coco_persons(
                root / "coco" / "annotations" / "instances_train2017.json", root / "coco" / "train2017",
                on_error=cfg.data.on_error)
        elif source == "mot17":
            recs, st = [], None
            for seq in dedupe_detector_copies(mot.list_sequences(root / "MOT17" / "train")):
                _, seq_recs, seq_st = mot.read_mot_sequence_with_stats(
                    seq, split=cfg.data.mot_split, min_visibility=cfg.data.min_visibility,
                    on_error=cfg.data.on_error)
                recs.extend(seq_recs)
                st = seq_st if st is None else st.merge(seq_st)
        elif source == "person_search":
            st = ReadStats()
            recs = ps.read_manifest(root / "person_search" / ps.MANIFEST_NAME).image_records(
                PERSON_SEARCH_TRAIN_SPLIT, st)
        else:
            raise ValueError(f"data.sources: '{source}' has no boxes for this trainer (known: {', '.join(KNOWN_SOURCES)})")
        records.extend(recs)
        stats[source] = st
    if cfg.data.max_records > 0:
        records = records[: cfg.data.max_records]
    return records, stats


def person_key(source: str, sequence: str, pid: int) -> tuple:
    """The class of a labelled box in :func:`dataset_wide_ids`: its dataset, sequence and id."""
    return source, sequence, pid


def dataset_wide_ids(records: Sequence[ImageRecord],
                     key: Callable[[str, str, int], Hashable] = person_key) -> tuple[list[ImageRecord], int]:
    """``(records with class ids, number of classes)``: KD's hard labels (``loss.eta < 1``) need one class
    per person over the whole training set, but MOT17 track ids restart in every sequence (track 1 of
    MOT17-02 is not track 1 of MOT17-04) and each dataset numbers its own people. Every labelled
    ``(source, sequence, id)`` becomes one class ``0..C-1`` (first-seen order of ``key``; a bench may class
    people otherwise); unlabelled boxes stay ``UNKNOWN_ID``."""
    from dataclasses import replace

    from kdtrack.structures import UNKNOWN_ID

    classes: dict[Hashable, int] = {}
    out = []
    for record in records:
        group = str(record.extra.get("sequence", "")) if record.extra else ""
        ids = np.full(len(record.ids), UNKNOWN_ID, np.int64)
        for j, pid in enumerate(record.ids.tolist()):
            if pid >= 0:
                ids[j] = classes.setdefault(key(record.source, group, int(pid)), len(classes))
        out.append(replace(record, ids=ids))
    return out, len(classes)


def load_records(cfg: Config) -> list[ImageRecord]:
    """See :func:`load_records_with_stats`."""
    return load_records_with_stats(cfg)[0]
