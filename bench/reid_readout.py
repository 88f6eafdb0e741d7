"""Where a student's identity map is read: the centre cell of each box, or pooled over a region of the box.

A checkpoint is trained and read one way, ``model.id_readout`` (``kdtrack.readout``: FairMOT's centre cell
``floor(centre / down_ratio)``, or the box's central region as one or two bands). This reads a trained map
post hoc all four ways, on the same oracle boxes and with the same retrieval code as ``jobs.evaluate reid``,
for each checkpoint (and the random-init student): the centre cell; the map averaged over the whole box;
averaged over the central 40 % x 80 % (``kdtrack.readout.CENTRE_REGION``, where ``colour_centre`` reads);
that region as an upper and a lower band, each averaged and L2-normalised, concatenated (the colour
histograms' layout). Averages are ``torchvision.ops.roi_align`` over the stride-``down_ratio`` map. It tells
whether a map trained one way carries more when read another (docs/results/identity-learning.md).

    python -m jobs.generate_synth --preset small --out W --seed 0
    python bench/reid_readout.py --world W CKPT [CKPT ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdtrack.inference import Detector, load_student  # noqa: E402
from kdtrack.readout import CENTRE_REGION, central_bands  # noqa: E402
from kdtrack.metrics.reid_probe import (StudentBoxEmbedder, embed_box_set, load_reid_box_sets,  # noqa: E402
                                        random_student_embedder, score_box_set)

READOUTS = ("cell", "box", "centre", "centre_halves")


@dataclass
class PooledBoxEmbedder:
    """The identity map averaged over each box (``region``: the central share kept, None = the whole box),
    as ``rows`` horizontal bands (each averaged and L2-normalised, then concatenated and normalised again)."""

    detector: Detector
    region: tuple[float, float] | None
    rows: int = 1

    def __call__(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        return self.embed_many([image_rgb], [boxes_xyxy])[0]

    def embed_many(self, images_rgb: Sequence[np.ndarray], boxes_xyxy: Sequence[np.ndarray]) -> list[np.ndarray]:
        batches, transforms = zip(*(self.detector.preprocess(image) for image in images_rgb))
        with torch.no_grad():
            maps = self.detector.forward(torch.cat(batches))["embedding"].float()
        out = []
        for i, (tf, boxes) in enumerate(zip(transforms, boxes_xyxy)):
            letterboxed = torch.as_tensor(tf.boxes_to_letterbox(np.asarray(boxes, np.float32).reshape(-1, 4)))
            pooled = central_bands(maps[i:i + 1], letterboxed, torch.zeros(len(letterboxed), dtype=torch.long),
                                   self.detector.cfg.model.down_ratio, self.rows, self.region)
            out.append(F.normalize(pooled, dim=1).numpy().astype(np.float32))
        return out


def readouts(detector: Detector) -> dict[str, object]:
    cfg = detector.cfg  # "cell" reads the centre cell whatever model.id_readout the checkpoint was trained with
    at_cell = dataclasses.replace(detector, cfg=dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                                                   id_readout="cell")))
    return {"cell": StudentBoxEmbedder(at_cell), "box": PooledBoxEmbedder(detector, None),
            "centre": PooledBoxEmbedder(detector, CENTRE_REGION),
            "centre_halves": PooledBoxEmbedder(detector, CENTRE_REGION, rows=2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, required=True, help="a synthetic world (jobs.generate_synth)")
    ap.add_argument("checkpoints", nargs="+", help="kdtrack student checkpoints (the first one's model for 'random')")
    ap.add_argument("--split", default="test", help="person-search split")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    boxes = load_reid_box_sets(args.world, split=args.split, protocols=["person_search"])["person_search"]
    _, first_cfg = load_student(args.checkpoints[0])
    for name in ["random", *args.checkpoints]:
        if name == "random":
            detector = random_student_embedder(first_cfg).detector
        else:
            model, cfg = load_student(name)
            detector = Detector(model.eval(), cfg, torch.device("cpu"))
        features = embed_box_set(boxes, readouts(detector))
        scores = {read: round(100 * score_box_set(boxes, f).summary()["mAP"], 1) for read, f in features.items()}
        print(json.dumps({"checkpoint": name, "ps_mAP": scores}), flush=True)


if __name__ == "__main__":
    main()
