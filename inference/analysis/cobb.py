"""Cobb angles and T1 tilt from vertebra corners, the way the AASCE 2019 challenge computes them.

Each vertebra's direction is the vector from the midpoint of its left side (TL, BL) to the midpoint of
its right side (TR, BR). The angle between two vertebrae is the angle between their directions (more
than 90 degrees if they are that far apart, as in the challenge's code). The main curve is the largest
angle between any two vertebrae, its end vertebrae the pair that makes it (the upper one first). Two
secondary angles follow from an S-curve test on the centre line (the endplate midpoints): the line's
deviation from the chord between its first and last point changes sign on an S-shaped spine.

* Not S-shaped: the angle between T1 and the main curve's upper end vertebra, and between its lower end
  vertebra and L5.
* S-shaped, main curve in the upper half of the image (the mean height of its end vertebrae's lower
  endplates above the middle): the largest angle between the upper end vertebra and any vertebra above
  it, and between the lower end vertebra and any vertebra below it.
* S-shaped, main curve in the lower half: the largest angle between the upper end vertebra and any
  vertebra above it, then between that vertebra and any vertebra above it.

The three values come in the challenge's order (main, then the two secondary angles), each with its
(upper, lower) end vertebrae as indices into the vertebrae given.

T1 tilt: the angle of T1's upper endplate (TL to TR) to the image horizontal, in degrees, positive when
the endplate rises towards the image's right (counter-clockwise as displayed), negative when it falls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COSINE_DECIMALS = 8  # the challenge rounds each cosine to 8 decimals before the arc cosine


@dataclass(frozen=True)
class CobbAngle:
    angle_deg: float
    upper: int  # index of the upper end vertebra
    lower: int  # index of the lower end vertebra


def directions(corners: np.ndarray) -> np.ndarray:
    """(n, 2) left-to-right vectors of ``corners`` (n, 4, 2) in TL, TR, BL, BR order."""
    left = (corners[:, 0] + corners[:, 2]) / 2
    right = (corners[:, 1] + corners[:, 3]) / 2
    return right - left


def pairwise_angles(vectors: np.ndarray) -> np.ndarray:
    """(n, n) angles in radians (0..pi) between the vectors' directions (not folded to 90 degrees: a pair
    of vertebrae more than 90 degrees apart reads as more than 90, as in the challenge's code)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.arccos(np.clip(np.round(unit @ unit.T, COSINE_DECIMALS), -1.0, 1.0))


def is_s_shaped(corners: np.ndarray) -> bool:
    """Whether the centre line's deviation from its first-to-last chord changes sign."""
    mids = np.concatenate([(corners[:, 0] + corners[:, 1]) / 2, (corners[:, 2] + corners[:, 3]) / 2], axis=1)
    mids = mids.reshape(-1, 2)  # top then bottom endplate midpoint of each vertebra, top to bottom
    first, last = mids[0], mids[-1]
    span = first - last
    span = np.where(np.abs(span) < 1e-12, 1e-12, span)
    dev = (mids[:-2, 1] - last[1]) / span[1] - (mids[:-2, 0] - last[0]) / span[0]
    products = np.outer(dev, dev)
    return bool(products.sum() != np.abs(products).sum())  # equal exactly when no sign change


def cobb_angles(corners: np.ndarray, image_height: float) -> list[CobbAngle]:
    """The main and two secondary Cobb angles of vertebrae ``corners`` (n >= 2, top to bottom, pixels)."""
    n = len(corners)
    ang = pairwise_angles(directions(corners))
    upper = int(np.argmax(ang.max(axis=1)))  # the first vertebra that reaches the largest angle
    lower = int(np.argmax(ang[upper]))
    upper, lower = min(upper, lower), max(upper, lower)
    main = CobbAngle(float(np.degrees(ang[upper, lower])), upper, lower)
    if not is_s_shaped(corners):
        second = CobbAngle(float(np.degrees(ang[0, upper])), 0, upper)
        third = CobbAngle(float(np.degrees(ang[lower, n - 1])), lower, n - 1)
        return [main, second, third]
    bottom_mid = (corners[:, 2] + corners[:, 3]) / 2
    above = int(np.argmax(ang[upper, : upper + 1]))
    second = CobbAngle(float(np.degrees(ang[upper, above])), above, upper)
    if bottom_mid[upper, 1] + bottom_mid[lower, 1] < image_height:  # main curve in the upper half
        below = lower + int(np.argmax(ang[lower, lower:]))
        third = CobbAngle(float(np.degrees(ang[lower, below])), lower, below)
    else:
        higher = int(np.argmax(ang[above, : above + 1]))
        third = CobbAngle(float(np.degrees(ang[above, higher])), higher, above)
    return [main, second, third]


def endplate_tilt_deg(corners: np.ndarray) -> float:
    """Signed angle of the upper endplate (TL to TR) of one vertebra's ``corners`` (4, 2) to the horizontal."""
    dx, dy = corners[1] - corners[0]
    return float(np.degrees(np.arctan2(-dy, dx)))  # image y grows downwards: rising to the right is positive


def smape(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The challenge's SMAPE in percent: mean over images of 100 x sum|t - p| / sum(t + p) (three angles)."""
    t, p = np.asarray(truth, np.float64), np.asarray(predicted, np.float64)
    num = np.abs(t - p).sum(axis=1)
    den = (t + p).sum(axis=1)
    return float(100 * np.mean(np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)))
