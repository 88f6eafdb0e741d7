"""The vectorised tracker gives the same tracks as the plain per-track reference transcription."""

from __future__ import annotations

import numpy as np
import pytest
from _reference_tracker import ReferenceTracker, random_walk_scene

from kdtrack.tracker import Tracker, TrackerConfig


@pytest.mark.parametrize("mode", ["both", "boxes", "embeddings"])
@pytest.mark.parametrize("seed, frame_rate", [(0, 30.0), (1, 14.0)])
def test_same_tracks_as_reference(mode, seed, frame_rate):
    # ~100 frames, ~20 people with births/deaths, misses, clutter and noisy embeddings.
    frames = random_walk_scene(100, 20, 32, seed=seed)
    cfg = TrackerConfig(mode=mode)
    fast, ref = Tracker(cfg, frame_rate=frame_rate), ReferenceTracker(cfg, frame_rate=frame_rate)
    seen_ids = set()
    for i, (boxes, scores, emb) in enumerate(frames):
        out = fast.update(boxes, scores, emb)
        ref_boxes, ref_ids, ref_scores = ref.update(boxes, scores, emb)
        assert out.track_ids.tolist() == ref_ids.tolist(), f"frame {i + 1}"
        np.testing.assert_allclose(out.boxes_xyxy, ref_boxes, atol=1e-4, rtol=0, err_msg=f"frame {i + 1}")
        np.testing.assert_allclose(out.scores, ref_scores, rtol=1e-6, err_msg=f"frame {i + 1}")
        seen_ids.update(ref_ids.tolist())
    # The scene must exercise every branch of the algorithm, or the comparison proves little.
    for branch in ("refound", "lost", "confirmed", "unconfirmed_removed", "expired", "duplicates"):
        assert ref.events[branch] > 0, branch
    assert len(seen_ids) > 30
