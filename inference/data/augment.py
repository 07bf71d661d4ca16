"""Training augmentation for real radiographs: geometry, intensity and the clutter of real films.

The training crops of SpineWeb are spine-centred; the node meets full-length films (skull, shoulders,
pelvis), close-ups, images masked to the spine with black around it, low contrast, MONOCHROME1 (already
inverted by preprocessing), burned-in text, rulers and hand-drawn lines, and any size or aspect ratio
(the input is resized to the model's size without keeping the aspect). Each sample is one random affine
warp of a stored working-resolution image and its labels straight into the model's input size (zoom in
and out, aspect change, rotation, shift), new background where the warp leaves the image, then intensity
changes and clutter. Labels follow only the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Probabilities and ranges (defaults chosen to cover the node's inputs; documented here, used below).
ZOOM_OUT_P = 0.25  # place the spine in a larger field (full-length film, chest)
ZOOM_OUT_RANGE = (1.0, 2.6)  # field / crop size
ZOOM_IN_P = 0.2  # a close-up of part of the spine
ZOOM_IN_RANGE = (0.35, 0.9)  # window / crop size
ASPECT_JITTER = 0.2  # log-uniform +-20 % change of the aspect ratio
ROTATION_DEG = 8.0
FLIP_P = 0.5
BLACK_MASK_P = 0.12  # everything outside a band around the spine set to black
GAMMA_RANGE = (0.6, 1.7)
LOW_CONTRAST_P = 0.2
NOISE_MAX = 0.04
BLUR_P = 0.25
CLUTTER_P = 0.35  # drawn lines, rulers, burned-in text
BACKGROUND_FILL = -1.0  # marks pixels the warp left empty


@dataclass
class Stored:
    """A training image at working resolution: grey uint8 and its level labels (same size)."""

    image: np.ndarray
    labels: np.ndarray


def _affine(rng: np.random.Generator, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """A 2x3 matrix mapping source pixels to the (H, W) destination."""
    sh, sw = src
    dh, dw = dst
    # the source window (in source pixels) that will fill the destination
    win_h, win_w = float(sh), float(sw)
    cy, cx = sh / 2, sw / 2
    r = rng.random()
    if r < ZOOM_OUT_P:
        f = rng.uniform(*ZOOM_OUT_RANGE)
        fx = f * rng.uniform(1.0, 1.8)  # films are wider than the spine crop more than they are taller
        win_h, win_w = sh * f, sw * fx
        cy += rng.uniform(-0.35, 0.35) * (win_h - sh)
        cx += rng.uniform(-0.3, 0.3) * (win_w - sw)
    elif r < ZOOM_OUT_P + ZOOM_IN_P:
        f = rng.uniform(*ZOOM_IN_RANGE)
        win_h, win_w = sh * f, sw * min(1.0, f * rng.uniform(1.0, 1.8))
        cy = rng.uniform(win_h / 2, sh - win_h / 2)
        cx = rng.uniform(win_w / 2, sw - win_w / 2)
    else:  # near the dataset's own framing
        win_h *= rng.uniform(0.9, 1.15)
        win_w *= rng.uniform(0.9, 1.3)
        cy += rng.uniform(-0.05, 0.05) * sh
        cx += rng.uniform(-0.08, 0.08) * sw
    win_w *= float(np.exp(rng.uniform(-ASPECT_JITTER, ASPECT_JITTER)))
    sx, sy = dw / win_w, dh / win_h
    angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    c, s = np.cos(angle), np.sin(angle)
    # translate centre to origin, rotate, scale, move to the destination centre
    rot = np.array([[c, -s], [s, c]])
    lin = np.diag([sx, sy]) @ rot
    offset = np.array([dw / 2, dh / 2]) - lin @ np.array([cx, cy])
    return np.hstack([lin, offset[:, None]])


def _background(rng: np.random.Generator, shape: tuple[int, int], level: float) -> np.ndarray:
    """Smooth random tissue-like field around ``level``."""
    h, w = shape
    coarse = rng.normal(level, 0.12, size=(max(2, h // 48), max(2, w // 48))).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 0.02, size=shape).astype(np.float32)
    return np.clip(field, 0, 1)


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    h, w = img.shape
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 3)
        value = float(rng.choice([0.0, 1.0, rng.uniform(0.6, 1.0)]))
        if kind == 0:  # a hand-drawn line (Cobb lines run across the spine)
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(p1[1] + rng.integers(-h // 6, h // 6)))
            cv2.line(img, p1, p2, value, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:  # a ruler: a bar with ticks
            x = int(rng.integers(0, w))
            y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
            cv2.line(img, (x, y0), (x, y1), value, 1)
            for y in range(y0, y1, int(rng.integers(3, 8))):
                cv2.line(img, (x, y), (x + int(rng.integers(2, 6)), y), value, 1)
        else:  # burned-in text
            text = "".join(rng.choice(list("ABCDEFGHIJKLMNOPRSTUVWXYZ0123456789 :/.-"), int(rng.integers(3, 12))))
            org = (int(rng.integers(0, max(1, w - 20))), int(rng.integers(8, h)))
            cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.2, 0.5)), value, 1)


def photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Intensity changes and clutter of one float32 view in [0, 1] (gamma, contrast, blur, lines, noise)."""
    img = np.clip(img, 0, 1) ** rng.uniform(*GAMMA_RANGE)
    if rng.random() < LOW_CONTRAST_P:
        lo = rng.uniform(0.0, 0.4)
        img = lo + img * rng.uniform(0.25, 0.6)
    else:
        img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    if rng.random() < BLUR_P:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    if rng.random() < CLUTTER_P:
        _clutter(rng, img)
    return (img + rng.normal(0, rng.uniform(0, NOISE_MAX), img.shape)).astype(np.float32)


def augment(rng: np.random.Generator, stored: Stored, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One random training view: float32 image (H, W) in [0, 1] and uint8 labels (H, W)."""
    h, w = size
    m = _affine(rng, stored.image.shape, size)
    src = stored.image.astype(np.float32) / 255.0
    img = cv2.warpAffine(
        src, m, (w, h), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND_FILL
    )
    labels = cv2.warpAffine(stored.labels, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    empty = img < 0
    if rng.random() < BLACK_MASK_P:  # masked to the spine: black outside a band around the column
        band = cv2.dilate((labels > 0).astype(np.uint8), np.ones((1, int(rng.integers(w // 10, w // 3) + 1)), np.uint8))
        band = cv2.dilate(band, np.ones((int(rng.integers(3, h // 8)), 1), np.uint8))
        img[band == 0] = 0.0
        img[empty] = 0.0
    elif empty.any():
        level = float(np.median(src)) * rng.uniform(0.5, 1.1) if rng.random() < 0.8 else 0.0
        img[empty] = _background(rng, (h, w), level)[empty]
    img = photometric(rng, img)
    if rng.random() < FLIP_P:
        img, labels = img[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(np.clip(img, 0, 1), dtype=np.float32), np.ascontiguousarray(labels)
