"""What a model does on the real CR/DX radiographs of the shared DICOM corpus (chest and others).

For every CR/DX file with usable pixel data (../shared/dicom-corpus/index.tsv), runs the model as the
node does (preprocessing of the DICOM, flip agreement, quality flag) and prints one line per file: size,
photometric, whether the prediction passed the quality flag (and why not), the column's share of the
image and the Cobb angles when measured. Overlays go to --out so that one can look at them.

    .venv/bin/python bench/corpus_look.py --model spinenode-unetplusplus --out var/corpus-look [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.classes import CLASS_COLOURS, SpineClass
from inference.engine import Engine
from inference.model_card import find_card
from inference.preprocess import UnusableImageError, from_dataset
from inference.settings import InferenceSettings

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "dicom-corpus"
MIN_SIDE = 64  # smaller files are header tests, not radiographs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = InferenceSettings.from_environment(os.environ)  # this script's entry point
    engine = Engine(find_card(args.model, settings.models_dir), runtime=settings.runtime, cache_dir=settings.cache_dir)
    rows = list(csv.DictReader((CORPUS / "index.tsv").open(), delimiter="\t"))
    results = []
    for row in rows:
        if row["modality"] not in ("CR", "DX") or row["has_pixel_data"] != "yes":
            continue
        ds = pydicom.dcmread(CORPUS / "files" / row["filename"])
        try:
            prepared = from_dataset(ds)
        except UnusableImageError as exc:
            results.append({"file": row["filename"], "unusable": str(exc)})
            continue
        if min(prepared.shape) < MIN_SIDE:
            continue
        pred = engine.predict(prepared)
        m = pred.measurements
        results.append(
            {
                "file": row["filename"],
                "size": list(prepared.shape),
                "reliable": pred.quality.reliable,
                "reasons": pred.quality.reasons,
                "column_percent": round(pred.classes["Spine"].coverage_percent, 2),
                "cobb": [round(c.angle_deg, 1) for c in m.cobb] if m else None,
            }
        )
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            grey = (prepared.image * 255).astype(np.uint8)
            rgb = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
            for cls in (SpineClass.V, SpineClass.T1):
                colour = np.array(CLASS_COLOURS[cls][::-1], np.uint8)
                sel = pred.labels == cls
                rgb[sel] = (rgb[sel] // 2 + colour // 2).astype(np.uint8)
            cv2.imwrite(str(args.out / f"{Path(row['filename']).stem}.png"), rgb)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
