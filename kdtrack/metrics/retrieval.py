"""Retrieval metrics: mAP and CMC rank-k of query embeddings ranked against a gallery.

The Re-ID convention (Market-1501, video re-ID): every query ranks the gallery
by cosine similarity of L2-normalised features; gallery entries that a *junk
rule* marks are removed from that query's ranking (they neither help nor hurt),
and so is the query itself when it is also a gallery entry. What is left is
scored:

- AP of a query = sklearn's ``average_precision_score(y_true, y_score)`` on the
  kept entries (``y_true`` = same id). Tied scores are grouped as sklearn does
  (one precision per distinct score), so the value matches it exactly.
- CMC rank-k = 1 when a positive is among the k best kept entries (ties keep
  gallery order).
- mAP and rank-k are means over the queries with at least one positive; the
  others are counted as ``skipped``.

Junk rules (``groups`` are cameras for person search, sequences for video):

- ``"none"``: only the query itself is removed;
- ``"same_camera_same_id"`` (Market-1501): same id and same camera;
- ``"cross_camera"``: every entry of the query's camera;
- ``"min_time_gap"`` (video, retrieval within a sequence): every entry of
  another sequence, and same-id entries of its own sequence closer than
  ``min_gap`` in time.

``positives="same_tag" | "other_tag"`` (with per-entry ``tags``, e.g. the side a
person shows) keeps only the same-id entries whose tag equals (differs from) the
query's; the other same-id entries are junk, the different-id entries stay: how
well an embedding finds a person again *with* and *across* a change of tag.

Pure numpy; queries are processed in chunks so that memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

JunkRule = Literal["none", "same_camera_same_id", "cross_camera", "min_time_gap"]
JUNK_RULES: tuple[str, ...] = ("none", "same_camera_same_id", "cross_camera", "min_time_gap")
Positives = Literal["all", "same_tag", "other_tag"]
POSITIVES: tuple[str, ...] = ("all", "same_tag", "other_tag")
DEFAULT_RANKS = (1, 5, 10)
_CHUNK_ELEMENTS = 1 << 22  # query x gallery cells per chunk (a few float32/bool arrays of this size)


def l2_normalize(features: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (all-zero rows stay zero); float32."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def junk_mask(
    rule: JunkRule,
    query_ids: np.ndarray,
    gallery_ids: np.ndarray,
    *,
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    query_times: np.ndarray | None = None,
    gallery_times: np.ndarray | None = None,
    min_gap: float = 0.0,
) -> np.ndarray:
    """``(Nq, Ng)`` bool: gallery entries removed from each query's ranking by ``rule`` (see module doc).

    Does not include the query itself (see ``query_gallery_index`` of :func:`evaluate_retrieval`).
    """
    if rule not in JUNK_RULES:
        raise ValueError(f"junk rule {rule!r} not one of {JUNK_RULES}")
    qid = np.asarray(query_ids).reshape(-1)
    gid = np.asarray(gallery_ids).reshape(-1)
    if rule == "none":
        return np.zeros((len(qid), len(gid)), dtype=bool)
    if query_groups is None or gallery_groups is None:
        raise ValueError(f"junk rule {rule!r} needs query_groups and gallery_groups (cameras or sequences)")
    same_group = np.asarray(query_groups).reshape(-1, 1) == np.asarray(gallery_groups).reshape(1, -1)
    if rule == "cross_camera":
        return same_group
    same_id = qid[:, None] == gid[None, :]
    if rule == "same_camera_same_id":
        return same_id & same_group
    if query_times is None or gallery_times is None:
        raise ValueError("junk rule 'min_time_gap' needs query_times and gallery_times")
    dt = np.abs(np.asarray(query_times, np.float64).reshape(-1, 1)
                - np.asarray(gallery_times, np.float64).reshape(1, -1))
    return ~same_group | (same_group & same_id & (dt < min_gap))


def expected_random_average_precision(num_positives: np.ndarray, num_candidates: np.ndarray) -> np.ndarray:
    """Expected AP of a uniformly random ranking of N candidates of which P are positive (P >= 1).

    A positive at rank r (uniform in 1..N) has on average (r-1)(P-1)/(N-1) positives above it, so
    E[AP] = H_N/N + (P-1)/(N-1) * (1 - H_N/N), with H_N the N-th harmonic number (N = 1: 1).
    """
    p = np.asarray(num_positives, np.float64)
    n = np.asarray(num_candidates, np.int64)
    if n.size == 0:
        return np.zeros(0)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max(int(n.max()), 1) + 1))])
    h_over_n = harmonic[n] / np.maximum(n, 1)
    frac = np.divide(p - 1, n - 1, out=np.ones_like(p), where=n > 1)
    return h_over_n + frac * (1 - h_over_n)


def expected_random_hit_rate(num_positives: np.ndarray, num_candidates: np.ndarray, k: int) -> np.ndarray:
    """P(at least one of P positives among the first k of N randomly ranked candidates)."""
    p = np.asarray(num_positives, np.float64)
    n = np.asarray(num_candidates, np.float64)
    miss = np.ones_like(p)
    for i in range(int(k)):
        miss *= np.clip(np.divide(n - p - i, n - i, out=np.zeros_like(p), where=n - i > 0), 0.0, 1.0)
    return 1.0 - miss


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query outcomes; :meth:`summary` gives the reported numbers."""

    average_precision: np.ndarray  # (Nq,) float64; nan for a query without positives
    first_positive_rank: np.ndarray  # (Nq,) int64 1-based rank of the best positive among kept entries; 0 = none
    num_positives: np.ndarray  # (Nq,) int64 positives left after the junk rule
    num_candidates: np.ndarray  # (Nq,) int64 gallery entries left after the junk rule
    ranks: tuple[int, ...] = DEFAULT_RANKS

    @property
    def valid(self) -> np.ndarray:
        """Queries that count: at least one positive."""
        return self.num_positives > 0

    def summary(self) -> dict[str, float | int]:
        """``{"mAP", "rank{k}"..., "queries", "skipped"}``; mAP / rank-k are nan when no query counts."""
        valid = self.valid
        used = int(valid.sum())
        out: dict[str, float | int] = {"mAP": float(self.average_precision[valid].mean()) if used else float("nan")}
        hits = self.first_positive_rank[valid]
        for k in self.ranks:
            out[f"rank{k}"] = float(np.mean((hits >= 1) & (hits <= k))) if used else float("nan")
        out["queries"] = used
        out["skipped"] = int(len(valid) - used)
        return out

    def chance_summary(self) -> dict[str, float | int]:
        """The expectation of :meth:`summary` for uniformly random scores (same queries and junk)."""
        valid = self.valid
        used = int(valid.sum())
        p, n = self.num_positives[valid], self.num_candidates[valid]
        nan = float("nan")
        out: dict[str, float | int] = {"mAP": float(expected_random_average_precision(p, n).mean()) if used else nan}
        for k in self.ranks:
            out[f"rank{k}"] = float(expected_random_hit_rate(p, n, k).mean()) if used else nan
        out["queries"] = used
        out["skipped"] = int(len(valid) - used)
        return out


def evaluate_retrieval(
    query_features: np.ndarray,
    query_ids: np.ndarray,
    gallery_features: np.ndarray,
    gallery_ids: np.ndarray,
    *,
    junk_rule: JunkRule = "same_camera_same_id",
    query_groups: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    query_times: np.ndarray | None = None,
    gallery_times: np.ndarray | None = None,
    min_gap: float = 0.0,
    query_gallery_index: np.ndarray | None = None,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
    positives: Positives = "all",
    query_tags: np.ndarray | None = None,
    gallery_tags: np.ndarray | None = None,
) -> RetrievalResult:
    """Rank the gallery for every query by cosine similarity; AP and first-hit rank per query.

    Features ``(Nq, d)`` / ``(Ng, d)`` (normalised here); ids ``(Nq,)`` / ``(Ng,)``;
    groups (camera or sequence) and times (frame numbers) as the junk rule needs.
    ``query_gallery_index`` ``(Nq,)``: the gallery index of each query (-1 when it
    is not in the gallery); that entry is always removed. When queries *are* the
    gallery pass ``np.arange(N)`` (or use :func:`evaluate_leave_one_out`). ``positives`` and the tags:
    see the module doc.
    """
    if positives not in POSITIVES:
        raise ValueError(f"positives {positives!r} not one of {POSITIVES}")
    if positives != "all" and (query_tags is None or gallery_tags is None):
        raise ValueError(f"positives={positives!r} needs query_tags and gallery_tags")
    nq, ng = len(query_ids), len(gallery_ids)
    ap = np.full(nq, np.nan)
    first = np.zeros(nq, np.int64)
    num_pos = np.zeros(nq, np.int64)
    num_cand = np.zeros(nq, np.int64)
    if nq == 0 or ng == 0:
        return RetrievalResult(ap, first, num_pos, num_cand, tuple(ranks))
    qf, gf = np.asarray(query_features, np.float32), np.asarray(gallery_features, np.float32)
    if qf.ndim != 2 or gf.ndim != 2 or len(qf) != nq or len(gf) != ng or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features {qf.shape} / {gf.shape} must be (Nq, d) / (Ng, d) for {nq} query "
                         f"and {ng} gallery ids")
    if not (np.isfinite(qf).all() and np.isfinite(gf).all()):
        raise ValueError("features must be finite")
    qf, gf = l2_normalize(qf), l2_normalize(gf)
    self_index = (np.full(nq, -1, np.int64) if query_gallery_index is None
                  else np.asarray(query_gallery_index, np.int64).reshape(-1))
    if len(self_index) != nq:
        raise ValueError(f"query_gallery_index has {len(self_index)} entries for {nq} queries")

    def take(arr: np.ndarray | None, sl: slice) -> np.ndarray | None:
        return None if arr is None else np.asarray(arr).reshape(-1)[sl]

    qid, gid = np.asarray(query_ids).reshape(-1), np.asarray(gallery_ids).reshape(-1)
    columns = np.arange(ng)
    step = max(1, _CHUNK_ELEMENTS // ng)
    for start in range(0, nq, step):
        sl = slice(start, min(start + step, nq))
        rows = np.arange(sl.stop - sl.start)
        junk = junk_mask(junk_rule, qid[sl], gid, query_groups=take(query_groups, sl), gallery_groups=gallery_groups,
                         query_times=take(query_times, sl), gallery_times=gallery_times, min_gap=min_gap)
        same_id = qid[sl, None] == gid[None, :]
        if positives != "all":
            same_tag = take(query_tags, sl)[:, None] == np.asarray(gallery_tags).reshape(1, -1)
            junk |= same_id & (same_tag if positives == "other_tag" else ~same_tag)
        in_gallery = self_index[sl] >= 0
        junk[rows[in_gallery], self_index[sl][in_gallery]] = True
        keep = ~junk
        positive = same_id & keep
        score = np.where(keep, qf[sl] @ gf.T, -np.inf)  # removed entries sort last and score nothing
        order = np.argsort(-score, axis=1, kind="stable")
        score_sorted = np.take_along_axis(score, order, 1)
        pos_sorted = np.take_along_axis(positive, order, 1)
        tp_cum = np.cumsum(pos_sorted, axis=1)
        kept_cum = np.cumsum(np.take_along_axis(keep, order, 1), axis=1)
        # sklearn's AP: one precision per distinct score, read at the last entry of each run of ties
        is_last = np.ones_like(pos_sorted)
        is_last[:, :-1] = score_sorted[:, :-1] != score_sorted[:, 1:]
        run_end = np.minimum.accumulate(np.where(is_last, columns, ng)[:, ::-1], axis=1)[:, ::-1]
        tp_end = np.take_along_axis(tp_cum, run_end, 1)
        kept_end = np.take_along_axis(kept_cum, run_end, 1)
        precision = np.divide(tp_end, kept_end, out=np.zeros(tp_end.shape), where=kept_end > 0)
        n_pos = tp_cum[:, -1]
        has_pos = n_pos > 0
        ap[sl] = np.where(has_pos, (pos_sorted * precision).sum(1) / np.maximum(n_pos, 1), np.nan)
        first_col = np.argmax(pos_sorted, axis=1)
        first[sl] = np.where(has_pos, kept_cum[rows, first_col], 0)
        num_pos[sl] = n_pos
        num_cand[sl] = kept_cum[:, -1]
    return RetrievalResult(ap, first, num_pos, num_cand, tuple(ranks))


def evaluate_leave_one_out(
    features: np.ndarray,
    ids: np.ndarray,
    *,
    junk_rule: JunkRule,
    groups: np.ndarray | None = None,
    times: np.ndarray | None = None,
    min_gap: float = 0.0,
    ranks: tuple[int, ...] = DEFAULT_RANKS,
    positives: Positives = "all",
    tags: np.ndarray | None = None,
) -> RetrievalResult:
    """Every entry is a query against all the others (itself removed): the oracle-box re-ID protocols."""
    n = len(ids)
    return evaluate_retrieval(features, ids, features, ids, junk_rule=junk_rule, query_groups=groups,
                              gallery_groups=groups, query_times=times, gallery_times=times, min_gap=min_gap,
                              query_gallery_index=np.arange(n), ranks=ranks, positives=positives,
                              query_tags=tags, gallery_tags=tags)
