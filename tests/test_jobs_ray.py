"""`jobs._ray.map_tasks`: the same results in order, serially and as Ray tasks (partials included)."""

from __future__ import annotations

import functools

import numpy as np

from jobs._ray import map_tasks
from kdtrack.boxes import clip_boxes_xyxy  # an importable pure function (Ray workers import it by name)

BOXES = np.array([[-5.0, -5.0, 50.0, 50.0]], np.float32)


def test_map_tasks_serial_and_ray_agree(ray_session):
    args = [(BOXES, 10), (BOXES, 20), (BOXES, 30)]  # (boxes, width), height by keyword
    expected = [[[0, 0, 10, 40]], [[0, 0, 20, 40]], [[0, 0, 30, 40]]]
    for use_ray in (False, True):
        out = map_tasks(clip_boxes_xyxy, args, use_ray=use_ray, num_cpus=0.25, height=40)
        assert [o.tolist() for o in out] == expected
    part = functools.partial(clip_boxes_xyxy, height=40)
    assert [o.tolist() for o in map_tasks(part, args, use_ray=True, num_cpus=0.25)] == expected
    # a partial's own positional args come first: (boxes) from the partial, (width,) per task
    part = functools.partial(clip_boxes_xyxy, BOXES)
    out = map_tasks(part, [(10,), (20,)], use_ray=True, num_cpus=0.25, height=40)
    assert [o.tolist() for o in out] == expected[:2]
