"""A synthetic AP full-spine radiograph phantom with exact V and T1 masks.

Each image is drawn from a seeded random generator, so ``make_phantom(seed)`` always gives the same
picture, mask and true Cobb angle. The picture is built as an attenuation map (soft-tissue envelope,
lungs, vertebral bodies with a cortical rim, pedicles and spinous processes, ribs with the first pair at
T1, clavicles, pelvis, an optional skull base) that is exposed, blurred, gamma-corrected and given
quantum noise, burned-in markers and a ruler. Masks label the vertebral bodies C3-L5: T1 as class T1,
all others as class V.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.classes import SpineClass

# Vertebrae drawn, top to bottom, with relative body height and width (cervical small, lumbar large).
VERTEBRAE: tuple[str, ...] = (
    *(f"C{i}" for i in range(3, 8)),
    *(f"T{i}" for i in range(1, 13)),
    *(f"L{i}" for i in range(1, 6)),
)
T1_INDEX = VERTEBRAE.index("T1")
DISC_RATIO = 0.28  # disc height as a fraction of the body height above it
MAX_COBB_DEG = 60.0  # scoliosis range: straight to about 60 degrees
ASPECT_RANGE = (2.0, 7.0)  # height / width
HEIGHT_RANGE = (800, 1400)  # native rows
BITS_STORED = 12


def _relative_size(name: str) -> tuple[float, float]:
    """(height, width) of a vertebral body relative to T6, from the level's name."""
    region, level = name[0], int(name[1:])
    if region == "C":
        t = (level - 3) / 4
        return 0.55 + 0.15 * t, 0.85 + 0.2 * t
    if region == "T":
        t = (level - 1) / 11
        return 0.72 + 0.38 * t, 1.05 + 0.35 * t
    t = (level - 1) / 4
    return 1.12 + 0.15 * t, 1.45 + 0.3 * t


@dataclass
class Phantom:
    """One synthetic radiograph: stored pixel values, its label mask and the facts behind it."""

    pixels: np.ndarray  # uint16, BITS_STORED bits, as stored (inverted when MONOCHROME1)
    mask: np.ndarray  # uint8 labels (SpineClass)
    seed: int
    cobb_angle_deg: float
    pixel_spacing_mm: float
    photometric: str  # MONOCHROME2 or MONOCHROME1
    window_center: float
    window_width: float
    levels: list[str] = field(default_factory=lambda: list(VERTEBRAE))

    def display_image(self) -> np.ndarray:
        """8-bit MONOCHROME2 rendering through the stored window (what a viewer would show)."""
        return (unit_image(self) * 255 + 0.5).astype(np.uint8)


def _centreline(rng: np.random.Generator, cobb_target: float) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """Return x-offset(t) (in units of image width) for t in [0,1] along the spine, and its amplitude."""
    n_curves = rng.choice([1, 2], p=[0.5, 0.5])
    freq = 0.5 * n_curves + rng.uniform(-0.1, 0.15)
    phase = rng.uniform(0, 2 * math.pi) if n_curves == 2 else rng.uniform(-0.3, 0.3)

    def shape(t: np.ndarray) -> np.ndarray:
        return np.sin(2 * math.pi * freq * t + phase)

    return shape, freq


def _tilts(shape, amplitude: float, t: np.ndarray, height_px: float, width_px: float) -> np.ndarray:
    dt = 1e-3
    dxdt = (shape(t + dt) - shape(t - dt)) / (2 * dt) * amplitude * width_px
    return np.degrees(np.arctan2(dxdt, height_px))


def make_phantom(seed: int, height: int | None = None) -> Phantom:
    """Draw the phantom of ``seed`` (deterministic)."""
    rng = np.random.default_rng(seed)
    h = int(height or rng.integers(*HEIGHT_RANGE))
    aspect = float(rng.uniform(*ASPECT_RANGE))
    w = max(int(h / aspect), 96)
    pixel_spacing = float(rng.uniform(0.14, 0.4))

    # --- spine geometry -------------------------------------------------------------------------
    skull = rng.random() < 0.4
    top = rng.uniform(0.1, 0.16) if skull else rng.uniform(0.02, 0.08)
    bottom = rng.uniform(0.8, 0.93)
    sizes = np.array([_relative_size(v) for v in VERTEBRAE])
    heights_rel = sizes[:, 0]
    total_rel = heights_rel.sum() + DISC_RATIO * heights_rel[:-1].sum()
    unit = (bottom - top) * h / total_rel  # pixels per relative height unit
    body_h = heights_rel * unit
    width_scale = min(unit * rng.uniform(1.15, 1.4), w / (2.6 * sizes[:, 1].max()))
    body_w = sizes[:, 1] * width_scale
    centres_y = np.empty(len(VERTEBRAE))
    y = top * h
    for i, bh in enumerate(body_h):
        centres_y[i] = y + bh / 2
        y += bh * (1 + DISC_RATIO)

    cobb_target = float(rng.uniform(0, MAX_COBB_DEG)) if rng.random() < 0.85 else 0.0
    shape, _ = _centreline(rng, cobb_target)
    t = (centres_y - centres_y[0]) / (centres_y[-1] - centres_y[0])
    margin_x = (w / 2 - body_w.max() * 0.75) / w  # keep the column inside the image
    lo, hi = 0.0, max(margin_x / 1.0, 1e-4)
    for _ in range(40):  # amplitude for the target Cobb angle (monotonic in amplitude)
        mid = (lo + hi) / 2
        tilt = _tilts(shape, mid, t, centres_y[-1] - centres_y[0], w)
        if tilt.max() - tilt.min() < cobb_target:
            lo = mid
        else:
            hi = mid
    amplitude = lo
    offset = shape(t) * amplitude
    offset -= (offset.max() + offset.min()) / 2
    centre_shift = rng.uniform(-0.06, 0.06)
    centres_x = (0.5 + centre_shift + offset) * w
    centres_x = np.clip(centres_x, body_w.max() * 0.6, w - body_w.max() * 0.6)
    tilts = _tilts(shape, amplitude, t, centres_y[-1] - centres_y[0], w)
    cobb = float(tilts.max() - tilts.min())

    # --- attenuation map ----------------------------------------------------------------------
    att = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), np.uint8)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]

    # Soft-tissue envelope: a body wider than the image on narrow crops.
    body_half = w * rng.uniform(0.42, 0.75)
    body_cx = w * (0.5 + rng.uniform(-0.05, 0.05))
    waist = 1 - 0.12 * np.exp(-(((yy / h) - 0.72) ** 2) / 0.01)
    envelope = np.clip(1 - ((xx - body_cx) / (body_half * waist)) ** 2, 0, 1) ** 0.5
    att += 0.55 * envelope

    # Lungs: less attenuation either side of the thoracic spine.
    t1_y, t12_y = centres_y[T1_INDEX], centres_y[VERTEBRAE.index("T12")]
    for side in (-1, 1):
        lcx = centres_x[T1_INDEX + 5] + side * w * rng.uniform(0.18, 0.26)
        lcy = (t1_y + t12_y) / 2 + (t12_y - t1_y) * 0.08
        lung = ((xx - lcx) / (w * 0.17)) ** 2 + ((yy - lcy) / ((t12_y - t1_y) * 0.62)) ** 2
        att -= 0.28 * np.clip(1 - lung, 0, 1) ** 0.6

    bone = np.zeros((h, w), np.float32)

    def rot_rect(cx: float, cy: float, bw: float, bh: float, angle: float) -> np.ndarray:
        pts = cv2.boxPoints(((cx, cy), (bw, bh), angle))
        return pts.astype(np.float32)

    def rounded_body(cx: float, cy: float, bw: float, bh: float, angle: float) -> np.ndarray:
        """Polygon of a vertebral body: a rectangle with rounded corners and concave sides."""
        n = 10
        r = 0.22 * min(bw, bh)
        pts = []
        corners = [
            (bw / 2 - r, -bh / 2 + r),
            (bw / 2 - r, bh / 2 - r),
            (-bw / 2 + r, bh / 2 - r),
            (-bw / 2 + r, -bh / 2 + r),
        ]
        starts = [-90, 0, 90, 180]
        for (ox, oy), s in zip(corners, starts, strict=True):
            for k in range(n + 1):
                a = math.radians(s + 90 * k / n)
                pts.append((ox + r * math.cos(a), oy + r * math.sin(a)))
        p = np.array(pts, np.float32)
        p[:, 0] *= 1 - 0.06 * np.cos(np.pi * p[:, 1] / bh) ** 2 * (np.abs(p[:, 0]) > bw / 2 - r - 1)
        a = math.radians(angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
        return p @ rot.T + np.array([cx, cy], np.float32)

    density = rng.uniform(0.8, 1.2)
    for i, name in enumerate(VERTEBRAE):
        cx, cy, bw, bh, ang = centres_x[i], centres_y[i], body_w[i], body_h[i], tilts[i]
        poly = rounded_body(cx, cy, bw, bh, -ang)
        label = SpineClass.T1 if i == T1_INDEX else SpineClass.V
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], int(label), lineType=cv2.LINE_8, shift=4)
        layer = np.zeros((h, w), np.float32)
        cv2.fillPoly(layer, [np.round(poly * 16).astype(np.int32)], 0.5 * density, cv2.LINE_AA, shift=4)
        cv2.polylines(
            layer,
            [np.round(poly * 16).astype(np.int32)],
            True,
            0.35 * density,
            max(1, int(bw * 0.05)),
            cv2.LINE_AA,
            shift=4,
        )
        # pedicles (ovals inside the body), spinous process (teardrop below the centre)
        a = math.radians(-ang)
        for side in (-1, 1):
            px = cx + side * bw * 0.3 * math.cos(a)
            py = cy + side * bw * 0.3 * math.sin(a)
            cv2.ellipse(layer, ((px, py), (bw * 0.16, bh * 0.42), -ang), 0.75 * density, 2, cv2.LINE_AA)
        cv2.ellipse(
            layer,
            ((cx - bh * 0.25 * math.sin(a), cy + bh * 0.3), (bw * 0.1, bh * 0.5), -ang),
            0.7 * density,
            -1,
            cv2.LINE_AA,
        )
        # transverse processes (thoracic and lumbar), the ribs attach to T1-T12
        if name[0] != "C":
            tp = bw * (0.75 if name[0] == "L" else 0.62)
            p1 = rot_rect(cx, cy - bh * 0.15, tp * 2, bh * 0.18, -ang)
            cv2.fillConvexPoly(layer, np.round(p1 * 16).astype(np.int32), 0.45 * density, cv2.LINE_AA, 4)
        bone = np.maximum(bone, layer)

    # Ribs: T1..T12 pairs, arcs sweeping out and down; the first rib is short and tight.
    rib_w = max(2, int(body_h[T1_INDEX] * rng.uniform(0.25, 0.35)))
    for k in range(12):
        i = T1_INDEX + k
        cx, cy, bw = centres_x[i], centres_y[i], body_w[i]
        for side in (-1, 1):
            reach = w * (0.14 + 0.02 * k if k == 0 else 0.26 + 0.012 * min(k, 6)) * rng.uniform(0.9, 1.1)
            drop = body_h[i] * (1.0 + 0.45 * k if k else 0.9)
            ts = np.linspace(0, 1, 24)
            xs = cx + side * (bw * 0.55 + reach * np.sin(ts * math.pi * 0.5))
            ys = cy - body_h[i] * 0.3 + drop * (ts**2) - body_h[i] * 0.9 * np.sin(ts * math.pi) * (k < 1)
            pts = np.stack([xs, ys], 1)
            cv2.polylines(
                bone,
                [np.round(pts * 16).astype(np.int32)],
                False,
                0.42 * density,
                rib_w if k else max(2, int(rib_w * 1.3)),
                cv2.LINE_AA,
                shift=4,
            )
            # the anterior, lower-density part of the same rib
            pts2 = np.stack([xs[-1] - side * reach * 0.55 * ts, ys[-1] + drop * 0.25 * ts], 1)
            cv2.polylines(
                bone,
                [np.round(pts2 * 16).astype(np.int32)],
                False,
                0.22 * density,
                max(1, rib_w - 1),
                cv2.LINE_AA,
                shift=4,
            )

    # Clavicles: S-shaped bars from the sternal end (near T1-T2) out and up.
    for side in (-1, 1):
        ts = np.linspace(0, 1, 20)
        x0 = centres_x[T1_INDEX + 1] + side * body_w[T1_INDEX] * 0.7
        y0 = centres_y[T1_INDEX + 1]
        xs = x0 + side * w * 0.4 * ts
        ys = y0 - body_h[T1_INDEX] * (1.6 * ts + 0.4 * np.sin(ts * 2 * math.pi))
        cv2.polylines(
            bone,
            [np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)],
            False,
            0.5 * density,
            max(3, int(rib_w * 1.6)),
            cv2.LINE_AA,
            shift=4,
        )

    # Pelvis: iliac wings and sacrum below L5.
    l5 = len(VERTEBRAE) - 1
    sac_top = centres_y[l5] + body_h[l5] * 0.75
    for side in (-1, 1):
        cxp = centres_x[l5] + side * body_w[l5] * 1.6
        cv2.ellipse(
            bone,
            ((cxp, sac_top + body_h[l5] * 1.8), (body_w[l5] * 2.4, body_h[l5] * 4.2), side * 25),
            0.35 * density,
            -1,
            cv2.LINE_AA,
        )
        cv2.ellipse(
            bone,
            ((cxp, sac_top + body_h[l5] * 1.8), (body_w[l5] * 2.4, body_h[l5] * 4.2), side * 25),
            0.6 * density,
            max(2, rib_w),
            cv2.LINE_AA,
        )
    sac = np.array(
        [
            [centres_x[l5] - body_w[l5] * 0.6, sac_top],
            [centres_x[l5] + body_w[l5] * 0.6, sac_top],
            [centres_x[l5], sac_top + body_h[l5] * 3.5],
        ],
        np.float32,
    )
    cv2.fillConvexPoly(bone, np.round(sac * 16).astype(np.int32), 0.45 * density, cv2.LINE_AA, 4)

    if skull:  # skull base and mandible above C3
        cy = centres_y[0] - body_h[0] * rng.uniform(2.2, 3.2)
        cv2.ellipse(bone, ((centres_x[0], cy), (w * 0.7, body_h[0] * 5), 0), 0.6 * density, -1, cv2.LINE_AA)
        cv2.ellipse(
            bone,
            ((centres_x[0], cy + body_h[0] * 1.6), (w * 0.45, body_h[0] * 2.2), 0),
            0.7 * density,
            max(3, rib_w),
            cv2.LINE_AA,
        )

    att += bone * envelope.clip(0.3, 1)
    # Anatomical noise: low-frequency texture over everything.
    tex = cv2.resize(
        rng.normal(0, 1, (max(h // 40, 2), max(w // 40, 2))).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    att += 0.04 * tex

    # --- acquisition -------------------------------------------------------------------------
    exposure = rng.uniform(1.6, 3.2)
    heel = 1 + rng.uniform(-0.15, 0.15) * (yy / h - 0.5)
    signal = 1 - np.exp(-np.clip(att, 0, None) * exposure * heel)  # "brightness": bone bright
    blur = rng.uniform(0.4, 2.0)
    signal = cv2.GaussianBlur(signal, (0, 0), blur)
    signal = np.clip(signal, 0, 1) ** rng.uniform(0.7, 1.4)
    noise = rng.uniform(0.005, 0.035)
    signal = signal + rng.normal(0, noise, signal.shape).astype(np.float32) * np.sqrt(signal + 0.05)
    signal = np.clip(signal, 0, 1)

    # Burned-in marker letter and a ruler with ticks on one edge.
    font_scale = max(w, 200) / 300
    mx = int(w * rng.uniform(0.05, 0.2)) if rng.random() < 0.5 else int(w * rng.uniform(0.7, 0.82))
    cv2.putText(
        signal,
        str(rng.choice(["L", "R"])),
        (mx, int(h * rng.uniform(0.03, 0.08)) + 20),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale,
        1.0,
        max(1, int(font_scale * 2)),
        cv2.LINE_AA,
    )
    if rng.random() < 0.6:
        rx = int(w * rng.uniform(0.02, 0.06)) if rng.random() < 0.5 else int(w * rng.uniform(0.9, 0.95))
        cv2.line(signal, (rx, int(h * 0.1)), (rx, int(h * 0.9)), 0.95, 2)
        step = max(int(10 / pixel_spacing), 6)
        for k, ty in enumerate(range(int(h * 0.1), int(h * 0.9), step)):
            cv2.line(signal, (rx, ty), (rx + (8 if k % 5 == 0 else 4), ty), 0.95, 1)

    max_value = 2**BITS_STORED - 1
    stored = np.round(signal * max_value).astype(np.uint16)
    lo_v, hi_v = np.percentile(stored, [1, 99.5])
    centre, width = float((lo_v + hi_v) / 2), float(max(hi_v - lo_v, 16))
    photometric = "MONOCHROME1" if rng.random() < 0.25 else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(np.uint16)
        centre = max_value - centre
    return Phantom(stored, mask, seed, round(cobb, 2), round(pixel_spacing, 4), photometric, centre, width)


def unit_image(p: Phantom) -> np.ndarray:
    """The phantom as the DICOM preprocessing sees it: stored window applied, MONOCHROME1 inverted."""
    from inference.preprocess import window_to_unit

    unit = window_to_unit(p.pixels, p.window_center, p.window_width)
    return 1.0 - unit if p.photometric == "MONOCHROME1" else unit
