"""Training with the seed app's recipe, and evaluation at native resolution.

Recipe defaults (from the seed app): AdamW lr 3e-4, weight decay 1e-4, cosine schedule, batch 4, loss
0.6 x class-weighted cross-entropy (F 0.05, V 1, T1 3) + 0.4 x soft Dice over V and T1, horizontal flip
with p=0.5, 70/15/15 split with seed 42, and the checkpoint with the best validation T1 IoU is kept.
"""

from __future__ import annotations

import logging
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

from inference.analysis.metrics import OverlapSummary
from inference.classes import FOREGROUND
from inference.data.datasets import DataSource, Sample, split_indices
from inference.engine import Engine
from inference.model_card import WEIGHTS_FILE, ModelCard, sha256_of
from inference.networks.architectures import build_model
from inference.preprocess import PreparedImage, to_model_input

log = logging.getLogger(__name__)

LR = 3e-4
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 4
CE_WEIGHT, DICE_WEIGHT = 0.6, 0.4
CLASS_WEIGHTS = (0.05, 1.0, 3.0)  # F, V, T1
FLIP_P = 0.5
DEFAULT_INPUT_SIZE = (384, 128)  # (H, W): spine radiographs are tall; small enough to train on a CPU


@dataclass
class TrainConfig:
    architecture: str
    encoder: str
    data: str
    out: Path
    epochs: int = 30
    max_steps: int | None = None
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    lr: float = LR
    batch_size: int = BATCH_SIZE
    seed: int = 0
    data_seed: int = 0
    init_from: Path | None = None
    threads: int | None = None
    name: str | None = None
    display_name: str | None = None
    demo: bool = True


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(CLASS_WEIGHTS, dtype=logits.dtype)
    ce = F.cross_entropy(logits, target, weight=weights)
    probs = logits.softmax(1)
    dice_terms = []
    for c in FOREGROUND:
        p, t = probs[:, int(c)], (target == int(c)).float()
        inter = (p * t).sum()
        dice_terms.append(1 - (2 * inter + 1) / (p.sum() + t.sum() + 1))
    return CE_WEIGHT * ce + DICE_WEIGHT * torch.stack(dice_terms).mean()


def _to_model(sample: Sample, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    x = to_model_input(sample.image, size)[0]  # one grey plane; replicated at batch time
    y = cv2.resize(sample.mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return x.astype(np.float16), y


def _val_t1_iou(module: torch.nn.Module, xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    module.eval()
    summary = OverlapSummary()
    with torch.inference_mode():
        for i in range(0, len(xs), 8):
            x = torch.from_numpy(xs[i : i + 8].astype(np.float32))[:, None].expand(-1, 3, -1, -1).contiguous()
            pred = module(x).argmax(1).numpy().astype(np.uint8)
            for p, y in zip(pred, ys[i : i + 8], strict=True):
                summary.add(p, y)
    module.train()
    return summary.summed["T1"].iou or 0.0, summary.summed["V"].iou or 0.0


def evaluate_engine(engine: Engine, samples: list[Sample] | Any, progress: bool = True) -> dict[str, Any]:
    """Dataset-summed and per-image-mean IoU/Dice of ``engine`` at native resolution."""
    summary = OverlapSummary()
    times: list[float] = []
    for s in tqdm(samples, desc="evaluate", disable=not progress, leave=False):
        pred = engine.predict(PreparedImage(s.image), s.spacing_mm, flip_agreement=False)
        times.append(pred.inference_ms)
        summary.add(pred.labels, s.mask)
    return {
        "model": engine.card.name,
        "n_images": summary.n_images,
        "per_class": summary.to_json(),
        "median_predict_ms": round(float(np.median(times)), 1) if times else None,
    }


def train(cfg: TrainConfig) -> ModelCard:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    source = DataSource.parse(cfg.data, cfg.data_seed)
    train_idx, val_idx, test_idx = split_indices(source.count)
    log.info("data %s: %d train / %d val / %d test", source.describe(), len(train_idx), len(val_idx), len(test_idx))

    def render(indices: list[int], desc: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = [_to_model(s, cfg.input_size) for s in tqdm(source.load(indices), total=len(indices), desc=desc)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    xs, ys = render(train_idx, "render train")
    vx, vy = render(val_idx, "render val") if val_idx else (xs[:0], ys[:0])

    module = build_model(cfg.architecture, cfg.encoder)
    if cfg.init_from:
        module.load_state_dict(torch.load(cfg.init_from, map_location="cpu", weights_only=True), strict=True)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = max(1, len(xs) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    best = (-1.0, -1.0)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    started = time.time()
    step = 0
    bar = tqdm(total=total, desc=f"train {cfg.architecture}")
    while step < total:
        order = rng.permutation(len(xs))
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x = xs[idx].astype(np.float32)
            y = ys[idx].astype(np.int64)
            flip = rng.random(len(idx)) < FLIP_P
            x[flip] = x[flip][:, :, ::-1]
            y[flip] = y[flip][:, :, ::-1]
            xt = torch.from_numpy(np.ascontiguousarray(x))[:, None].expand(-1, 3, -1, -1).contiguous()
            loss = seg_loss(module(xt), torch.from_numpy(np.ascontiguousarray(y)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if (step % steps_per_epoch == 0 or step == total) and len(vx):
                t1, v = _val_t1_iou(module, vx, vy)
                history.append({"step": step, "val_t1_iou": round(t1, 4), "val_v_iou": round(v, 4)})
                log.info("step %d: val T1 IoU %.4f, V IoU %.4f", step, t1, v)
                if (t1, v) > best:
                    best = (t1, v)
                    best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}
                    cfg.out.mkdir(parents=True, exist_ok=True)
                    torch.save(best_state, cfg.out / WEIGHTS_FILE)  # best so far survives an interruption
    bar.close()
    train_s = time.time() - started
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()

    name = cfg.name or cfg.out.name
    cfg.out.mkdir(parents=True, exist_ok=True)
    weights = cfg.out / WEIGHTS_FILE
    torch.save(module.state_dict(), weights)
    card = ModelCard(
        name=name,
        display_name=cfg.display_name or name,
        architecture=cfg.architecture,
        encoder=cfg.encoder,
        input_size=cfg.input_size,
        weights_sha256=sha256_of(weights),
        demo=cfg.demo,
        training={
            "command": " ".join(shlex.quote(a) for a in sys.argv),
            "data": source.describe(),
            "split": {"seed": 42, "train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "recipe": {
                "optimizer": "AdamW",
                "lr": cfg.lr,
                "weight_decay": WEIGHT_DECAY,
                "schedule": "cosine",
                "batch_size": cfg.batch_size,
                "loss": "0.6 weighted CE (0.05,1,3) + 0.4 soft Dice (V,T1)",
                "flip_p": FLIP_P,
                "steps": step,
                "epochs_equivalent": round(step / steps_per_epoch, 2),
                "seed": cfg.seed,
                "init_from": str(cfg.init_from) if cfg.init_from else None,
            },
            "train_seconds": round(train_s, 1),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
            "best_val": {"t1_iou": round(best[0], 4), "v_iou": round(best[1], 4)},
            "history": history,
        },
    )
    if cfg.init_from is not None and (cfg.init_from.parent / "model.json").is_file():
        earlier = ModelCard.load(cfg.init_from.parent).training  # staged fine-tuning keeps every stage's record
        card.training["previous_stages"] = [*earlier.pop("previous_stages", []), earlier]
    card.save(cfg.out)
    if test_idx:
        engine = Engine(card, module)
        card.metrics["test_split"] = evaluate_engine(engine, list(source.load(test_idx)))
    card.cpu_forward_ms = measure_forward_ms(module, cfg.input_size)
    card.save(cfg.out)
    return card


def measure_forward_ms(module: torch.nn.Module, input_size: tuple[int, int], repeats: int = 5) -> float:
    x = torch.rand(1, 3, *input_size)
    with torch.inference_mode():
        module(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            module(x)
            times.append((time.perf_counter() - t) * 1000)
    return round(float(np.median(times)), 1)


def main_train_args_to_config(args: Any) -> TrainConfig:  # pragma: no cover - thin glue for the CLI
    return TrainConfig(
        architecture=args.arch,
        encoder=args.encoder,
        data=args.data,
        out=Path(args.out),
        epochs=args.epochs,
        max_steps=args.steps,
        input_size=tuple(args.input_size),
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        data_seed=args.data_seed,
        init_from=Path(args.init_from) if args.init_from else None,
        threads=args.threads,
        name=args.name,
        display_name=args.display_name,
        demo=not args.not_demo,
    )
