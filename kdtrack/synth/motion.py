"""Walkers in videos: trajectories on the ground plane, entering, turning and leaving.

Positions are foot points in *world* pixels (the static-camera image, or the
larger world canvas of a panning camera). Speed is in body heights per second,
so a walker near the camera moves more pixels per frame than a far one (the
perspective scale). Depth motion (up/down the image) is foreshortened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kdtrack.synth.appearance import Identity
from kdtrack.synth.scene import Camera

DEPTH_FORESHORTENING = 0.35  # image rows moved per pixel of lateral motion at equal ground speed
ENTRY_MARGIN = 0.6  # walkers enter/leave this many body widths outside the frame
MIN_FOOT_DEPTH = 0.3  # walkers keep their feet at least this fraction of (height - horizon) below the horizon


@dataclass
class WalkerState:
    """One walker in one frame (world pixels)."""

    track_id: int
    foot_x: float
    foot_y: float
    height: float
    view: str
    phase: float


@dataclass
class Walker:
    identity: Identity
    track_id: int
    x: float
    y: float
    ux: float  # unit heading, lateral component
    uy: float  # unit heading, depth component (+ = towards the camera)
    speed: float  # body heights per second (0 = standing still)
    phase: float
    static_view: str = "front"
    states: dict[int, WalkerState] = field(default_factory=dict)


def view_from_heading(ux: float, uy: float) -> str:
    """Side view when walking mostly across, front when coming towards the camera, back when leaving."""
    if abs(ux) >= abs(uy):
        return "right" if ux > 0 else "left"
    return "front" if uy > 0 else "back"


def _spawn(rng: np.random.Generator, cam: Camera, identity: Identity, track_id: int, speed_range, at_edge: bool,
           static: bool = False) -> Walker:
    span = cam.height - cam.horizon_y
    y = rng.uniform(cam.horizon_y + MIN_FOOT_DEPTH * span, cam.height * 1.02)
    h = cam.person_height(y, identity.height_scale)
    angle = rng.uniform(-0.6, 0.6) + (0.0 if rng.random() < 0.5 else math.pi)
    if rng.random() < 0.2:  # some walk mostly towards / away from the camera
        angle = (math.pi / 2 if rng.random() < 0.5 else -math.pi / 2) + rng.uniform(-0.4, 0.4)
    ux, uy = math.cos(angle), math.sin(angle)
    if at_edge:
        ux = abs(ux) if rng.random() < 0.5 else -abs(ux)
        margin = ENTRY_MARGIN * h * 0.4
        x = -margin if ux > 0 else cam.width + margin
    else:
        x = rng.uniform(0.05, 0.95) * cam.width
    speed = 0.0 if static else rng.uniform(*speed_range)
    view = str(rng.choice(("front", "left", "right"))) if static else "front"
    return Walker(identity=identity, track_id=track_id, x=float(x), y=float(y), ux=ux, uy=uy, speed=speed,
                  phase=rng.uniform(0, 2 * math.pi), static_view=view)


def simulate_walkers(rng: np.random.Generator, cam: Camera, identities: list[Identity], num_frames: int, fps: float,
                     people_range: tuple[int, int], speed_range: tuple[float, float], stride_frequency: float,
                     turn_prob: float, num_static: int = 0) -> list[Walker]:
    """Simulate ``num_frames`` frames; each walker's ``states`` maps frame index (0-based) -> WalkerState
    for the frames it exists in. Identities are used at most once (one track per identity);
    the first ``num_static`` identities stand still for the whole video."""
    pool = list(identities)
    walkers: list[Walker] = []
    active: list[Walker] = []
    next_id = 1
    for _ in range(min(num_static, len(pool))):
        w = _spawn(rng, cam, pool.pop(0), next_id, speed_range, at_edge=False, static=True)
        next_id += 1
        walkers.append(w)
        active.append(w)
    target = int(rng.integers(people_range[0], people_range[1] + 1))
    while len(active) - num_static < target and pool:
        w = _spawn(rng, cam, pool.pop(0), next_id, speed_range, at_edge=False)
        next_id += 1
        walkers.append(w)
        active.append(w)
    span = cam.height - cam.horizon_y
    y_min, y_max = cam.horizon_y + MIN_FOOT_DEPTH * span, cam.height * 1.05
    for f in range(num_frames):
        for w in list(active):
            h = cam.person_height(w.y, w.identity.height_scale)
            if w.speed > 0:
                if rng.random() < turn_prob:  # turn around: viewpoint flips
                    w.ux, w.uy = -w.ux, -w.uy
                step = w.speed * h / fps  # px per frame at this depth
                w.x += w.ux * step
                w.y += w.uy * step * DEPTH_FORESHORTENING
                if not y_min <= w.y <= y_max:
                    w.uy = -w.uy
                    w.y = float(np.clip(w.y, y_min, y_max))
                w.phase += 2 * math.pi * stride_frequency * w.speed / fps
                view = view_from_heading(w.ux, w.uy)
            else:
                view = w.static_view
            h = cam.person_height(w.y, w.identity.height_scale)
            margin = ENTRY_MARGIN * h * 0.4 + h * 0.25
            if w.x < -margin or w.x > cam.width + margin:
                active.remove(w)  # left the frame for good
                continue
            w.states[f] = WalkerState(w.track_id, w.x, w.y, h, view, w.phase)
        moving = sum(1 for w in active if w.speed > 0)
        if moving < target and pool and rng.random() < 0.3:
            w = _spawn(rng, cam, pool.pop(0), next_id, speed_range, at_edge=True)
            next_id += 1
            walkers.append(w)
            active.append(w)
        if rng.random() < 0.02:
            target = int(rng.integers(people_range[0], people_range[1] + 1))
    return [w for w in walkers if w.states]
