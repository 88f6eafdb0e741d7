"""Where a person's identity vector is read from the student's identity map (``model.id_readout``).

- ``cell`` (FairMOT's, every paper's): the map at the box's centre cell ``floor(centre / down_ratio)``.
- ``centre``: the map averaged over the central 40 % x 80 % of the box, one vector.
- ``centre_halves`` (kdtrack's): the map over the central 40 % x 80 % of the box (where the person is, not the
  background around it) averaged as an upper and a lower band (``torchvision.ops.roi_align``), each band
  L2-normalised, the two concatenated: ``2 k`` numbers per person, the layout of the person-centred colour
  histogram. A person's two clothing colours sit above and below the centre; one cell has to carry both
  through the network's coarse levels, two bands read each where it is. The supervised recipe trained and
  read this way passes the colour histogram at its budget where the centre cell stays below it
  (docs/results/identity-learning.md, "Where the identity is read, trained that way").

The same reading serves training (the boxes rebuilt from the target slots) and inference (detected or given
boxes), so a checkpoint is read the way it was trained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

CENTRE_REGION = (0.4, 0.8)  # share of the box width and height kept, centred (where the person is)
BANDS = {"centre": 1, "centre_halves": 2}  # horizontal bands of the central region each pooled readout averages
READOUTS = ("cell", *BANDS)
SAMPLING_RATIO = 2  # roi_align's bilinear samples per bin side


def readout_dim(embedding_dim: int, readout: str) -> int:
    """The length of one person's identity vector under ``readout``."""
    if readout not in READOUTS:
        raise ValueError(f"model.id_readout must be {' | '.join(READOUTS)}, got {readout!r}")
    return int(embedding_dim) * BANDS.get(readout, 1)


def central_boxes(boxes_xyxy, region: tuple[float, float] = CENTRE_REGION):
    """Each box shrunk about its centre to ``region`` = (width share, height share) of its size; a numpy
    array gives a float64 array, a tensor a tensor of its dtype."""
    as_numpy = not isinstance(boxes_xyxy, torch.Tensor)
    boxes = torch.as_tensor(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)) if as_numpy else boxes_xyxy
    centre_x, centre_y = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    half_w = (boxes[..., 2] - boxes[..., 0]) * region[0] / 2
    half_h = (boxes[..., 3] - boxes[..., 1]) * region[1] / 2
    out = torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], -1)
    return out.numpy() if as_numpy else out


def central_bands(embedding: torch.Tensor, boxes_xyxy: torch.Tensor, batch_index: torch.Tensor,
                  down_ratio: int, bands: int = 2, region: tuple[float, float] | None = CENTRE_REGION) -> torch.Tensor:
    """``(n, bands k)``: for each box (network-input pixels) of image ``batch_index`` of the identity maps
    ``embedding (B, k, h, w)``, its central ``region`` (None: the whole box) averaged in ``bands`` horizontal
    bands (top first), each band L2-normalised, concatenated (not normalised as a whole: callers that need a
    unit vector normalise it)."""
    boxes = boxes_xyxy.float() if region is None else central_boxes(boxes_xyxy.float(), region)
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes], 1)
    pooled = roi_align(embedding.float(), rois, output_size=(bands, 1), spatial_scale=1.0 / down_ratio,
                       sampling_ratio=SAMPLING_RATIO, aligned=True)  # (n, k, bands, 1)
    return F.normalize(pooled, dim=1).transpose(1, 2).flatten(1)  # band 0's k numbers, then band 1's, ...


def read_at_boxes(embedding: torch.Tensor, boxes_xyxy: torch.Tensor, batch_index: torch.Tensor, readout: str,
                  down_ratio: int) -> torch.Tensor:
    """``(n, readout_dim)`` unnormalised identity vectors of boxes (network-input pixels) in images
    ``batch_index`` of ``embedding (B, k, h, w)``: the centre cell, or :func:`central_bands`."""
    readout_dim(1, readout)  # checks the name
    if readout in BANDS:
        return central_bands(embedding, boxes_xyxy, batch_index, down_ratio, BANDS[readout])
    _, _, h, w = embedding.shape
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2 / down_ratio
    cx = centre[:, 0].floor().long().clamp(0, w - 1)
    cy = centre[:, 1].floor().long().clamp(0, h - 1)
    return embedding.float()[batch_index.long(), :, cy, cx]
