"""Training the top-of-spine pass (``inference.top_pass``) on SpineWeb dataset 16's training split.

Each sample is a window cut from a native-resolution training image the way the node cuts it, around an
anchor placed where a first pass might have put T1: the true T1's centre moved by up to
``MAX_SHIFT_SPANS`` vertebra spacings (mostly upwards, where the first pass's misses lie), sideways and
in width; ``NEGATIVE_P`` of the windows are centred on a vertebra further down (T1 out of view: the
model learns to find none). Rotation, flip and the photometric changes of ``inference.data.augment`` follow.
Three classes: background, V (every other vertebra and disc), T1 (the SpineClass order). Loss:
cross-entropy plus soft Dice of T1. Validation after every epoch on the validation split's windows
(anchors at the true T1 and one spacing above and below it); the best T1 IoU is kept, with a checkpoint
for ``--resume``.
"""

from __future__ import annotations

import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inference.analysis.levels import vertebra_label
from inference.classes import CLASS_NAMES, SpineClass
from inference.data.augment import FLIP_P, ROTATION_DEG, photometric
from inference.data.spineweb import SPLIT_SEED, SpineWeb
from inference.learning.level_training import DATA_CITATION, WARMUP_STEPS, WEIGHT_DECAY, _init_weights
from inference.model_card import WEIGHTS_FILE, ModelCard, sha256_of
from inference.networks.architectures import build_model
from inference.top_pass import MAX_SHIFT_SPANS, TOP_INPUT, Anchor, anchor_of, window, window_matrix

log = logging.getLogger(__name__)

NEGATIVE_P = 0.15  # windows centred on a vertebra further down (no T1 in view)
SHIFT_UP_SHARE = 0.7  # of the displaced windows, this share is moved upwards (C7 taken for T1)
WIDTH_JITTER = 0.3  # log-uniform +-30 % on the anchor's width
SIDEWAYS = 0.3  # anchor moved sideways by up to this many widths
CLASS_WEIGHTS = (0.5, 1.0, 2.0)  # cross-entropy weights of F, V, T1
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TopTrainConfig:
    data_dir: Path
    out: Path
    architecture: str = "deeplabv3plus"
    encoder: str = "mobilenet_v2"
    max_steps: int = 20000
    time_budget_s: float | None = None
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    init_from: Path | None = None
    threads: int | None = None
    name: str = "spinenode-t1-refiner"
    resume: bool = False


def _three(levels: np.ndarray) -> np.ndarray:
    out = np.where(levels > 0, int(SpineClass.V), int(SpineClass.F)).astype(np.uint8)
    out[levels == vertebra_label(0)] = int(SpineClass.T1)
    return out


def _spacing(levels: np.ndarray) -> float:
    """Distance between the T1 and T2 centres."""
    c = [np.nonzero(levels == vertebra_label(k)) for k in (0, 1)]
    return float(np.hypot(c[0][0].mean() - c[1][0].mean(), c[0][1].mean() - c[1][1].mean()))


def sample(rng: np.random.Generator, image: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One training window (float32 image, uint8 three-class labels)."""
    true = anchor_of(levels)
    assert true is not None
    span = _spacing(levels)
    if rng.random() < NEGATIVE_P:
        k = int(rng.integers(3, 17))
        ys, xs = np.nonzero(levels == vertebra_label(k))
        base = Anchor(float(xs.mean()), float(ys.mean()), float(xs.max() - xs.min() + 1))
        shift = 0.0
    else:
        base = true
        shift = rng.uniform(0, MAX_SHIFT_SPANS) * (-1 if rng.random() < SHIFT_UP_SHARE else 1)
        shift *= rng.random() < 0.8  # a fifth of the windows right on T1
    a = Anchor(
        base.x + rng.uniform(-SIDEWAYS, SIDEWAYS) * base.width,
        base.y + shift * span,
        base.width * float(np.exp(rng.uniform(-WIDTH_JITTER, WIDTH_JITTER))),
    )
    m = window_matrix(a, rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    img = photometric(rng, window(image.astype(np.float32) / 255.0, m))
    h, w = TOP_INPUT
    lab = cv2.warpAffine(_three(levels), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    if rng.random() < FLIP_P:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(np.clip(img, 0, 1), np.float32), np.ascontiguousarray(lab)


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None].expand(-1, 3, -1, -1).contiguous()


def top_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target, weight=torch.tensor(CLASS_WEIGHTS, dtype=logits.dtype))
    p = logits.softmax(1)[:, int(SpineClass.T1)]
    t = (target == int(SpineClass.T1)).float()
    return 0.5 * ce + 0.5 * (1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))


def validation_windows(image: np.ndarray, levels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Windows at the true T1 and one vertebra spacing above and below it."""
    true = anchor_of(levels)
    assert true is not None
    span = _spacing(levels)
    out = []
    h, w = TOP_INPUT
    for shift in (-1.0, 0.0, 1.0):
        m = window_matrix(Anchor(true.x, true.y + shift * span, true.width))
        lab = cv2.warpAffine(_three(levels), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        out.append((window(image, m), lab))
    return out


def validate(module: torch.nn.Module, xs: np.ndarray, ys: np.ndarray) -> dict[str, float]:
    module.eval()
    inter = union = 0
    found = 0
    with torch.inference_mode():
        for i in range(0, len(xs), 8):
            pred = module(_batch(list(xs[i : i + 8]))).argmax(1).numpy()
            for p, y in zip(pred, ys[i : i + 8], strict=True):
                a, b = p == int(SpineClass.T1), y == int(SpineClass.T1)
                n_i, n_u = int((a & b).sum()), int((a | b).sum())
                inter, union = inter + n_i, union + n_u
                found += int(n_u > 0 and n_i / n_u > 0.3)
    module.train()
    return {"t1_iou": round(inter / max(1, union), 4), "t1_found": round(found / max(1, len(xs)), 4)}


def train_top(cfg: TopTrainConfig) -> ModelCard:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = SpineWeb(cfg.data_dir)
    train_pos, val_pos = data.split()
    stored = []
    for _, img, lab in tqdm(data.iter_samples(train_pos), total=len(train_pos), desc="load"):
        stored.append(((np.clip(img, 0, 1) * 255).astype(np.uint8), lab))
    vx, vy = [], []
    for _, img, lab in tqdm(data.iter_samples(val_pos), total=len(val_pos), desc="validation"):
        for x, y in validation_windows(img, lab):
            vx.append(x)
            vy.append(y)
    val_x, val_y = np.stack(vx), np.stack(vy)
    module = build_model(cfg.architecture, cfg.encoder, classes=len(CLASS_NAMES))
    not_initialised = _init_weights(module, cfg.init_from) if cfg.init_from else []
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = cfg.out / CHECKPOINT_FILE
    step, elapsed, best, history = 0, 0.0, -1.0, []
    if cfg.resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed, best, history = ck["step"], ck["elapsed"], ck["best"], ck["history"]
        rng = np.random.default_rng([cfg.seed, step])
    module.train()
    steps_per_epoch = max(1, len(stored) // cfg.batch_size)
    started = time.time() - elapsed
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train top pass")

    def progress() -> float:
        p = step / cfg.max_steps
        if cfg.time_budget_s:
            p = max(p, (time.time() - started) / cfg.time_budget_s)
        return p

    while progress() < 1.0:
        order = rng.permutation(len(stored))
        for b in range(steps_per_epoch):
            if progress() >= 1.0:
                break
            views = [sample(rng, *stored[i]) for i in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            x = _batch([v[0] for v in views])
            y = torch.from_numpy(np.stack([v[1] for v in views]).astype(np.int64))
            warm = min(1.0, (step + 1) / WARMUP_STEPS)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress())))
            loss = top_loss(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        figures = validate(module, val_x, val_y)
        figures.update(step=step, minutes=round((time.time() - started) / 60, 1))
        history.append(figures)
        bar.write(f"step {step}: {figures}")
        if figures["t1_iou"] > best:
            best = figures["t1_iou"]
            torch.save(module.state_dict(), cfg.out / WEIGHTS_FILE)
        state = {"model": module.state_dict(), "optimizer": opt.state_dict(), "step": step}
        torch.save(state | {"elapsed": time.time() - started, "best": best, "history": history}, ckpt_path)
    bar.close()
    best_row = max(history, key=lambda r: r["t1_iou"])
    card = ModelCard(
        name=cfg.name,
        display_name="T1 second pass (DeepLabV3+, MobileNetV2), real radiographs",
        architecture=cfg.architecture,
        encoder=cfg.encoder,
        input_size=TOP_INPUT,
        weights_sha256=sha256_of(cfg.out / WEIGHTS_FILE),
        demo=False,
        class_order=list(CLASS_NAMES),
        role="t1-refiner",
        training={
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "data": DATA_CITATION,
            "data_summary": data.summary(),
            "split": {"seed": SPLIT_SEED, "train": len(train_pos), "validation": len(val_pos)},
            "recipe": {
                "task": "T1 in a window around a displaced anchor (inference.top_pass, learning.top_training)",
                "optimizer": "AdamW",
                "lr": cfg.lr,
                "batch_size": cfg.batch_size,
                "loss": f"0.5 CE (F, V, T1 weights {CLASS_WEIGHTS}) + 0.5 soft Dice (T1)",
                "steps": step,
                "time_budget_s": cfg.time_budget_s,
                "epochs_equivalent": round(step / steps_per_epoch, 2),
                "seed": cfg.seed,
                "init_from": str(cfg.init_from) if cfg.init_from else None,
                "not_initialised_from_init": not_initialised,
            },
            "train_seconds": round(time.time() - started, 1),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
            "best_val_windows": best_row,
            "history": history,
        },
    )
    card.save(cfg.out)
    return card


if __name__ == "__main__":  # pragma: no cover - python -m inference.learning.top_training DATA OUT MINUTES [--resume]
    logging.basicConfig(level=logging.INFO)
    args = sys.argv[1:]
    train_top(
        TopTrainConfig(
            data_dir=Path(args[0]),
            out=Path(args[1]),
            time_budget_s=float(args[2]) * 60,
            init_from=Path("models/spinenode-deeplabv3plus/weights.pt"),
            threads=2,
            resume="--resume" in args,
        )
    )
