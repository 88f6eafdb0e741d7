"""Offline KD teacher embeddings: one parquet row per ground-truth box, read back as a lookup table.

KD's soft target of a box is the frozen teacher's feature of that box's crop, cut from the
UN-augmented image. Computing it once per box (``jobs.teacher_embeddings``) instead of on every
training step takes the teacher off the training GPUs. The crop is cut exactly as the online path
cuts it (``kdtrack.models.teacher_targets.teacher_embeddings`` on the letterboxed canvas at
``model.input_width x input_height``), so a batch gets the same targets either way. Under
multi-scale training the online canvas varies per sample; the offline one stays at the input size.

The parquet rows (``STORE_COLUMNS``) are keyed by ``(source, image_id, box_row)``: the dataset name,
the record's image id (its path when the format has none) and the box's row in that record's
annotation. The files' schema metadata says which teacher and canvas made them
(``kdtrack.data.teacher_store``: JSON), and a store of another teacher or canvas is refused, never mixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from kdtrack.config import Config
from kdtrack.data.letterbox import student_canvas
from kdtrack.structures import ImageRecord

STORE_COLUMNS = ("source", "image_id", "box_row", "x1", "y1", "x2", "y2", "embedding")
META_KEY = b"kdtrack.data.teacher_store"
PARTS_DIR = "parts"  # <store>/parts/part-*.parquet
# what a store was computed with: a KD run (or a resumed job) must use the same
META_FIELDS = ("teacher_checkpoint", "teacher_iteration", "feature_dim", "crop_height", "crop_width",
               "canvas_width", "canvas_height")


class MissingTeacherEmbedding(KeyError):
    """A training box has no row in the offline store (a store made from other data, or cut short)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def image_key(record: ImageRecord) -> tuple[str, str]:
    """``(source, image_id)`` of a record: the store's key with the box row."""
    return record.source, record.image_id or record.image_path


def teacher_canvas(record: ImageRecord, image_rgb: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """``(canvas (3, H, W) float32, boxes (N, 4) on it)``: the un-augmented image on the student's canvas,
    where KD cuts its teacher crops (``kdtrack.data.dataset.training_sample`` with_original)."""
    canvas, tf = student_canvas(image_rgb, cfg)
    return canvas, tf.boxes_to_letterbox(record.boxes_xyxy).astype(np.float32)


def store_meta(cfg: Config, checkpoint: str, iteration: int, feature_dim: int) -> dict[str, Any]:
    """What the rows of a store depend on, written into every part's schema metadata."""
    return {"teacher_checkpoint": str(checkpoint), "teacher_iteration": int(iteration),
            "feature_dim": int(feature_dim), "crop_height": int(cfg.teacher.crop_height),
            "crop_width": int(cfg.teacher.crop_width), "canvas_width": int(cfg.model.input_width),
            "canvas_height": int(cfg.model.input_height)}


def rows_table(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Any:
    """One pyarrow table of per-image results ``{source, image_id, boxes_xyxy (N, 4), embeddings (N, D)}``
    (original-image boxes), one row per box, ``meta`` in the schema."""
    import pyarrow as pa

    dim = int(meta["feature_dim"])
    sources, image_ids, box_rows, boxes, vectors = [], [], [], [], []
    for row in rows:
        n = len(row["embeddings"])
        sources += [row["source"]] * n
        image_ids += [row["image_id"]] * n
        box_rows.append(np.arange(n, dtype=np.int32))
        boxes.append(np.asarray(row["boxes_xyxy"], np.float32).reshape(n, 4))
        vectors.append(np.asarray(row["embeddings"], np.float32).reshape(n, dim))
    box = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    flat = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    schema = pa.schema([("source", pa.string()), ("image_id", pa.string()), ("box_row", pa.int32()),
                        ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()), ("y2", pa.float32()),
                        ("embedding", pa.list_(pa.float32(), dim))],
                       metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()})
    columns = [pa.array(sources, pa.string()), pa.array(image_ids, pa.string()),
               pa.array(np.concatenate(box_rows) if box_rows else np.zeros(0, np.int32)),
               *(pa.array(box[:, i]) for i in range(4)),
               pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)]
    return pa.Table.from_arrays(columns, schema=schema)


def part_files(store: str | Path) -> list[Path]:
    """The finished parts of a store (a folder written by ``jobs.teacher_embeddings``, or one parquet file)."""
    path = Path(store)
    if path.is_file():
        return [path]
    return sorted((path / PARTS_DIR).glob("part-*.parquet"))


def read_part_meta(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a kdtrack teacher-embeddings file (no {META_KEY.decode()} metadata)")
    return json.loads(raw)


def check_meta(found: dict[str, Any], expected: dict[str, Any], where: str,
               fields: Iterable[str] = META_FIELDS) -> None:
    """``found`` (a part's metadata) must agree with ``expected`` on ``fields``; the error names the part."""
    diff = [f"{f}: {found.get(f)!r} here, {expected.get(f)!r} expected" for f in fields
            if found.get(f) != expected.get(f)]
    if diff:
        raise ValueError(f"{where}: teacher embeddings of another teacher or canvas ({'; '.join(diff)})")


@dataclass
class TeacherTable:
    """Every stored box's teacher feature: ``matrix (rows, D)`` and ``index {(source, image_id): (start, n)}``
    (an image's rows are contiguous, in box-row order)."""

    matrix: np.ndarray
    index: dict[tuple[str, str], tuple[int, int]]
    meta: dict[str, Any]
    where: str

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def image_rows(self, record: ImageRecord) -> np.ndarray:
        """``(num_boxes, D)`` of one record; a record the store lacks, or one whose box count differs, is an
        error naming the image (the store was made from other annotations)."""
        if not record.num_boxes:
            return self.matrix[:0]
        key = image_key(record)
        found = self.index.get(key)
        if found is None:
            raise MissingTeacherEmbedding(f"{self.where}: no teacher embeddings for image {key[1]} ({key[0]}, "
                                          f"{record.num_boxes} boxes); rerun jobs.teacher_embeddings over these "
                                          f"sources")
        start, n = found
        if n != record.num_boxes:
            raise MissingTeacherEmbedding(f"{self.where}: image {key[1]} ({key[0]}) has {n} stored boxes but "
                                          f"{record.num_boxes} annotated: box row {min(n, record.num_boxes)} "
                                          f"has no stored embedding; the store was made from other annotations")
        return self.matrix[start:start + n]

    def check_records(self, records: Sequence[ImageRecord]) -> None:
        """Every box of ``records`` has its row (run on the driver before any worker starts)."""
        for record in records:
            self.image_rows(record)


def read_teacher_table(store: str | Path, expected: dict[str, Any] | None = None) -> TeacherTable:
    """All parts of ``store`` as one :class:`TeacherTable`; ``expected`` (``store_meta`` fields, some or all)
    must match every part's metadata."""
    import pyarrow.parquet as pq

    parts = part_files(store)
    if not parts:
        raise FileNotFoundError(f"{store}: no teacher embeddings (expected {PARTS_DIR}/part-*.parquet or a "
                                f"parquet file; run python -m jobs.teacher_embeddings)")
    meta = read_part_meta(parts[0])
    if expected:
        check_meta(meta, expected, str(parts[0]), [f for f in META_FIELDS if f in expected])
    matrices, index, offset = [], {}, 0
    for part in parts:
        check_meta(read_part_meta(part), meta, str(part))
        table = pq.read_table(part)
        dim = int(meta["feature_dim"])
        vectors = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        matrices.append(np.asarray(vectors, np.float32).reshape(-1, dim))
        sources = table.column("source").to_pylist()
        image_ids = table.column("image_id").to_pylist()
        box_rows = table.column("box_row").to_numpy()
        start = 0
        while start < len(sources):  # contiguous runs of one image
            key = (sources[start], image_ids[start])
            end = start
            while end < len(sources) and (sources[end], image_ids[end]) == key:
                end += 1
            if key in index:
                raise ValueError(f"{part}: image {key[1]} ({key[0]}) is stored twice")
            if not np.array_equal(box_rows[start:end], np.arange(end - start)):
                raise ValueError(f"{part}: image {key[1]} ({key[0]}): box rows {box_rows[start:end].tolist()} are not "
                                 f"0..{end - start - 1}")
            index[key] = (offset + start, end - start)
            start = end
        offset += len(sources)
    matrix = np.concatenate(matrices) if matrices else np.zeros((0, int(meta["feature_dim"])), np.float32)
    return TeacherTable(matrix, index, meta, str(store))


def stored_images(store: str | Path) -> tuple[set[tuple[str, str]], dict[str, Any] | None]:
    """``(keys of the images already stored, metadata of the first part)``: what a resumed job skips."""
    import pyarrow.parquet as pq

    done: set[tuple[str, str]] = set()
    meta = None
    for part in part_files(store):
        found = read_part_meta(part)
        if meta is None:
            meta = found
        check_meta(found, meta, str(part))
        table = pq.read_table(part, columns=["source", "image_id"])
        done.update(zip(table.column("source").to_pylist(), table.column("image_id").to_pylist()))
    return done, meta


def attach_stored_targets(sample: dict[str, np.ndarray], vectors: np.ndarray) -> None:
    """``sample["teacher"] (V, K, D)``: slot k of view v gets the stored feature of its original box row
    (``box_index``; zeros in empty slots, which the KD loss masks), as ``attach_teacher_targets`` does
    online."""
    box_index = sample["box_index"]
    out = np.zeros((*box_index.shape, vectors.shape[1]), np.float32)
    filled = box_index >= 0
    if filled.any() and int(box_index[filled].max()) >= len(vectors):
        raise MissingTeacherEmbedding(f"box row {int(box_index[filled].max())} has no stored embedding "
                                      f"({len(vectors)} stored for this image)")
    out[filled] = vectors[box_index[filled]]
    sample["teacher"] = out
