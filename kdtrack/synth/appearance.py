"""The identity bank: persistent per-person appearance, plus hard-negative clones.

An ``Identity`` fixes everything that makes a person recognisable (clothing
colours and patterns, skin and hair, body proportions, bag, hat, chest print).
Hard negatives are clones of another identity with exactly one attribute
changed (``changed_attribute``), so re-identification must look at details.
Colours are BGR uint8 triples (OpenCV order).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from kdtrack.synth.rng import unit_rng

Color = tuple[int, int, int]

TOP_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "two_tone")
BOTTOM_STYLES = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "bald")
SLEEVES = ("long", "short")
BAGS = ("none", "backpack", "shoulder")
HATS = ("none", "cap", "beanie")
SKIN_TONES: tuple[Color, ...] = (
    (189, 224, 255), (160, 200, 240), (120, 170, 225), (90, 135, 198), (60, 95, 150), (45, 65, 100),
)
HAIR_COLORS: tuple[Color, ...] = (
    (20, 20, 20), (30, 45, 70), (40, 70, 120), (80, 140, 200), (160, 160, 160), (30, 30, 110),
)

# Attributes a hard-negative clone may change (one each); colours move by a visible hue step.
CLONE_ATTRIBUTES = (
    "top_color", "bottom_color", "top_pattern", "bottom_style", "hair_color", "sleeves", "bag", "hat",
    "logo_color",
)
MIN_CLONE_HUE_SHIFT = 20  # OpenCV hue units (0..180): clone colours differ by at least 40 degrees
MAX_CLONE_TRIES = 1000  # redraws of a clone that would duplicate an existing appearance


@dataclass(frozen=True)
class Identity:
    """Appearance of one person; ``pid`` >= 1 for bank members, -1 for anonymous passers-by."""

    pid: int
    top_color: Color
    top_color2: Color  # second colour of patterned tops
    top_pattern: str  # one of TOP_PATTERNS
    sleeves: str  # one of SLEEVES
    bottom_color: Color
    bottom_style: str  # one of BOTTOM_STYLES
    shoe_color: Color
    skin_color: Color
    hair_color: Color
    hair_style: str  # one of HAIR_STYLES
    height_scale: float  # body height relative to the perspective average (0.85..1.15)
    width_scale: float  # body width relative to average (0.85..1.2)
    bag: str  # one of BAGS; a backpack shows mostly from behind
    bag_color: Color
    hat: str  # one of HATS
    hat_color: Color
    logo_color: Color | None  # chest print, visible from the front only
    clone_of: int = -1  # pid this identity was cloned from (hard negative), -1 if original
    changed_attribute: str = ""  # the one attribute that differs from ``clone_of``


APPEARANCE_FIELDS = tuple(
    f.name for f in dataclasses.fields(Identity) if f.name not in ("pid", "clone_of", "changed_attribute")
)


def hsv_color(hue: float, sat: float, val: float) -> Color:
    """OpenCV HSV (hue 0..180, sat/val 0..255) -> BGR triple."""
    hsv = np.array([[[hue % 180, sat, val]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return (int(b), int(g), int(r))


def _random_cloth_color(rng: np.random.Generator) -> Color:
    if rng.random() < 0.25:  # greys, black, white: common in real clothing
        v = int(rng.integers(25, 235))
        return (v, v, v)
    return hsv_color(rng.integers(0, 180), rng.integers(90, 256), rng.integers(60, 240))


def _shift_color(rng: np.random.Generator, color: Color) -> Color:
    """A clearly different colour: hue moved by >= MIN_CLONE_HUE_SHIFT, or a grey made colourful."""
    hsv = cv2.cvtColor(np.array([[color]], np.uint8), cv2.COLOR_BGR2HSV)[0, 0].astype(int)
    hue, sat, val = hsv
    if sat < 60:  # grey: give it a colour
        return hsv_color(rng.integers(0, 180), rng.integers(120, 256), max(val, 80))
    shift = int(rng.integers(MIN_CLONE_HUE_SHIFT, 90 - MIN_CLONE_HUE_SHIFT + 1)) * (1 if rng.random() < 0.5 else -1)
    return hsv_color(hue + shift, sat, max(val, 70))


def random_identity(rng: np.random.Generator, pid: int) -> Identity:
    """Draw a fresh appearance."""
    top = _random_cloth_color(rng)
    return Identity(
        pid=pid,
        top_color=top,
        top_color2=_random_cloth_color(rng),
        top_pattern=str(rng.choice(TOP_PATTERNS, p=[0.4, 0.2, 0.1, 0.15, 0.15])),
        sleeves=str(rng.choice(SLEEVES)),
        bottom_color=_random_cloth_color(rng),
        bottom_style=str(rng.choice(BOTTOM_STYLES, p=[0.65, 0.2, 0.15])),
        shoe_color=(lambda v: (v, v, v))(int(rng.integers(10, 200))),
        skin_color=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
        hair_color=HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))],
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.5, 0.4, 0.1])),
        height_scale=float(np.round(rng.uniform(0.85, 1.15), 3)),
        width_scale=float(np.round(rng.uniform(0.85, 1.2), 3)),
        bag=str(rng.choice(BAGS, p=[0.5, 0.3, 0.2])),
        bag_color=_random_cloth_color(rng),
        hat=str(rng.choice(HATS, p=[0.7, 0.15, 0.15])),
        hat_color=_random_cloth_color(rng),
        logo_color=_random_cloth_color(rng) if rng.random() < 0.4 else None,
    )


def _changed_value(rng: np.random.Generator, base: Identity, attribute: str) -> object:
    old = getattr(base, attribute)
    if attribute in ("top_color", "bottom_color"):
        return _shift_color(rng, old)
    if attribute == "hair_color":
        return HAIR_COLORS[(HAIR_COLORS.index(old) + int(rng.integers(1, len(HAIR_COLORS)))) % len(HAIR_COLORS)]
    if attribute == "logo_color":
        return _random_cloth_color(rng) if old is None else None
    domain = {
        "top_pattern": TOP_PATTERNS, "bottom_style": BOTTOM_STYLES, "sleeves": SLEEVES, "bag": BAGS, "hat": HATS,
    }[attribute]
    return str(rng.choice([v for v in domain if v != old]))


def make_clone(rng: np.random.Generator, base: Identity, pid: int, attribute: str) -> Identity:
    """``base`` with only ``attribute`` changed (a hard negative)."""
    if attribute not in CLONE_ATTRIBUTES:
        raise ValueError(f"cannot clone on attribute {attribute!r}; known: {CLONE_ATTRIBUTES}")
    value = _changed_value(rng, base, attribute)
    if attribute == "top_pattern" and base.top_color2 == base.top_color:
        raise ValueError("pattern clone needs two distinct top colours")
    return dataclasses.replace(base, pid=pid, clone_of=base.pid, changed_attribute=attribute, **{attribute: value})


def appearance_key(ident: Identity) -> tuple:
    """Everything visible about a person: two identities with equal keys would be indistinguishable."""
    return tuple(getattr(ident, name) for name in APPEARANCE_FIELDS)


def clone_attributes(base: Identity) -> list[str]:
    """Attributes a clone of ``base`` may change so that the change stays visible."""
    return [
        a for a in CLONE_ATTRIBUTES
        if not (a == "top_pattern" and base.top_color == base.top_color2)
        and not (a == "hair_color" and base.hair_style == "bald")  # would be invisible
    ]


def make_identity_bank(seed: int, num_identities: int, hard_negative_fraction: float) -> list[Identity]:
    """``num_identities`` people with pids 1..N; the last ``round(fraction * N)`` are clones of earlier ones."""
    if num_identities < 1:
        raise ValueError(f"num_identities must be >= 1, got {num_identities}")
    if not 0.0 <= hard_negative_fraction < 1.0:
        raise ValueError(f"hard_negative_fraction must be in [0, 1), got {hard_negative_fraction}")
    rng = unit_rng(seed, "identity_bank")
    num_clones = int(round(hard_negative_fraction * num_identities))
    num_base = num_identities - num_clones
    bank = [random_identity(rng, pid) for pid in range(1, num_base + 1)]
    looks = {appearance_key(ident) for ident in bank}
    for pid in range(num_base + 1, num_identities + 1):
        for _ in range(MAX_CLONE_TRIES):  # two clones making the same change would be identical twins
            base = bank[int(rng.integers(num_base))]
            clone = make_clone(rng, base, pid, str(rng.choice(clone_attributes(base))))
            if appearance_key(clone) not in looks:
                break
        else:
            raise ValueError(f"no distinct clone after {MAX_CLONE_TRIES} tries; lower hard_negative_fraction")
        looks.add(appearance_key(clone))
        bank.append(clone)
    return bank


def mannequin(rng: np.random.Generator) -> Identity:
    """A grey person-like figure (MOT class 8 distractor): no colours, bald, no accessories."""
    v = int(rng.integers(110, 200))
    grey = (v, v, v)
    return Identity(
        pid=-1, top_color=grey, top_color2=grey, top_pattern="solid", sleeves="long", bottom_color=grey,
        bottom_style="trousers", shoe_color=grey, skin_color=grey, hair_color=grey, hair_style="bald",
        height_scale=1.0, width_scale=0.9, bag="none", bag_color=grey, hat="none", hat_color=grey,
        logo_color=None,
    )


def appearance_differences(a: Identity, b: Identity) -> list[str]:
    """Names of appearance fields that differ between two identities."""
    return [name for name in APPEARANCE_FIELDS if getattr(a, name) != getattr(b, name)]
