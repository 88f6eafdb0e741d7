"""FairMOT's online tracker, vectorised over tracks (numpy only).

``Tracker(TrackerConfig(...), frame_rate=30).update(boxes_xyxy, scores, embeddings)``
returns the frame's active tracks (``ActiveTracks``: boxes_xyxy, track_ids, scores).
"""

from kdtrack.tracker.config import TrackerConfig
from kdtrack.tracker.kalman import KalmanFilter
from kdtrack.tracker.tracker import ActiveTracks, Tracker, filter_output

__all__ = ["ActiveTracks", "KalmanFilter", "Tracker", "TrackerConfig", "filter_output"]
