"""Ray Data batch inference of the frozen KD teacher over annotation records (``jobs.teacher_embeddings``).

records (paths and boxes, pickled one per row) -> ``map_batches(decode_canvases)``: CPU tasks read each
image and letterbox it to the network input (``kdtrack.data.teacher_store.teacher_canvas``, the canvas the
online KD path crops) -> ``map_batches(TeacherEmbedder)``: an actor pool that builds the teacher once per
actor (on its GPU when it has one) and embeds every box's crop -> one row per image back to the driver,
which writes the parquet parts. An image that cannot be read comes back as an error row, never fatal.
"""

from __future__ import annotations

import pickle
from typing import Any, Iterator, Sequence

import numpy as np

ITEM_COLUMN = "item"
READ_ERRORS = (OSError, ValueError)  # unreadable file, size that disagrees with the annotation


def _unpickled(batch: dict[str, np.ndarray]) -> Iterator[Any]:
    for raw in batch[ITEM_COLUMN]:
        yield pickle.loads(raw)


def _pickled(items: Sequence[Any]) -> dict[str, np.ndarray]:
    column = np.empty(len(items), dtype=object)
    column[:] = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL) for item in items]
    return {ITEM_COLUMN: column}


def decode_canvases(batch: dict[str, np.ndarray], config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Pickled record dicts -> pickled ``{source, image_id, boxes_xyxy, canvas, canvas_boxes}`` (or
    ``{source, image_id, error}`` for an image that cannot be read)."""
    from kdtrack.config import config_from_dict
    from kdtrack.data.dataset import read_image_rgb
    from kdtrack.structures import ImageRecord
    from kdtrack.data.teacher_store import image_key, teacher_canvas

    cfg = config_from_dict(config)
    out = []
    for row in _unpickled(batch):
        record = ImageRecord.from_dict(row)
        source, image_id = image_key(record)
        try:
            canvas, canvas_boxes = teacher_canvas(record, read_image_rgb(record.image_path,
                                                                         (record.width, record.height)), cfg)
        except READ_ERRORS as exc:
            out.append({"source": source, "image_id": image_id, "error": str(exc)})
            continue
        out.append({"source": source, "image_id": image_id, "boxes_xyxy": record.boxes_xyxy,
                    "canvas": canvas, "canvas_boxes": canvas_boxes})
    return _pickled(out)


class TeacherEmbedder:
    """A Ray Data actor: the frozen teacher, built once from weights in the object store (no file access on
    the worker), on the actor's GPU when it has one; every box of a batch of canvases -> its feature."""

    def __init__(self, config: dict[str, Any], teacher_config: dict[str, Any], weights: list, crop_batch: int,
                 num_threads: int = 0):
        import ray
        import torch

        from kdtrack.config import config_from_dict
        from kdtrack.threads import limit_blas_threads

        if num_threads > 0:
            torch.set_num_threads(num_threads)
        limit_blas_threads()
        self.cfg = config_from_dict(config)
        self.device = granted_device()
        self.teacher = frozen_teacher(config_from_dict(teacher_config).teacher, ray.get(weights[0]), self.device)
        self.crop_batch = crop_batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = list(_unpickled(batch))
        return _pickled(embed_items(self.teacher, items, self.cfg, self.device, self.crop_batch))


def granted_device() -> Any:
    """The device of a Ray task or actor: CUDA only when Ray granted it a GPU (``ray.get_gpu_ids()``), as
    ``jobs.evaluate``'s inference actors decide. ``torch.cuda.is_available()`` alone is not enough: Ray
    2.60 no longer hides a node's GPUs from actors that reserved none, so a "CPU" actor would run on
    GPU 0 beside the training workers that hold it."""
    import ray
    import torch

    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")


def pool_gpus(requested: float, actors: int, cluster: dict[str, float], free: dict[str, float]) -> tuple[float, str]:
    """GPUs per teacher actor, and a note when the pool runs on CPU instead. ``requested`` < 0 (auto):
    one per actor when the cluster has a free GPU for every actor right now (``free``: Ray's available
    resources), else CPU actors, said so (the GPUs are busy, e.g. training); >= 0 is taken as it is,
    but a pool that needs more GPUs than the cluster has is refused (its actors would wait forever)."""
    if requested >= 0:
        have = float(cluster.get("GPU", 0.0))
        if requested * actors > have + 1e-9:
            raise ValueError(f"--gpus-per-actor {requested:g} x --actors {actors} = {requested * actors:g} GPUs, "
                             f"but the cluster has {have:g}: the actors would never start (lower either, or "
                             f"--gpus-per-actor 0 for CPU actors)")
        return requested, ""
    if float(cluster.get("GPU", 0.0)) <= 0:
        return 0.0, ""
    if float(free.get("GPU", 0.0)) + 1e-9 >= actors:
        return 1.0, ""
    return 0.0, (f"teacher actors on CPU: {float(free.get('GPU', 0.0)):g} of the cluster's "
                 f"{float(cluster['GPU']):g} GPUs are free, {actors} actor(s) would need one each "
                 f"(--gpus-per-actor 1 waits for them)")


def frozen_teacher(teacher_cfg: Any, weights: dict[str, Any], device: Any = "cpu") -> Any:
    """The KD teacher of ``teacher_cfg`` with ``weights`` (:func:`teacher_weights`), frozen, on ``device``."""
    from kdtrack.models import freeze_teacher
    from kdtrack.models.reid import ReIDNet

    teacher = ReIDNet(teacher_cfg, 0)
    teacher.load_state_dict(weights, strict=True)
    return freeze_teacher(teacher.to(device))


def teacher_weights(state: dict[str, Any]) -> dict[str, Any]:
    """A teacher checkpoint's weights for KD: the identity classifier (training only) left out."""
    return {k: v for k, v in state["model"].items() if not k.startswith("classifier.")}


def embed_items(teacher: Any, items: list[dict[str, Any]], cfg: Any, device: Any, crop_batch: int) -> list[dict]:
    """Decoded items (``decode_canvases``) -> ``{source, image_id, boxes_xyxy, embeddings (N, D)}`` each
    (error items pass through): the online KD crop (``teacher_embeddings`` on the canvas), batched."""
    import torch

    from kdtrack.models.teacher_targets import teacher_embeddings

    good = [item for item in items if "error" not in item]
    vectors: list[np.ndarray] = []
    if good:
        images = torch.from_numpy(np.stack([item["canvas"] for item in good])).to(device)
        boxes = [torch.from_numpy(item["canvas_boxes"]).to(device) for item in good]
        crop = (cfg.teacher.crop_height, cfg.teacher.crop_width)
        per_image = teacher_embeddings(teacher, images, boxes, out_size=crop, batch_size=crop_batch)
        vectors = [emb.float().cpu().numpy() for emb in per_image]
    found = iter(vectors)
    return [item if "error" in item else
            {"source": item["source"], "image_id": item["image_id"], "boxes_xyxy": item["boxes_xyxy"],
             "embeddings": next(found)} for item in items]


def embedding_dataset(records: Sequence[Any], cfg: Any, teacher_state: dict[str, Any], *, actors: int,
                      cpus_per_actor: float, gpus_per_actor: float, decode_cpus: float, batch_images: int,
                      crop_batch: int) -> Any:
    """The Ray Data pipeline over ``records`` (``ImageRecord``s) with the teacher of ``teacher_state`` (a
    checkpoint's state); iterate it with :func:`iter_results`."""
    import ray
    import ray.data

    from kdtrack.config import config_to_dict

    config, teacher_config = config_to_dict(cfg), config_to_dict(teacher_state["config"])
    weights = [ray.put(teacher_weights(teacher_state))]  # wrapped: Ray Data would not resolve a bare ref
    pickled = _pickled([r.to_dict() for r in records])[ITEM_COLUMN]
    blocks = max(1, -(-len(pickled) // batch_images))  # one decode task per batch of images
    ds = ray.data.from_items([{ITEM_COLUMN: raw} for raw in pickled], override_num_blocks=blocks)
    decoded = ds.map_batches(decode_canvases, fn_kwargs={"config": config}, batch_size=batch_images,
                             num_cpus=decode_cpus)
    return decoded.map_batches(
        TeacherEmbedder, fn_constructor_kwargs={"config": config, "teacher_config": teacher_config,
                                                "weights": weights, "crop_batch": crop_batch,
                                                "num_threads": max(1, int(cpus_per_actor))},
        batch_size=batch_images, concurrency=actors, num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)


def iter_results(dataset: Any) -> Iterator[dict[str, Any]]:
    """One result dict per image, as the actors finish them."""
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield from _unpickled(batch)
