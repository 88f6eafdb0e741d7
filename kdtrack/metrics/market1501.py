"""The Market-1501 evaluation protocol on top of :mod:`kdtrack.metrics.retrieval`.

Every ``query`` crop ranks ``bounding_box_test`` by cosine similarity. For each
query, gallery entries of the same identity *and* the same camera are removed
(the same person seen by the same camera is not a re-identification), and junk
crops (pid -1) are removed for every query; distractors (pid 0000) stay in the
gallery as negatives. mAP and CMC rank-k are means over the queries with at
least one cross-camera positive (the others are counted as ``skipped``).

AP is the mean precision at the positives (torchreid / BoT / fastreid), not
the trapezoidal AP of the original MATLAB kit; ties are handled as sklearn's
``average_precision_score`` (see ``retrieval``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from kdtrack.formats.market1501 import DISTRACTOR_PID, JUNK_PID, ReidCrop
from kdtrack.metrics.retrieval import DEFAULT_RANKS, RetrievalResult, evaluate_retrieval


def evaluate_market1501(
    query_features: np.ndarray,
    query_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_features: np.ndarray,
    gallery_pids: np.ndarray,
    gallery_cams: np.ndarray,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
) -> RetrievalResult:
    """Queries ``(Nq, d)`` against the gallery ``(Ng, d)`` under the Market-1501 rules (module doc).

    Query pids must be real identities (> 0); junk gallery entries are dropped before ranking.
    """
    qp, qc = np.asarray(query_pids, np.int64).reshape(-1), np.asarray(query_cams, np.int64).reshape(-1)
    gp, gc = np.asarray(gallery_pids, np.int64).reshape(-1), np.asarray(gallery_cams, np.int64).reshape(-1)
    if len(qp) != len(qc) or len(gp) != len(gc):
        raise ValueError(f"pids and cameras differ in length: query {len(qp)} / {len(qc)}, gallery {len(gp)} / {len(gc)}")
    bad = qp[(qp == JUNK_PID) | (qp == DISTRACTOR_PID)]
    if bad.size:
        raise ValueError(f"query pids must be identities (> 0), got {sorted(set(bad.tolist()))}")
    keep = gp != JUNK_PID
    gf = np.asarray(gallery_features)
    if len(gf) != len(gp):
        raise ValueError(f"{len(gf)} gallery features for {len(gp)} gallery pids")
    return evaluate_retrieval(query_features, qp, gf[keep], gp[keep],
                              junk_rule="same_camera_same_id", query_groups=qc, gallery_groups=gc[keep],
                              ranks=tuple(ranks))


def evaluate_market1501_crops(
    query: Sequence[ReidCrop],
    gallery: Sequence[ReidCrop],
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
) -> RetrievalResult:
    """:func:`evaluate_market1501` with pids and cameras read from ``read_market1501`` crops."""
    return evaluate_market1501(query_features, [c.pid for c in query], [c.camera for c in query],
                               gallery_features, [c.pid for c in gallery], [c.camera for c in gallery], ranks)
