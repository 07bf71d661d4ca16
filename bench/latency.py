"""Time from C-STORE to delivery, and its parts, on a real node (prints a table; --json for figures).

Starts an in-process node with the chosen model and a dcmtk ``storescp`` destination on loopback, sends
phantom DX images one at a time with dcmtk ``storescu`` (``TCP_NODELAY=1``), and reads the audit database:
C-STORE acknowledged, queue wait, per-stage job timings and delivery. The same
measurement is part of ``spinenode bench`` (``bench.node_bench``), which this script reuses.

    .venv/bin/python bench/latency.py --model demo-unetplusplus --n 5 --height 2500 --width 1300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.node_run import StoreSCP, end_to_end, medians, phantom_files, start_node
from inference.settings import InferenceSettings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo-unetplusplus")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--height", type=int, default=2500)
    ap.add_argument("--width", type=int, default=1300, help="the phantom padded to this many columns")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinenode-bench-"))
    dest = StoreSCP(work / "dest")
    node = None
    try:
        files = phantom_files(work / "in", args.n + 1, args.height, width=args.width)
        settings = InferenceSettings.from_environment(os.environ)  # this script's entry point
        node = start_node(work / "var", args.model, dest, settings=settings)
        rows = end_to_end(node, files)[1:]  # the first image warms up the node and is not counted
    finally:
        if node is not None:
            node.stop()
        dest.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {**medians(rows), "model": args.model, "n": len(rows), "image_size": rows[0]["image_size"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        rows_, cols = rows[0]["image_size"]
        print(f"{args.model}, {len(rows)} images of {rows_}x{cols} (medians, ms)")
        for k, v in medians(rows).items():
            print(f"  {k:20s} {v:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
