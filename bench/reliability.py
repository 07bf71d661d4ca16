"""Reliability scenarios against a real node: load, destination outage, crash (SIGKILL) and restart.

Each scenario runs ``spinenode serve`` as a separate process (fresh data directory, its own TOML config),
a dcmtk ``storescp`` destination that keeps every object it receives (``+uf``: unique file names, so a
re-delivery shows as a duplicate), and dcmtk ``storescu`` senders. Phantom DX images carry a canary
PatientName/PatientID that must never appear in the node's log. It prints:

- sent, acknowledged (Success from the node), refused by reason (the peer's status and the audit reason),
- processed (jobs done), delivered (distinct output SOP Instance UIDs received by the destination),
- lost (acknowledged sources without their SEG, SR and SC at the destination), conflicting (a source
  with more than one SOP Instance UID for one kind), duplicated UIDs (re-deliveries of the same UID),
- delivery attempts, 'database is locked' errors, canary hits in the log, file modes, time.

    .venv/bin/python bench/reliability.py load --senders 4 --images 100
    .venv/bin/python bench/reliability.py outage --images 10 --down-s 5
    .venv/bin/python bench/reliability.py crash --images 20
    .venv/bin/python bench/reliability.py all --json

``--model`` picks the model (default: the shipped ``demo-unetplusplus``; ``SPINENODE_MODELS_DIR`` names
another models directory). The exit status is 1 when anything acknowledged was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pydicom import dcmread  # noqa: E402

from dicom_node.testing.peers import free_port, wait_port  # noqa: E402
from inference.data.phantom import make_phantom  # noqa: E402
from inference.data.phantom_dicom import phantom_to_dataset  # noqa: E402

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
KINDS = {SEG_CLASS: "seg", SR_CLASS: "sr", SC_CLASS: "sc"}
CANARY_NAME = "Canaryname^Reliability"
CANARY_ID = "CANARYID-74310"
NODE_AE = "SPINENODE"
DEST_AE = "RELDEST"
TOOL_ENV = {**os.environ, "TCP_NODELAY": "1"}


def make_phantoms(out: Path, n: int, first_seed: int, height: int = 400) -> list[Path]:
    """``n`` phantom DX files with the canary patient identity (never to be logged)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + n):
        ds = phantom_to_dataset(make_phantom(seed, height=height), patient_id=CANARY_ID, patient_name=CANARY_NAME)
        path = out / f"phantom-{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Destination:
    """dcmtk ``storescp`` keeping every object received under a unique name."""

    def __init__(self, folder: Path, port: int | None = None, ae_title: str = DEST_AE, fork: bool = False) -> None:
        self.folder, self.ae_title, self.port = folder, ae_title, port or free_port()
        self.fork = fork  # a process per association, as a PACS accepts them concurrently (several senders)
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def spec(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> None:
        fork = ["--fork"] if self.fork else []
        cmd = ["storescp", *fork, "--aetitle", self.ae_title, "-od", str(self.folder), "+uf", "--accept-all"]
        cmd.append(str(self.port))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=TOOL_ENV)
        wait_port(self.port, 20, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def received(self) -> list[tuple[str, str, set[str]]]:
        """(SOP class, SOP instance UID, referenced SOP instance UIDs) of every file received."""
        out = []
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - a file storescp is still writing
                continue
            out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID), _referenced_uids(ds)))
        return out


def _referenced_uids(ds: Any) -> set[str]:
    """Every ReferencedSOPInstanceUID in the data set (the source image is among them)."""
    refs: set[str] = set()

    def walk(d: Any) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.keyword == "ReferencedSOPInstanceUID":
                refs.add(str(elem.value))

    walk(ds)
    return refs


def spawn_cli(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``spinenode ARGS`` (``python -m dicom_node.cli``) in its own process, appending to ``log``."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=PROJECT,
            env={**os.environ, "TCP_NODELAY": "1"},  # the environment now (TOOL_ENV is the one at import)
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """SIGTERM (if still running), wait ``timeout`` s, else SIGKILL. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


class NodeProcess:
    """``spinenode serve`` in its own process, logging to ``node.log`` (appended across restarts)."""

    def __init__(self, work: Path, model: str, destination: str, **settings: Any) -> None:
        self.work, self.model, self.destination, self.settings = work, model, destination, settings
        self.data_dir = work / "var"
        self.log_path = work / "node.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        s = self.settings
        path = self.work / "node.toml"
        path.write_text(
            "[node]\n"
            f'ae_title = "{NODE_AE}"\nbind = "127.0.0.1"\nport = {self.port}\n'
            f'data_dir = "{self.data_dir}"\nmodel = "{self.model}"\ndestinations = ["{self.destination}"]\n'
            f"workers = {s.get('workers', 1)}\nmax_backlog = {s.get('max_backlog', 5000)}\n"
            f"min_free_disk_mb = {s.get('min_free_disk_mb', 50)}\ndimse_timeout_s = {s.get('dimse_timeout_s', 20)}\n"
            "[retry]\n"
            f"initial_s = {s.get('retry_initial_s', 0.5)}\nmax_s = {s.get('retry_max_s', 2.0)}\n"
            f"max_attempts = {s.get('retry_max_attempts', 200)}\n"
        )
        return path

    def start(self) -> None:
        self.port = free_port()
        config = self._write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT,
                env=os.environ.copy(),
            )
        wait_port(self.port, 180, self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        db = self.data_dir / "spinenode.db"
        if not db.is_file():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return list(con.execute(sql, params))
        finally:
            con.close()


def send(port: int, files: list[Path], calling: str = "RELSCU") -> list[tuple[Path, str]]:
    """C-STORE ``files`` in one dcmtk ``storescu`` association; per file the response ('Success', ...)."""
    proc = subprocess.run(
        ["storescu", "-v", "-aet", calling, "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=TOOL_ENV,
    )
    results: dict[str, str] = {}
    current = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            results[current] = line.split("Received Store Response", 1)[1].strip(" ()")
            current = None
    return [(f, results.get(str(f), "no response")) for f in files]


@dataclass
class Tally:
    sent: list[Path] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # source SOP Instance UIDs answered Success
    lock = threading.Lock()

    def add(self, results: list[tuple[Path, str]], uids: dict[Path, str]) -> None:
        with self.lock:
            for path, response in results:
                self.sent.append(path)
                self.responses.append(response)
                if response == "Success":
                    self.acknowledged.add(uids[path])


def send_concurrently(port: int, batches: list[list[Path]], tally: Tally, uids: dict[Path, str]) -> None:
    threads = [
        threading.Thread(target=lambda b=b, i=i: tally.add(send(port, b, f"RELSCU{i}"), uids))
        for i, b in enumerate(batches)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def settled(node: NodeProcess, acknowledged: int) -> bool:
    """Every acknowledged instance's job finished and no delivery is waiting."""
    jobs = dict(node.query("SELECT state, count(*) FROM jobs GROUP BY state"))
    finished = jobs.get("done", 0) + jobs.get("failed", 0)
    pending = node.query("SELECT count(*) FROM deliveries WHERE state = 'pending'")
    return finished >= acknowledged and sum(jobs.values()) == finished and bool(pending) and pending[0][0] == 0


def wait_settled(node: NodeProcess, dest: Destination, acknowledged: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if settled(node, acknowledged):
            want = 3 * acknowledged
            if len({uid for _, uid, _ in dest.received()}) >= want:
                return
        time.sleep(0.25)
    raise TimeoutError(f"not settled after {timeout} s")


def report(name: str, node: NodeProcess, dest: Destination, tally: Tally, seconds: float, **extra: Any) -> dict:
    """What happened to every instance, from the destination's files, the audit database and the log."""
    received = dest.received()
    times = Counter(uid for _, uid, _ in received)
    acknowledged = tally.acknowledged
    per_source: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for sop_class, uid, refs in received:
        kind = KINDS.get(sop_class)
        if kind is None:
            continue
        for source in refs & acknowledged:
            per_source[source][kind].add(uid)
    lost = sorted(s for s in acknowledged if set(per_source[s]) != {"seg", "sr", "sc"})
    conflicting = sorted(s for s, kinds in per_source.items() if any(len(u) > 1 for u in kinds.values()))
    # the audit database must name the same, single output of each kind per source
    audit = node.query(
        "SELECT i.sop_instance_uid, o.kind, o.sop_instance_uid FROM outputs o JOIN jobs j ON o.job_id = j.id "
        "JOIN instances i ON j.instance_id = i.id WHERE o.kind IN ('seg', 'sr', 'sc')"
    )
    audit_uids: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for source, kind, uid in audit:
        audit_uids[source][kind].add(uid)
    audit_mismatch = sorted(
        s for s in acknowledged if any(audit_uids[s][k] != per_source[s][k] for k in ("seg", "sr", "sc"))
    )
    jobs = dict(node.query("SELECT state, count(*) FROM jobs GROUP BY state"))
    refusals = Counter(
        f"0x{status or 0:04X} {detail}"
        for status, detail in node.query("SELECT status, detail FROM events WHERE kind = 'refused'")
    )
    log = node.log_text()
    locked_events = node.query("SELECT count(*) FROM events WHERE detail LIKE '%database is locked%'")
    data = node.data_dir
    modes = [p for p in [data, *data.rglob("*")] if not p.name.startswith(".tmp-")]
    bad_modes = sorted(
        str(p.relative_to(data.parent))
        for p in modes
        if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)
    )
    attempts = node.query("SELECT count(*) FROM delivery_attempts")
    failed_attempts = node.query("SELECT count(*) FROM delivery_attempts WHERE status IS NULL OR status != 0")
    return {
        "scenario": name,
        "sent": len(tally.sent),
        "acknowledged": len(acknowledged),
        "refused": dict(Counter(r for r in tally.responses if r != "Success")),
        "refused_audit": dict(refusals),
        "processed": jobs.get("done", 0),
        "failed_jobs": jobs.get("failed", 0),
        "delivered": len(times),
        "expected_delivered": 3 * len(acknowledged),
        "lost": len(lost),
        "lost_uids": lost[:10],
        "conflicting": len(conflicting),
        "audit_mismatch": len(audit_mismatch),
        "duplicated_uids": sum(1 for n in times.values() if n > 1),
        "received_files": len(received),
        "delivery_attempts": attempts[0][0] if attempts else 0,
        "failed_delivery_attempts": failed_attempts[0][0] if failed_attempts else 0,
        "db_locked": log.count("database is locked") + (locked_events[0][0] if locked_events else 0),
        "phi_in_log": log.count(CANARY_NAME) + log.count(CANARY_ID) + log.count(CANARY_NAME.replace("^", " ")),
        "bad_file_modes": bad_modes[:10],
        "seconds": round(seconds, 1),
        **extra,
    }


def _uids(files: list[Path]) -> dict[Path, str]:
    return {f: str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def _setup(
    work: Path, model: str, images: int, first_seed: int, height: int, start_destination: bool = True
) -> tuple[list[Path], dict[Path, str], Destination, NodeProcess, Tally]:
    """A scenario's phantoms (and their UIDs), its destination (started unless told), a started node
    sending to it and an empty tally."""
    files = make_phantoms(work / "in", images, first_seed, height)
    uids = _uids(files)
    dest = Destination(work / "dest")
    if start_destination:
        dest.start()
    node = NodeProcess(work, model, dest.spec)
    node.start()
    return files, uids, dest, node, Tally()


def scenario_load(work: Path, model: str, senders: int, images: int, height: int, timeout: float) -> dict:
    """``senders`` concurrent associations of ``images`` each."""
    files, uids, dest, node, tally = _setup(work, model, senders * images, 810000, height)
    try:
        t0 = time.monotonic()
        send_concurrently(node.port, [files[i::senders] for i in range(senders)], tally, uids)
        acked_s = time.monotonic() - t0
        wait_settled(node, dest, len(tally.acknowledged), timeout)
        seconds = time.monotonic() - t0
    finally:
        rc = node.stop()
        dest.stop()
    return report("load", node, dest, tally, seconds, senders=senders, acknowledge_s=round(acked_s, 1), exit=rc)


def scenario_outage(work: Path, model: str, images: int, height: int, timeout: float, down_s: float) -> dict:
    """The destination is down while the results are made, and comes back ``down_s`` later."""
    # the destination is not started yet: connection refused
    files, uids, dest, node, tally = _setup(work, model, images, 820000, height, start_destination=False)
    try:
        t0 = time.monotonic()
        tally.add(send(node.port, files), uids)
        deadline = time.monotonic() + timeout
        while not node.query("SELECT 1 FROM delivery_attempts LIMIT 1") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(down_s)
        failed_before = node.query("SELECT count(*) FROM delivery_attempts")[0][0]
        dest.start()
        wait_settled(node, dest, len(tally.acknowledged), timeout)
        seconds = time.monotonic() - t0
    finally:
        rc = node.stop()
        dest.stop()
    return report("outage", node, dest, tally, seconds, attempts_while_down=failed_before, exit=rc)


def scenario_crash(work: Path, model: str, images: int, height: int, timeout: float) -> dict:
    """SIGKILL the node while it works through an acknowledged batch; restart it; everything arrives."""
    files, uids, dest, node, tally = _setup(work, model, images, 830000, height)
    try:
        t0 = time.monotonic()
        tally.add(send(node.port, files), uids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not node.query("SELECT 1 FROM jobs WHERE state = 'done' LIMIT 1"):
            time.sleep(0.05)
        node.kill()
        unfinished = node.query("SELECT count(*) FROM jobs WHERE state != 'done'")[0][0]
        undelivered = node.query("SELECT count(*) FROM deliveries WHERE state != 'delivered'")[0][0]
        done_at_kill = node.query("SELECT count(*) FROM jobs WHERE state = 'done'")[0][0]
        node.start()
        wait_settled(node, dest, len(tally.acknowledged), timeout)
        seconds = time.monotonic() - t0
    finally:
        rc = node.stop()
        dest.stop()
    recovered = node.query("SELECT count(*) FROM events WHERE kind = 'recovered'")[0][0]
    return report(
        "crash",
        node,
        dest,
        tally,
        seconds,
        done_at_kill=done_at_kill,
        unfinished_at_kill=unfinished,
        undelivered_at_kill=undelivered,
        recovered_jobs=recovered,
        exit=rc,
    )


def format_report(r: dict) -> str:
    lines = [f"== {r['scenario']} ({r['seconds']} s)"]
    for key, value in r.items():
        if key not in ("scenario", "seconds"):
            lines.append(f"  {key:26s} {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=("load", "outage", "crash", "all"))
    ap.add_argument("--senders", type=int, default=4, help="load: concurrent associations")
    ap.add_argument("--images", type=int, help="load: per sender (default 100); outage/crash: total (10/20)")
    ap.add_argument("--height", type=int, default=400, help="phantom height in pixels")
    ap.add_argument("--model", default="demo-unetplusplus")
    ap.add_argument("--down-s", type=float, default=5.0, help="outage: seconds the destination stays down")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for everything to settle")
    ap.add_argument("--work", help="working directory (default: a new temporary one, kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="spinenode-reliability-"))
    scenarios = ("load", "outage", "crash") if args.scenario == "all" else (args.scenario,)
    results = []
    for name in scenarios:
        sub = work / name
        sub.mkdir(parents=True, exist_ok=True)
        if name == "load":
            r = scenario_load(sub, args.model, args.senders, args.images or 100, args.height, args.timeout)
        elif name == "outage":
            r = scenario_outage(sub, args.model, args.images or 10, args.height, args.timeout, args.down_s)
        else:
            r = scenario_crash(sub, args.model, args.images or 20, args.height, args.timeout)
        results.append(r)
        if not args.json:
            print(format_report(r), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"work directory: {work}")
    return 1 if any(r["lost"] or r["conflicting"] or r["audit_mismatch"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
