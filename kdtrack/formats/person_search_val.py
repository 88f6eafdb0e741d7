"""An identity-disjoint validation split carved out of a person-search manifest's train split.

CUHK-SYSU and PRW ship train and test only, and a sweep must not select on the test people. The carve-out
picks ``identities`` labelled train people (seeded), moves every train image that shows one of them to a
``val`` split, and draws one val query per picked person. Other labelled people on those images become
unlabelled (-1) there: they stay in training through their other images, and no identity is labelled in
both splits, which :func:`kdtrack.formats.person_search.validate_manifest` checks on every read. Written
once, as a manifest, so every trial and every later run validates on the same people.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kdtrack.formats.person_search import (
    UNKNOWN_CAMERA,
    UNLABELED_PID,
    PersonSearchImage,
    PersonSearchManifest,
    PersonSearchQuery,
    draw_galleries,
    fitting_gallery_sizes,
)

DEFAULT_VAL_GALLERY_SIZES = (50, 100)  # CUHK-SYSU protocol; a size the val images cannot fill falls away


def _eligible(images: Sequence[PersonSearchImage]) -> dict[int, list[tuple[int, int]]]:
    """Labelled train people that a query can find again: ``pid -> [(image index, box row)]``, seen in two
    images or more (and from two cameras when the cameras are known, as PRW's cross-camera rule needs)."""
    seen: dict[int, list[tuple[int, int]]] = {}
    for i, img in enumerate(images):
        if img.split != "train":
            continue
        for row, pid in enumerate(img.pids.tolist()):
            if pid >= 0:
                seen.setdefault(pid, []).append((i, row))
    eligible = {}
    for pid, where_seen in seen.items():
        if len({i for i, _ in where_seen}) < 2:
            continue
        cameras = {images[i].camera for i, _ in where_seen}
        if UNKNOWN_CAMERA not in cameras and len(cameras) < 2:
            continue
        eligible[pid] = where_seen
    return eligible


def carve_validation(manifest: PersonSearchManifest, identities: int, seed: int = 0,
                     gallery_sizes: Sequence[int] = DEFAULT_VAL_GALLERY_SIZES
                     ) -> tuple[PersonSearchManifest, dict[str, Any]]:
    """``(the manifest with a val split, counts)``; ``manifest`` itself is left unchanged.

    Raises ``ValueError`` when the manifest already has a val split or holds fewer eligible train people
    than ``identities``.
    """
    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if any(img.split == "val" for img in manifest.images) or manifest.val_queries:
        raise ValueError(f"manifest {manifest.name!r} already has a val split: a carve-out is made once, "
                         f"from a manifest with train and test only")
    eligible = _eligible(manifest.images)
    if len(eligible) < identities:
        raise ValueError(f"manifest {manifest.name!r}: {identities} validation identities asked, but only "
                         f"{len(eligible)} train people appear in two images or more (from two cameras, where "
                         f"the cameras are known)")
    rng = np.random.default_rng(seed)
    candidates = sorted(eligible)
    picked = {candidates[i] for i in rng.permutation(len(candidates))[:identities].tolist()}

    images, relabelled, moved = [], 0, []
    for i, img in enumerate(manifest.images):
        if img.split == "train" and picked.intersection(img.pids.tolist()):
            keep = np.isin(img.pids, sorted(picked))
            relabelled += int(((img.pids >= 0) & ~keep).sum())
            pids = np.where(keep, img.pids, UNLABELED_PID)
            img = dataclasses.replace(img, split="val", boxes_xywh=img.boxes_xywh.copy(), pids=pids)
            moved.append(i)
        images.append(img)

    sizes = fitting_gallery_sizes(sorted(gallery_sizes), len(moved))
    queries = []
    for pid in sorted(picked):
        where_seen = eligible[pid]
        i, row = where_seen[int(rng.integers(len(where_seen)))]
        query_image = images[i]
        galleries: dict[str, list[str]] = {}
        if manifest.protocol != "prw":  # PRW's rule: every val image but the query's own
            positives = sorted({images[j].file_name for j, _ in where_seen if j != i})
            negatives = [images[j].file_name for j in moved if pid not in images[j].pids]
            galleries = draw_galleries(positives, negatives, sizes, rng)
        queries.append(PersonSearchQuery(pid=pid, file_name=query_image.file_name,
                                         box_xywh=query_image.boxes_xywh[row].copy(), galleries=galleries))

    carved = dataclasses.replace(manifest, images=images, val_queries=queries,
                                 name=f"{manifest.name}+val{identities}s{seed}")
    train_ids = {int(p) for img in images if img.split == "train" for p in img.pids if p >= 0}
    counts = {
        "val_identities": len(picked), "val_images": len(moved), "val_queries": len(queries),
        "val_gallery_sizes": sizes if manifest.protocol != "prw" else "prw rule (every val image but its own)",
        "boxes_unlabelled_in_val": relabelled,
        "train_images": sum(img.split == "train" for img in images), "train_identities": len(train_ids),
        "seed": seed,
    }
    return carved, counts


def relocate_images(manifest: PersonSearchManifest, source_dir: str | os.PathLike,
                    out_dir: str | os.PathLike) -> PersonSearchManifest:
    """The manifest with ``image_dir`` made absolute when it is written to another folder than it was read
    from, so that its images are still found."""
    if Path(os.path.abspath(source_dir)) == Path(os.path.abspath(out_dir)) or os.path.isabs(manifest.image_dir):
        return manifest
    return dataclasses.replace(manifest, image_dir=os.path.abspath(Path(source_dir) / manifest.image_dir))
