"""Read a dataset root back through kdtrack's real-format readers and summarise it.

Works on the generated synthetic world and on real data laid out the same way
(``crowdhuman/``, ``coco/``, ``kinetics/``, ``MOT17/``, ``person_search/``,
``market1501/``). A missing part is reported as absent, not as an error.

    python -m jobs.inspect_world --root DIR [--json summary.json]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kdtrack.formats import coco, crowdhuman, kinetics, market1501, mot, person_search
from kdtrack.io import atomic_write_json


def _image_stats(records) -> dict[str, Any]:
    boxes = sum(r.num_boxes for r in records)
    ids = {int(i) for r in records for i in r.ids if i >= 0}
    vis = np.concatenate([r.visibility for r in records]) if records else np.zeros(0)
    return {
        "images": len(records),
        "boxes": int(boxes),
        "ignore_boxes": int(sum(len(r.ignore_boxes_xyxy) for r in records)),
        "identities": len(ids),
        "mean_visibility": round(float(vis.mean()), 3) if vis.size else None,
    }


def images_per_identity(images) -> dict[str, Any]:
    """In how many images each identity appears: IDF stage 1 treats every person of every still as its own
    identity, which holds only where this is 1 (a person in two images is a false negative of the queue)."""
    counts = Counter(p for im in images for p in {int(p) for p in im.pids if p >= 0})
    if not counts:
        return {"images_per_identity": None, "images_per_identity_range": None}
    values = list(counts.values())
    return {"images_per_identity": round(sum(values) / len(values), 1),
            "images_per_identity_range": [min(values), max(values)]}


def _stats_dict(stats) -> dict[str, int]:
    return {k: int(getattr(stats, k)) for k in
            ("skipped_records", "boxes_clipped", "boxes_dropped", "missing_images")}


def summarize_world(root: str | Path) -> dict[str, Any]:
    """Per-format counts read back through the readers (not from the generator's log)."""
    root = Path(root)
    summary: dict[str, Any] = {}

    ch = root / "crowdhuman"
    for split in ("train", "val"):
        odgt = ch / f"annotation_{split}.odgt"
        if odgt.exists():
            records, stats = crowdhuman.read_crowdhuman(odgt, ch / "Images")
            summary[f"crowdhuman/{split}"] = {**_image_stats(records), **_stats_dict(stats)}

    for split in ("train2017", "val2017"):
        ann = root / "coco" / "annotations" / f"instances_{split}.json"
        if ann.exists():
            records, stats = coco.read_coco_persons(ann, root / "coco" / split)
            summary[f"coco/{split}"] = {**_image_stats(records), **_stats_dict(stats)}

    for csv_path in sorted((root / "kinetics").glob("*.csv")):
        clips, stats = kinetics.read_kinetics(csv_path, root / "kinetics")
        frames = [kinetics_frames(c.path) for c in clips]
        summary[f"kinetics/{csv_path.stem}"] = {
            "clips": len(clips),
            "labels": len({c.label for c in clips}),
            "frames": int(sum(frames)),
            "missing_clips": int(stats.missing_images),
        }

    mot_root = root / "MOT17" / "train"
    if mot_root.exists():
        seqs = {}
        for seq_dir in mot.list_sequences(mot_root):
            info, records = mot.read_mot_sequence(seq_dir)
            det = mot.read_det(seq_dir / "det" / "det.txt") if (seq_dir / "det" / "det.txt").exists() else None
            seqs[info.name] = {
                "frames": info.seq_length,
                "size": f"{info.im_width}x{info.im_height}",
                "fps": info.frame_rate,
                **{k: v for k, v in _image_stats(records).items() if k != "images"},
                "public_detections": 0 if det is None else int(len(det)),
            }
        summary["mot17/train"] = seqs

    manifest_path = root / "person_search" / "manifest.json"
    if manifest_path.exists():
        manifest = person_search.read_manifest(manifest_path)
        summary["person_search"] = {
            "images": len(manifest.images),
            "cameras": len({im.camera for im in manifest.images}),
            "boxes": int(sum(len(im.pids) for im in manifest.images)),
            "identities": len({p for im in manifest.images for p in im.pids if p >= 0}),
            "queries": len(manifest.queries),
            "gallery_sizes": sorted({int(s) for q in manifest.queries for s in q.galleries}),
        }
        for split in person_search.SPLITS:  # per split: disjoint identities, val/test queries on their own images
            images = [im for im in manifest.images if im.split == split]
            if not images:
                continue
            queries = manifest.queries_of(split)
            summary[f"person_search/{split}"] = {
                "images": len(images),
                "boxes": int(sum(len(im.pids) for im in images)),
                "identities": len({int(p) for im in images for p in im.pids if p >= 0}),
                **images_per_identity(images),
                "queries": len(queries),
                "gallery_sizes": sorted({int(s) for q in queries for s in q.galleries}),
            }

    m_root = root / "market1501"
    if m_root.exists():
        for split in ("bounding_box_train", "query", "bounding_box_test"):
            if (m_root / split).exists():
                crops, stats = market1501.read_market1501(m_root, split)
                summary[f"market1501/{split}"] = {
                    "crops": len(crops),
                    "identities": len({c.pid for c in crops if c.pid > 0}),
                    "cameras": len({c.camera for c in crops}),
                }
    return summary


def kinetics_frames(path: str) -> int:
    from kdtrack.formats.video import read_video_info

    return int(read_video_info(path)[0])


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for part, value in summary.items():
        if part == "mot17/train":
            for seq, stats in value.items():
                lines.append(f"{'mot17/' + seq:<32} " + ", ".join(f"{k}={v}" for k, v in stats.items()))
        else:
            lines.append(f"{part:<32} " + ", ".join(f"{k}={v}" for k, v in value.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset root (e.g. the synthetic world)")
    parser.add_argument("--json", default="", help="also write the summary here")
    args = parser.parse_args(argv)
    summary = summarize_world(args.root)
    print(format_summary(summary))
    if args.json:
        atomic_write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
