"""Person-search data (CUHK-SYSU, PRW) as one plain JSON manifest, plus converters from the real ``.mat`` files.

Manifest ``<root>/manifest.json`` (images in ``<root>/<image_dir>/``, ``image_dir``
defaults to ``images``; converters of the real datasets set it to the absolute
image folder)::

    {"format": "kdtrack-person-search-v1", "name": str, "protocol": "cuhk" | "prw",
     "images": [{"file_name", "width", "height", "camera": int, "split": "train" | "val" | "test",
                 "boxes_xywh": [[x, y, w, h], ...], "pids": [int, ...]}],
     "queries": [{"pid", "file_name", "box_xywh", "galleries": {"<size>": [file_name, ...]}}],
     "val_queries": [same as queries]}  # optional, written only when there are any

pid ``-1`` is an unlabeled person, camera ``-1`` unknown (CUHK-SYSU has none).
``queries`` are the test queries (as in every earlier manifest): their images
and galleries are test images. ``val_queries`` (a validation split, e.g. the
synthetic world's) live on val images with val galleries, so model selection
never touches the test set; :meth:`PersonSearchManifest.queries_of` gives the
queries of a split. Under protocol "prw" an empty ``galleries`` means the PRW
rule: every image of the query's split except its own
(:meth:`PersonSearchManifest.gallery`).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from kdtrack.boxes import xywh_to_xyxy, xyxy_to_xywh
from kdtrack.formats.common import (
    FormatError,
    MissingFileError,
    ReadStats,
    file_exists,
    image_size,
    sanitize_boxes_xyxy,
    where,
)
from kdtrack.io import atomic_write_json
from kdtrack.structures import ImageRecord

MANIFEST_FORMAT = "kdtrack-person-search-v1"
MANIFEST_NAME = "manifest.json"
DEFAULT_IMAGE_DIR = "images"
PROTOCOLS = ("cuhk", "prw")
SPLITS = ("train", "val", "test")  # image splits a manifest may hold
QUERY_SPLITS = ("val", "test")  # splits with queries: "val" -> val_queries, "test" -> queries
PRW_SPLITS = ("train", "test")  # PRW's frame_<split>.mat lists (CUHK-SYSU and PRW have no val split)
UNLABELED_PID = -1
UNKNOWN_CAMERA = -1
CUHK_GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)
PRW_UNLABELED_PID = -2  # as written in PRW's annotation files
PRW_BOX_KEYS = ("box_new", "anno_file", "anno_previous")  # the key varies between PRW's .mat files
_PRW_CAMERA = re.compile(r"^c(\d+)s(\d+)_")


@dataclass
class PersonSearchImage:
    """One scene image; ``boxes_xywh`` ``(N, 4)`` float32 pixels, ``pids`` ``(N,)`` int64 (-1 unlabeled)."""

    file_name: str
    width: int
    height: int
    camera: int
    split: str
    boxes_xywh: np.ndarray
    pids: np.ndarray

    def __post_init__(self) -> None:
        self.boxes_xywh = np.asarray(self.boxes_xywh, dtype=np.float32).reshape(-1, 4)
        self.pids = np.asarray(self.pids, dtype=np.int64).reshape(-1)


@dataclass
class PersonSearchQuery:
    """A query person: its image, box ``(4,)`` xywh float32, and gallery image names per gallery size."""

    pid: int
    file_name: str
    box_xywh: np.ndarray
    galleries: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.box_xywh = np.asarray(self.box_xywh, dtype=np.float32).reshape(4)


@dataclass
class PersonSearchManifest:
    """The whole dataset; ``root`` (not serialised) is the folder ``image_dir`` is relative to.

    ``queries`` are the test queries; ``val_queries`` those of the optional val split.
    """

    name: str
    images: list[PersonSearchImage]
    queries: list[PersonSearchQuery]
    protocol: str
    image_dir: str = DEFAULT_IMAGE_DIR
    root: str = ""
    val_queries: list[PersonSearchQuery] = field(default_factory=list)

    def image_path(self, file_name: str) -> Path:
        return Path(self.root) / self.image_dir / file_name

    def image(self, file_name: str) -> PersonSearchImage:
        index = self.__dict__.get("_index")
        if index is None or len(index) != len(self.images):
            index = {img.file_name: img for img in self.images}
            self.__dict__["_index"] = index
        return index[file_name]

    def queries_of(self, split: str) -> list[PersonSearchQuery]:
        """The queries of ``split``: "test" -> ``queries``, "val" -> ``val_queries``, "train" -> none."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} not one of {SPLITS}")
        return list({"test": self.queries, "val": self.val_queries}.get(split, []))

    def query_split(self, query: PersonSearchQuery) -> str:
        """The split a query belongs to: "val" for a query on a val image, else "test"."""
        return "val" if self.image(query.file_name).split == "val" else "test"

    def gallery(self, query: PersonSearchQuery, size: int | str | None = None) -> list[str]:
        """Gallery image names of ``query``: the listed gallery of ``size``, or PRW's all-of-its-split-but-own
        (validation keeps val queries on val images and test queries on test images)."""
        if size is not None and str(size) in query.galleries:
            return list(query.galleries[str(size)])
        if size is None and len(query.galleries) == 1:
            return list(next(iter(query.galleries.values())))
        if self.protocol == "prw" and size is None:
            split = self.query_split(query)
            return [img.file_name for img in self.images if img.split == split and img.file_name != query.file_name]
        raise KeyError(f"query pid {query.pid} ({query.file_name}) has no gallery of size {size!r}; "
                       f"available: {sorted(query.galleries)}")

    def image_records(self, split: str, stats: ReadStats | None = None) -> list[ImageRecord]:
        """``ImageRecord``s of ``split`` (boxes clipped/dropped as by every reader; pids as ids)."""
        stats = stats if stats is not None else ReadStats()
        records = []
        for img in self.images:
            if img.split != split:
                continue
            boxes, keep = sanitize_boxes_xyxy(xywh_to_xyxy(img.boxes_xywh), img.width, img.height, stats)
            records.append(ImageRecord(
                image_path=str(self.image_path(img.file_name)),
                width=img.width,
                height=img.height,
                boxes_xyxy=boxes[keep],
                ids=img.pids[keep],
                image_id=img.file_name,
                source=f"person_search:{self.name}",
                extra={"camera": img.camera, "box_rows": np.flatnonzero(keep)},  # rows of img.boxes_xywh kept
            ))
        stats.records += len(records)
        return records


# --------------------------------------------------------------------------- CUHK-SYSU-style galleries


def fitting_gallery_sizes(sizes: Sequence[int], pool_size: int) -> list[int]:
    """The gallery sizes a split of ``pool_size`` images can fill, or the first size when none can."""
    return [s for s in sizes if s < pool_size] or list(sizes[:1])


def draw_galleries(positives: Sequence[str], negatives: Sequence[str], sizes: Sequence[int],
                   rng: np.random.Generator) -> dict[str, list[str]]:
    """CUHK-SYSU's gallery of each size: the query person's other images (up to the size), filled with
    images without it drawn by ``rng``; ``{str(size): sorted names}``."""
    galleries = {}
    for size in sizes:
        pos = list(positives[:size])
        n_neg = min(len(negatives), size - len(pos))
        neg = [negatives[j] for j in sorted(rng.choice(len(negatives), n_neg, replace=False))] if n_neg else []
        galleries[str(size)] = sorted(pos + neg)
    return galleries


# --------------------------------------------------------------------------- manifest I/O


def _query_json(q: PersonSearchQuery) -> dict[str, Any]:
    return {
        "pid": int(q.pid),
        "file_name": q.file_name,
        "box_xywh": [float(v) for v in q.box_xywh],
        "galleries": {str(k): list(v) for k, v in q.galleries.items()},
    }


def _to_json(manifest: PersonSearchManifest) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": manifest.name,
        "images": [
            {
                "file_name": img.file_name,
                "width": int(img.width),
                "height": int(img.height),
                "camera": int(img.camera),
                "split": img.split,
                "boxes_xywh": [[float(v) for v in box] for box in img.boxes_xywh],
                "pids": [int(p) for p in img.pids],
            }
            for img in manifest.images
        ],
        "queries": [_query_json(q) for q in manifest.queries],
        "protocol": manifest.protocol,
    }
    if manifest.val_queries:  # absent from manifests without a val split (byte-identical to before)
        out["val_queries"] = [_query_json(q) for q in manifest.val_queries]
    if manifest.image_dir != DEFAULT_IMAGE_DIR:
        out["image_dir"] = manifest.image_dir
    return out


def _need(obj: Any, keys: tuple[str, ...], loc: str) -> None:
    if not isinstance(obj, dict):
        raise FormatError(f"{loc}: expected an object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise FormatError(f"{loc}: missing {', '.join(missing)}")


def _boxes4(value: Any, loc: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FormatError(f"{loc}: {what} must be numbers") from None
    if arr.size and (arr.ndim not in (1, 2) or arr.shape[-1] != 4) or not np.isfinite(arr).all():
        raise FormatError(f"{loc}: {what} must be finite [x, y, w, h] boxes, got shape {arr.shape}")
    return arr.reshape(-1, 4)


def _queries_from_json(items: Any, path: str, key: str) -> list[PersonSearchQuery]:
    if not isinstance(items, list):
        raise FormatError(f"{path}: {key} must be a list")
    queries = []
    for i, item in enumerate(items):
        loc = where(path, f"{key}[{i}]")
        _need(item, ("pid", "file_name", "box_xywh", "galleries"), loc)
        box = _boxes4(item["box_xywh"], loc, "box_xywh")
        if len(box) != 1:
            raise FormatError(f"{loc}: box_xywh must be one [x, y, w, h] box")
        if not isinstance(item["galleries"], dict):
            raise FormatError(f"{loc}: galleries must be an object {{size: [file_name, ...]}}")
        queries.append(PersonSearchQuery(int(item["pid"]), str(item["file_name"]), box[0],
                                         {str(k): list(v) for k, v in item["galleries"].items()}))
    return queries


def _from_json(data: Any, path: str) -> PersonSearchManifest:
    """Build and validate a manifest from parsed JSON; errors name ``path`` and the record."""
    _need(data, ("format", "name", "images", "queries", "protocol"), path)
    if data["format"] != MANIFEST_FORMAT:
        raise FormatError(f"{path}: format {data['format']!r}, expected {MANIFEST_FORMAT!r}")
    if data["protocol"] not in PROTOCOLS:
        raise FormatError(f"{path}: protocol {data['protocol']!r} not one of {PROTOCOLS}")
    images = []
    for i, item in enumerate(data["images"]):
        loc = where(path, f"images[{i}]")
        _need(item, ("file_name", "width", "height", "camera", "split", "boxes_xywh", "pids"), loc)
        boxes = _boxes4(item["boxes_xywh"], loc, "boxes_xywh")
        try:
            pids = np.asarray(item["pids"], dtype=np.int64).reshape(-1)
            width, height, camera = int(item["width"]), int(item["height"]), int(item["camera"])
        except (TypeError, ValueError):
            raise FormatError(f"{loc}: width, height, camera and pids must be integers") from None
        images.append(PersonSearchImage(str(item["file_name"]), width, height, camera, item["split"], boxes, pids))
    queries = _queries_from_json(data["queries"], path, "queries")
    val_queries = _queries_from_json(data.get("val_queries", []), path, "val_queries")
    manifest = PersonSearchManifest(str(data["name"]), images, queries, data["protocol"],
                                    image_dir=str(data.get("image_dir", DEFAULT_IMAGE_DIR)), val_queries=val_queries)
    validate_manifest(manifest, path)
    return manifest


def validate_manifest(manifest: PersonSearchManifest, path: str = MANIFEST_NAME) -> None:
    """Check the cross references evaluation relies on; raise ``FormatError`` naming the record."""
    if manifest.protocol not in PROTOCOLS:
        raise FormatError(f"{path}: protocol {manifest.protocol!r} not one of {PROTOCOLS}")
    by_name: dict[str, PersonSearchImage] = {}
    for i, img in enumerate(manifest.images):
        loc = where(path, f"images[{i}]")
        if not img.file_name:
            raise FormatError(f"{loc}: empty file_name")
        if img.file_name in by_name:
            raise FormatError(f"{loc}: duplicate file_name {img.file_name!r}")
        by_name[img.file_name] = img
        if img.width <= 0 or img.height <= 0:
            raise FormatError(f"{loc}: non-positive width/height {img.width}x{img.height}")
        if img.split not in SPLITS:
            raise FormatError(f"{loc}: split {img.split!r} not one of {SPLITS}")
        if len(img.pids) != len(img.boxes_xywh):
            raise FormatError(f"{loc}: {len(img.boxes_xywh)} boxes but {len(img.pids)} pids")
        bad = np.flatnonzero((img.boxes_xywh[:, 2] <= 0) | (img.boxes_xywh[:, 3] <= 0))
        if bad.size:
            raise FormatError(f"{loc}: boxes_xywh[{bad[0]}] has non-positive width or height")
        if (img.pids < UNLABELED_PID).any():
            raise FormatError(f"{loc}: pids must be >= {UNLABELED_PID} (-1 = unlabeled)")
    # a val split validates on people training never sees: no identity labelled in both train and val
    first_seen: dict[tuple[str, int], int] = {}
    for i, img in enumerate(manifest.images):
        if img.split in ("train", "val"):
            for pid in img.pids[img.pids >= 0].tolist():
                first_seen.setdefault((img.split, pid), i)
    shared = sorted(pid for split, pid in first_seen if split == "val" and ("train", pid) in first_seen)
    if shared:
        pid = shared[0]
        raise FormatError(
            f"{path}: {len(shared)} identities are labelled in both the train and the val split (pid {pid}: "
            f"images[{first_seen[('train', pid)]}] is train, images[{first_seen[('val', pid)]}] is val): a "
            f"validation split must hold people training never sees (python -m jobs.carve_val makes one)")
    # test queries: never on a val image (older manifests may hold test queries on train frames), test galleries;
    # val queries: val image, val galleries. So gallery() of a query never crosses val and test.
    for key, queries, split in (("queries", manifest.queries, "test"), ("val_queries", manifest.val_queries, "val")):
        for i, q in enumerate(queries):
            loc = where(path, f"{key}[{i}]")
            if q.pid < 0:
                raise FormatError(f"{loc}: query pid must be a labeled identity (>= 0), got {q.pid}")
            img = by_name.get(q.file_name)
            if img is None:
                raise FormatError(f"{loc}: query image {q.file_name!r} not in images")
            if (img.split == "val") != (split == "val"):
                raise FormatError(f"{loc}: {split} query on {img.split} image {q.file_name!r}")
            x, y, w, h = (float(v) for v in q.box_xywh)
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > img.width or y + h > img.height:
                raise FormatError(f"{loc}: query box {[x, y, w, h]} not inside its {img.width}x{img.height} image")
            if q.pid not in img.pids:
                raise FormatError(f"{loc}: pid {q.pid} has no box in its image {q.file_name!r}")
            for size, names in q.galleries.items():
                for name in names:
                    if name not in by_name:
                        raise FormatError(f"{loc}: gallery {size!r} image {name!r} not in images")
                    if by_name[name].split != split:
                        raise FormatError(f"{loc}: gallery {size!r} image {name!r} is a {by_name[name].split} "
                                          f"image, not {split}")
            if not q.galleries and manifest.protocol != "prw":
                raise FormatError(f"{loc}: no gallery (only protocol 'prw' may leave galleries empty)")


def write_manifest(path: str | os.PathLike, manifest: PersonSearchManifest) -> Path:
    """Validate and write ``manifest`` as JSON atomically (images are not checked on disk here)."""
    validate_manifest(manifest, os.fspath(path))
    return atomic_write_json(path, _to_json(manifest), indent=None)


def read_manifest(path: str | os.PathLike, *, check_images: bool = True) -> PersonSearchManifest:
    """Read and validate a manifest; ``root`` is set to its folder. Missing images raise (with their path)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where(path, exc.lineno)}: invalid JSON ({exc.msg})") from None
    manifest = _from_json(data, os.fspath(path))
    manifest.root = os.fspath(path.parent)
    if check_images:
        for i, img in enumerate(manifest.images):
            image_path = manifest.image_path(img.file_name)
            if not file_exists(image_path):
                raise MissingFileError(f"{where(path, f'images[{i}]')}: image not found: {image_path}")
    return manifest


# --------------------------------------------------------------------------- .mat helpers


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    if not path.is_file():
        raise MissingFileError(f"{path}: not found")
    try:
        return loadmat(os.fspath(path))
    except Exception as exc:  # scipy raises several types for broken files
        raise FormatError(f"{path}: cannot read .mat file: {exc}") from None


def _mat_var(mat: dict[str, Any], key: str, path: Path) -> np.ndarray:
    if key in mat:
        return mat[key]
    names = [k for k in mat if not k.startswith("__")]
    if len(names) == 1:  # same content under another variable name
        return mat[names[0]]
    raise FormatError(f"{path}: variable {key!r} not found (has {names})")


def _mat_records(value: Any) -> list[np.void]:
    """Flatten a MATLAB struct array, possibly wrapped in cells, into its struct elements (MATLAB order)."""
    arr = np.asarray(value)
    if arr.dtype.names:
        return list(arr.ravel(order="F"))
    if arr.dtype == object:
        out: list[np.void] = []
        for element in arr.ravel(order="F"):
            out.extend(_mat_records(element))
        return out
    if arr.size == 0:
        return []
    raise FormatError(f"expected a MATLAB struct array, got {arr.dtype} {arr.shape}")


def _mat_str(value: Any) -> str:
    """A MATLAB char array (possibly in cells) -> ``str``."""
    arr = np.asarray(value)
    while arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.ravel()[0])
    if arr.dtype.kind != "U" or arr.size != 1:
        raise FormatError(f"expected a string, got {arr.dtype} {arr.shape}")
    return str(arr.ravel()[0]).strip()


def _mat_box(value: Any) -> np.ndarray:
    """A MATLAB 1x4 box -> ``(4,)`` float64, or ``(0,)`` when empty (person absent)."""
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size not in (0, 4):
        raise FormatError(f"expected a 1x4 box, got {arr.size} numbers")
    return arr


def _mat_names(value: Any) -> list[str]:
    """A cell column of strings (pool.mat, frame_train.mat) -> list of names."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.ravel(order="F")]
    return [_mat_str(element) for element in arr.ravel(order="F")]


@contextmanager
def _at(loc: str) -> Iterator[None]:
    """Re-raise struct-layout problems (missing field, wrong shape) as ``FormatError`` naming ``loc``."""
    try:
        yield
    except FormatError as exc:
        if str(exc).startswith(loc):
            raise
        raise FormatError(f"{loc}: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise FormatError(f"{loc}: unexpected .mat layout ({exc})") from None


def _assign_pid(boxes_xywh: np.ndarray, pids: np.ndarray, box_xywh: np.ndarray, pid: int, loc: str) -> None:
    """Label the box equal to ``box_xywh`` (CUHK-SYSU repeats exact coordinates) with ``pid``."""
    match = np.flatnonzero(np.all(np.abs(boxes_xywh - box_xywh[None]) < 0.5, axis=1))
    if match.size == 0:
        raise FormatError(f"{loc}: box {box_xywh.tolist()} not among the image's boxes")
    pids[match[0]] = pid


def _clip_xywh(boxes_xywh: np.ndarray, width: int, height: int, stats: ReadStats) -> tuple[np.ndarray, np.ndarray]:
    boxes, keep = sanitize_boxes_xyxy(xywh_to_xyxy(boxes_xywh), width, height, stats)
    return xyxy_to_xywh(boxes), keep


# --------------------------------------------------------------------------- CUHK-SYSU


def _cuhk_queries(ann: Path, sizes: Sequence[int], num_train: int,
                  label: Callable[[str, np.ndarray, int, str], None]) -> list[PersonSearchQuery]:
    """The test queries of ``TestG<size>.mat`` for every gallery size (the same queries in each), their
    gallery lists per size; the first size's query and gallery boxes are labelled (``label``) with pid
    ``num_train + j + 1``. Query boxes are as in the file (clipped once the image sizes are known)."""
    queries: list[PersonSearchQuery] = []
    for s, size in enumerate(sizes):
        test_path = ann / "test" / "train_test" / f"TestG{size}.mat"
        protocol = _mat_records(_mat_var(_loadmat(test_path), f"TestG{size}", test_path))
        if s and len(protocol) != len(queries):
            raise FormatError(f"{test_path}: {len(protocol)} queries, TestG{sizes[0]} has {len(queries)}")
        for j, item in enumerate(protocol):
            loc = where(test_path, f"TestG{size}[{j}]")
            with _at(loc):
                query = _mat_records(item["Query"])
                if len(query) != 1:
                    raise FormatError(f"{loc}: Query must hold one struct, got {len(query)}")
                q_name, q_box = _mat_str(query[0]["imname"]), _mat_box(query[0]["idlocate"])
                pid = num_train + j + 1
                gallery_names = []
                for g, entry in enumerate(_mat_records(item["Gallery"])):
                    g_name, g_box = _mat_str(entry["imname"]), _mat_box(entry["idlocate"])
                    gallery_names.append(g_name)
                    if s == 0 and g_box.size:
                        label(g_name, g_box, pid, f"{loc}.Gallery[{g}]")
                if s == 0:
                    if q_box.size != 4:
                        raise FormatError(f"{loc}.Query: empty idlocate")
                    label(q_name, q_box, pid, f"{loc}.Query")
                    queries.append(PersonSearchQuery(pid, q_name, q_box, {}))  # clipped once sizes are known
                elif queries[j].file_name != q_name:
                    raise FormatError(f"{loc}: query {q_name!r} differs from "
                                      f"TestG{sizes[0]}'s {queries[j].file_name!r}")
                queries[j].galleries[str(size)] = gallery_names

    return queries


def convert_cuhk_sysu(
    root: str | os.PathLike, gallery_size: int | Sequence[int] = 100, *, stats: ReadStats | None = None
) -> PersonSearchManifest:
    """Build a manifest from CUHK-SYSU's ``annotation/*.mat`` (images ``Image/SSM/``).

    Layout (``scipy.io.loadmat`` defaults): ``Images.mat:Img`` struct array
    ``(imname, nAppear, box)`` with ``box`` a struct array ``(idlocate 1x4 xywh,
    ishard)``; ``pool.mat:pool`` cell column of test image names;
    ``Train.mat:Train`` cell column of ``(idname, nAppear, scene)`` structs,
    ``scene`` a struct array ``(imname, idlocate, ishard)``;
    ``TestG<size>.mat:TestG<size>`` struct array ``(Query, Gallery)``, Query
    ``(imname, idlocate, ishard, idname)``, Gallery ``(imname, idlocate, ishard)``
    with an empty ``idlocate`` where the person is absent.
    Zero-size boxes are dropped, boxes clipped to the image (counts in ``stats``).
    pids: train identity ``k`` (1-based row of Train.mat) -> ``k``; test query
    ``j`` -> ``len(Train) + j``; everyone else -1.
    """
    root = Path(root)
    stats = stats if stats is not None else ReadStats()
    ann = root / "annotation"
    image_dir = root / "Image" / "SSM"
    sizes = [gallery_size] if isinstance(gallery_size, int) else list(gallery_size)
    for size in sizes:
        if size not in CUHK_GALLERY_SIZES:
            raise ValueError(f"gallery_size {size} not one of {CUHK_GALLERY_SIZES}")

    images_path = ann / "Images.mat"
    pool_path = ann / "pool.mat"
    test_set = set(_mat_names(_mat_var(_loadmat(pool_path), "pool", pool_path)))
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (boxes xywh as in the file, pids)
    for i, rec in enumerate(_mat_records(_mat_var(_loadmat(images_path), "Img", images_path))):
        with _at(where(images_path, f"Img[{i}]")):
            name = _mat_str(rec["imname"])
            boxes = [_mat_box(b["idlocate"]) for b in _mat_records(rec["box"])]
        arr = np.asarray([b for b in boxes if b.size == 4], np.float64).reshape(-1, 4)
        raw[name] = (arr, np.full(len(arr), UNLABELED_PID, np.int64))

    def label(name: str, box: np.ndarray, pid: int, loc: str) -> None:
        if name not in raw:
            raise FormatError(f"{loc}: image {name!r} not in Images.mat")
        _assign_pid(raw[name][0], raw[name][1], box, pid, loc)

    train_path = ann / "test" / "train_test" / "Train.mat"
    train = _mat_records(_mat_var(_loadmat(train_path), "Train", train_path))
    for k, person in enumerate(train, start=1):
        with _at(where(train_path, f"Train[{k - 1}]")):
            scenes = _mat_records(person["scene"])
        for j, scene in enumerate(scenes):
            loc = where(train_path, f"Train[{k - 1}].scene[{j}]")
            with _at(loc):
                label(_mat_str(scene["imname"]), _mat_box(scene["idlocate"]), k, loc)

    queries = _cuhk_queries(ann, sizes, len(train), label)

    images = []
    sizes_by_name = {}
    for name, (boxes, pids) in raw.items():
        image_path = image_dir / name
        if not file_exists(image_path):
            raise MissingFileError(f"{where(images_path)}: image {name!r} not found: {image_path}")
        width, height = image_size(image_path)
        sizes_by_name[name] = (width, height)
        clipped, keep = _clip_xywh(boxes, width, height, stats)
        images.append(PersonSearchImage(name, width, height, UNKNOWN_CAMERA,
                                        "test" if name in test_set else "train", clipped[keep], pids[keep]))
    for q in queries:
        width, height = sizes_by_name[q.file_name]
        clipped, keep = _clip_xywh(q.box_xywh[None], width, height, stats)
        if not keep[0]:
            raise FormatError(f"{where(root)}: query pid {q.pid} box lies outside {q.file_name}")
        q.box_xywh = clipped[0]
    stats.records += len(images)
    manifest = PersonSearchManifest("cuhk_sysu", images, queries, "cuhk", image_dir=os.fspath(image_dir.resolve()))
    validate_manifest(manifest, os.fspath(root))
    return manifest


# --------------------------------------------------------------------------- PRW


def prw_camera(file_name: str) -> int:
    """Camera number of a PRW frame name ``c<cam>s<seq>_<frame>.jpg``."""
    match = _PRW_CAMERA.match(Path(file_name).name)
    if match is None:
        raise FormatError(f"{file_name}: not a PRW frame name c<cam>s<seq>_<frame>.jpg")
    return int(match.group(1))


def _jpg(name: str) -> str:
    return name if name.lower().endswith(".jpg") else f"{name}.jpg"


def convert_prw(root: str | os.PathLike, *, stats: ReadStats | None = None) -> PersonSearchManifest:
    """Build a manifest from PRW's ``frames/``, ``annotations/<img>.jpg.mat``,
    ``frame_{train,test}.mat`` and ``query_info.txt``.

    Annotation arrays are ``N x 5`` ``[pid, x, y, w, h]`` under ``box_new`` /
    ``anno_file`` / ``anno_previous``; pid -2 (unlabeled) becomes -1.
    ``query_info.txt`` lines are ``pid x y w h imname`` (imname without .jpg).
    Galleries are left empty: PRW's gallery is every test frame except the query's.
    """
    root = Path(root)
    stats = stats if stats is not None else ReadStats()
    frames_dir = root / "frames"
    images: list[PersonSearchImage] = []
    for split in PRW_SPLITS:
        list_path = root / f"frame_{split}.mat"
        names = _mat_names(_mat_var(_loadmat(list_path), f"img_index_{split}", list_path))
        for name in map(_jpg, names):
            ann_path = root / "annotations" / f"{name}.mat"
            mat = _loadmat(ann_path)
            key = next((k for k in PRW_BOX_KEYS if k in mat), None)
            if key is None:
                raise FormatError(f"{ann_path}: none of the box variables {PRW_BOX_KEYS}")
            arr = np.asarray(mat[key], dtype=np.float64)
            if arr.size == 0:
                arr = arr.reshape(0, 5)
            if arr.ndim != 2 or arr.shape[1] != 5:
                raise FormatError(f"{ann_path}: {key} must be N x 5 [pid, x, y, w, h], got {arr.shape}")
            image_path = frames_dir / name
            if not file_exists(image_path):
                raise MissingFileError(f"{list_path}: frame {name!r} not found: {image_path}")
            width, height = image_size(image_path)
            pids = arr[:, 0].astype(np.int64)
            pids[pids == PRW_UNLABELED_PID] = UNLABELED_PID
            clipped, keep = _clip_xywh(arr[:, 1:], width, height, stats)
            images.append(PersonSearchImage(name, width, height, prw_camera(name), split, clipped[keep], pids[keep]))
    by_name = {img.file_name: img for img in images}

    queries = []
    query_path = root / "query_info.txt"
    if not query_path.is_file():
        raise MissingFileError(f"{query_path}: not found")
    with open(query_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts:
                continue
            loc = where(query_path, line_no)
            if len(parts) != 6:
                raise FormatError(f"{loc}: expected 'pid x y w h imname', got {line.strip()!r}")
            try:
                pid = int(float(parts[0]))
                box = np.asarray([float(v) for v in parts[1:5]])
            except ValueError:
                raise FormatError(f"{loc}: non-numeric pid or box in {line.strip()!r}") from None
            name = _jpg(parts[5])
            img = by_name.get(name)
            if img is None:
                raise FormatError(f"{loc}: query image {name!r} not in frame_train/frame_test")
            clipped, keep = _clip_xywh(box[None], img.width, img.height, stats)
            if not keep[0]:
                raise FormatError(f"{loc}: query box lies outside {name}")
            queries.append(PersonSearchQuery(pid, name, clipped[0], {}))
    stats.records += len(images)
    manifest = PersonSearchManifest("prw", images, queries, "prw", image_dir=os.fspath(frames_dir.resolve()))
    validate_manifest(manifest, os.fspath(root))
    return manifest
