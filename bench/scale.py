"""Scale-out benchmark: images per minute with 1, 2, 3 ... ``spinenode worker`` processes on PostgreSQL.

For each worker count: a fresh database on PostgreSQL (a throwaway cluster started here with Debian's
``initdb``/``pg_ctl``, as the tests do, unless ``--db-url`` names a server whose database may be wiped),
one receiver (``spinenode serve --workers 0``), N worker processes of one thread each, and a dcmtk
``storescp --fork`` destination. Once every worker has loaded its model, ``--images`` phantom DX images are
sent in one ``storescu`` association; the figure is images / minute from the first job queued to the last
job done (``jobs.created_at`` .. ``jobs.finished_at``), and to the last result delivered.

    .venv/bin/python bench/scale.py --images 36 --workers 1 2 3            # shipped default model
    .venv/bin/python bench/scale.py --model demo-deeplabv3plus --json

On a 2-core machine expect the curve to flatten at 2 workers: each worker's model runs on 2 intra-op
threads, so beyond one worker per core they only share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from sqlalchemy import create_engine, text  # noqa: E402

from bench.reliability import (  # noqa: E402
    Destination,
    free_port,
    make_phantoms,
    send,
    spawn_cli,
    stop_process,
    wait_port,
)


def run_round(work: Path, url: str, model: str, workers: int, files: list[Path], timeout: float) -> dict[str, Any]:
    work.mkdir(parents=True)
    dest = Destination(work / "received", fork=True)
    dest.start()
    port = free_port()
    config = work / "node.toml"
    config.write_text(
        "[node]\n"
        f'bind = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "storage"}"\nmodel = "{model}"\n'
        f'destinations = ["{dest.spec}"]\nworkers = 1\nmax_backlog = 5000\nmin_free_disk_mb = 50\n'
        f'[database]\nurl = "{url}"\n'
    )
    engine = create_engine(url)
    procs = [spawn_cli(["serve", "--config", str(config), "--workers", "0"], work / "receiver.log")]
    procs += [spawn_cli(["worker", "--config", str(config)], work / f"worker{i}.log") for i in range(workers)]

    def scalar(sql: str) -> Any:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()

    try:
        wait_port(port, 300, procs[0])
        deadline = time.monotonic() + 300
        while scalar("SELECT count(*) FROM events WHERE kind = 'worker_ready'") < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers not ready; see {work}/*.log")
            time.sleep(0.2)
        sent_at = time.monotonic()
        results = send(port, files)
        ok = sum(r == "Success" for _, r in results)
        deadline = time.monotonic() + timeout
        while True:
            done = scalar("SELECT count(*) FROM jobs WHERE state IN ('done', 'failed')")
            pending = scalar("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            if done >= ok and pending == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done}/{ok} jobs done after {timeout} s")
            time.sleep(0.2)
        wall_s = time.monotonic() - sent_at
        jobs_s = scalar("SELECT EXTRACT(EPOCH FROM max(finished_at) - min(created_at)) FROM jobs")
        delivered_s = scalar(
            "SELECT EXTRACT(EPOCH FROM (SELECT max(delivered_at) FROM deliveries) - (SELECT min(created_at) FROM jobs))"
        )
        with engine.connect() as conn:
            per_worker = {
                f"{h}:{p}": n
                for h, p, n in conn.execute(
                    text("SELECT worker_host, worker_pid, count(*) FROM jobs GROUP BY worker_host, worker_pid")
                )
            }
        failed = scalar("SELECT count(*) FROM jobs WHERE state = 'failed'")
        return {
            "workers": workers,
            "images": ok,
            "failed": failed,
            "jobs_s": round(float(jobs_s), 2),
            "images_per_min": round(60 * ok / float(jobs_s), 1),
            "delivered_s": round(float(delivered_s), 2),
            "images_per_min_delivered": round(60 * ok / float(delivered_s), 1),
            "wall_s": round(wall_s, 2),
            "jobs_per_worker": sorted(per_worker.values(), reverse=True),
        }
    finally:
        for p in procs:
            stop_process(p)
        dest.stop()
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=36)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--model", default="demo-unetplusplus")
    ap.add_argument("--height", type=int, default=2500, help="rows of the phantom DX images")
    ap.add_argument("--db-url", help="a PostgreSQL server to use (its tables are dropped); default: throwaway")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    args = ap.parse_args(argv)
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        raise SystemExit("dcmtk storescu/storescp needed (apt-get install dcmtk)")
    work = Path(tempfile.mkdtemp(prefix="spinenode-scale-"))
    cluster = None
    try:
        if args.db_url is None:
            from tests.pg import PgCluster, pg_bindir

            bindir = pg_bindir()
            if bindir is None:
                raise SystemExit("PostgreSQL server binaries needed (apt-get install postgresql) or --db-url")
            root = Path(tempfile.mkdtemp(prefix="spinenode-pg-"))
            os.chmod(root, 0o755)
            user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
            cluster = PgCluster(root, bindir, free_port(), user)
            cluster.start()
        files = make_phantoms(work / "phantoms", args.images, first_seed=910000, height=args.height)
        rows = []
        for n in args.workers:
            if cluster is not None:
                url = cluster.create_database(f"scale_{n}_{uuid.uuid4().hex[:6]}")
            else:
                url = args.db_url
                engine = create_engine(url)
                with engine.begin() as conn:
                    conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
                engine.dispose()
            if not args.json:
                print(f"{n} worker(s) ...", flush=True)
            rows.append(run_round(work / f"w{n}", url, args.model, n, files, args.timeout))
        result = {
            "model": args.model,
            "images": args.images,
            "height": args.height,
            "cpu_count": os.cpu_count(),
            "load_average_start": os.getloadavg(),
            "rounds": rows,
        }
        if not args.json:
            print(f"\nmodel {args.model}, {args.images} phantom DX images ({args.height} rows), {os.cpu_count()} CPUs")
            print(f"{'workers':>7} {'images/min':>10} {'to delivery':>11} {'jobs s':>7}  jobs per worker")
            for r in rows:
                print(
                    f"{r['workers']:>7} {r['images_per_min']:>10} {r['images_per_min_delivered']:>11} "
                    f"{r['jobs_s']:>7}  {r['jobs_per_worker']}"
                )
            print()
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
