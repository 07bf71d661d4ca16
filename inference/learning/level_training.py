"""Training on real radiographs with vertebra landmarks (SpineWeb dataset 16): the node's shipped models.

The network predicts the 19 level classes of ``inference.analysis.levels`` (background, T1..L5, disc); V and T1
follow from them. Recipe (defaults below): AdamW, warm-up then cosine decay over a step count or a
wall-clock budget (whichever ends first, so a run on a busy CPU still finishes on time), batch 4,
loss = cross-entropy over the level classes + soft Dice over the grouped V and T1, every sample a fresh
random view (``inference.data.augment``). Validation after every epoch on the fixed validation split at model
resolution; the best (V IoU + T1 IoU) weights are kept. A checkpoint after every epoch lets an
interrupted run continue with ``resume=True``.
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
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from inference.analysis.levels import DISC_LABEL, LEVEL_CLASS_ORDER, NUM_LEVEL_CLASSES, to_spine_labels
from inference.analysis.metrics import OverlapSummary
from inference.data.augment import Stored, augment
from inference.data.spineweb import SPLIT_SEED, VALIDATION_IMAGES, SpineWeb
from inference.model_card import WEIGHTS_FILE, ModelCard, sha256_of
from inference.networks.architectures import build_model
from inference.preprocess import to_model_input

log = logging.getLogger(__name__)

LR = 1e-3
WEIGHT_DECAY = 1e-4
WARMUP_STEPS = 100
BATCH_SIZE = 4
CE_WEIGHT, DICE_WEIGHT = 0.5, 0.5
BACKGROUND_WEIGHT, T1_WEIGHT = 0.3, 2.0  # cross-entropy class weights; every other level class 1
WORKING_SCALE = 2.0  # stored training images are this many times the model input's height
CHECKPOINT_FILE = "checkpoint.pt"
DATA_CITATION = (
    "SpineWeb dataset 16 (AASCE 2019 / BoostNet training split, 481 AP spine radiographs): Wu H., Bailey C., "
    "Rasoulinejad P., Li S., 'Automatic landmark estimation for adolescent idiopathic scoliosis assessment using "
    "BoostNet', MICCAI 2017. Distributed by SpineWeb for research; this model is for research, not diagnosis."
)


@dataclass
class LevelTrainConfig:
    architecture: str
    encoder: str
    data_dir: Path
    out: Path
    input_size: tuple[int, int] = (448, 160)
    max_steps: int = 6000
    time_budget_s: float | None = None
    lr: float = LR
    batch_size: int = BATCH_SIZE
    seed: int = 0
    init_from: Path | None = None
    threads: int | None = None
    name: str | None = None
    display_name: str | None = None
    resume: bool = False


def class_weights() -> torch.Tensor:
    w = torch.ones(NUM_LEVEL_CLASSES)
    w[0], w[1] = BACKGROUND_WEIGHT, T1_WEIGHT
    return w


def level_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target, weight=class_weights().to(logits.dtype))
    probs = logits.softmax(1)
    t1_p, v_p = probs[:, 1], probs[:, 2:].sum(1)
    t1_t, v_t = (target == 1).float(), (target >= 2).float()
    dice = []
    for p, t in ((v_p, v_t), (t1_p, t1_t)):
        dice.append(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    return CE_WEIGHT * ce + DICE_WEIGHT * torch.stack(dice).mean()


def _store(image: np.ndarray, labels: np.ndarray, height: int) -> Stored:
    rows, cols = image.shape
    width = max(8, int(round(cols * height / rows)))
    img = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    lab = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    return Stored((np.clip(img, 0, 1) * 255).astype(np.uint8), lab)


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None].expand(-1, 3, -1, -1).contiguous()


def validate(module: torch.nn.Module, xs: np.ndarray, ys: np.ndarray) -> dict[str, float]:
    """Dataset-summed V/T1 IoU at model resolution, and the share of images whose T1 IoU exceeds 0.3."""
    module.eval()
    summary = OverlapSummary()
    found = 0
    with torch.inference_mode():
        for i in range(0, len(xs), 8):
            pred = module(_batch(list(xs[i : i + 8]))).argmax(1).numpy().astype(np.uint8)
            for p, y in zip(pred, ys[i : i + 8], strict=True):
                ovs = summary.add(to_spine_labels(p), to_spine_labels(y))
                found += int((ovs["T1"].iou or 0.0) > 0.3)
    module.train()
    return {
        "v_iou": round(summary.summed["V"].iou or 0.0, 4),
        "t1_iou": round(summary.summed["T1"].iou or 0.0, 4),
        "t1_found": round(found / max(1, len(xs)), 4),
    }


def _lr_factor(progress: float, step: int) -> float:
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _init_weights(module: torch.nn.Module, path: Path) -> list[str]:
    """Load every tensor of ``path`` whose name and shape match (e.g. a 3-class model's encoder and decoder)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def train_levels(cfg: LevelTrainConfig) -> ModelCard:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data = SpineWeb(cfg.data_dir)
    train_pos, val_pos = data.split()
    log.info("spineweb16: %s; %d train / %d val", data.summary(), len(train_pos), len(val_pos))
    h, w = cfg.input_size
    store_h = int(h * WORKING_SCALE)
    stored = [_store(img, lab, store_h) for _, img, lab in tqdm(data.iter_samples(train_pos), total=len(train_pos))]
    vx, vy = [], []
    for _, img, lab in tqdm(data.iter_samples(val_pos), total=len(val_pos), desc="validation"):
        vx.append(to_model_input(img, cfg.input_size)[0])
        vy.append(cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST))
    val_x, val_y = np.stack(vx), np.stack(vy)

    module = build_model(cfg.architecture, cfg.encoder, classes=NUM_LEVEL_CLASSES)
    not_initialised: list[str] = []
    if cfg.init_from:
        not_initialised = _init_weights(module, cfg.init_from)
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
        log.info("resumed at step %d (%.0f s trained)", step, elapsed)
    module.train()
    steps_per_epoch = max(1, len(stored) // cfg.batch_size)
    started = time.time() - elapsed
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {cfg.architecture}")

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
            picked = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            views = [augment(rng, stored[i], cfg.input_size) for i in picked]
            x = _batch([v[0] for v in views])
            y = torch.from_numpy(np.stack([v[1] for v in views]).astype(np.int64))
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(progress(), step)
            loss = level_loss(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        figures = validate(module, val_x, val_y)
        figures.update(step=step, minutes=round((time.time() - started) / 60, 1))
        history.append(figures)
        log.info("step %d: %s", step, figures)
        bar.write(f"step {step}: {figures}")
        score = figures["v_iou"] + figures["t1_iou"]
        if score > best:
            best = score
            torch.save(module.state_dict(), cfg.out / WEIGHTS_FILE)
        torch.save(
            {
                "model": module.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "elapsed": time.time() - started,
                "best": best,
                "history": history,
            },
            ckpt_path,
        )
    bar.close()
    train_s = time.time() - started
    module.load_state_dict(torch.load(cfg.out / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    best_row = max(history, key=lambda r: r["v_iou"] + r["t1_iou"])
    name = cfg.name or cfg.out.name
    card = ModelCard(
        name=name,
        display_name=cfg.display_name or name,
        architecture=cfg.architecture,
        encoder=cfg.encoder,
        input_size=cfg.input_size,
        weights_sha256=sha256_of(cfg.out / WEIGHTS_FILE),
        demo=False,
        class_order=list(LEVEL_CLASS_ORDER),
        training={
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "data": DATA_CITATION,
            "data_summary": data.summary(),
            "split": {
                "method": f"by patient, numpy default_rng({SPLIT_SEED}) permutation, first patients up to "
                f"{VALIDATION_IMAGES} images",
                "seed": SPLIT_SEED,
                "train": len(train_pos),
                "validation": len(val_pos),
                "validation_images": [data.records[p].name for p in val_pos],
            },
            "recipe": {
                "classes": "19: background, T1..L5, disc (V = T2..L5 + discs, T1 = T1)",
                "optimizer": "AdamW",
                "lr": cfg.lr,
                "weight_decay": WEIGHT_DECAY,
                "schedule": f"linear warm-up {WARMUP_STEPS} steps, cosine over min(steps, time budget)",
                "batch_size": cfg.batch_size,
                "loss": f"{CE_WEIGHT} CE (background {BACKGROUND_WEIGHT}, T1 {T1_WEIGHT}, others 1) "
                f"+ {DICE_WEIGHT} soft Dice (V, T1)",
                "augmentation": "inference.data.augment: zoom in/out, aspect, rotation, flip, background fill, black "
                "masking, gamma, low contrast, blur, noise, drawn lines, rulers, text",
                "steps": step,
                "max_steps": cfg.max_steps,
                "time_budget_s": cfg.time_budget_s,
                "epochs_equivalent": round(step / steps_per_epoch, 2),
                "seed": cfg.seed,
                "init_from": str(cfg.init_from) if cfg.init_from else None,
                "not_initialised_from_init": not_initialised,
                "disc_label": DISC_LABEL,
            },
            "train_seconds": round(train_s, 1),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
            "best_val_model_resolution": best_row,
            "history": history,
        },
    )
    if cfg.init_from is not None and (cfg.init_from.parent / "model.json").is_file():
        earlier = ModelCard.load(cfg.init_from.parent).training  # staged fine-tuning keeps every stage's record
        if earlier:
            card.training["previous_stages"] = [*earlier.pop("previous_stages", []), earlier]
    card.save(cfg.out)
    return card


def config_from_args(args: Any) -> LevelTrainConfig:  # pragma: no cover - thin glue for the CLI
    return LevelTrainConfig(
        architecture=args.arch,
        encoder=args.encoder,
        data_dir=Path(args.data.partition(":")[2]),
        out=Path(args.out),
        input_size=tuple(args.input_size),
        max_steps=args.steps or 6000,
        time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        init_from=Path(args.init_from) if args.init_from else None,
        threads=args.threads,
        name=args.name,
        display_name=args.display_name,
        resume=args.resume,
    )
