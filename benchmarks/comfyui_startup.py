#!/usr/bin/env python
"""jobs-index inside a real ComfyUI: fresh starts checked, start-up cost and the
frontend's own requests measured.

Needs a ComfyUI checkout and the Python that runs it, with this repository's
``requirements.txt`` installed there. The node is installed the ComfyUI way: this
repository (or ``--node DIR``, e.g. a ``git clone`` of it) linked as
``<base>/custom_nodes/jobs-index`` of a ComfyUI ``--base-directory`` under
``benchmarks/_work/comfyui/``; every start gets a new ``--user-directory`` (so ComfyUI
migrates a new ``comfyui.db`` each time) and a free loopback port.

``verify``: K fresh starts with the node (optionally ``--enable-assets``): each must
answer ``/api/jobs``, run one job (``--workflow``, API format) that the index then
lists as completed, stop with exit code 0; afterwards ``comfyui.db`` is at ComfyUI's
Alembic head with exactly the tables a start without the node creates, and the
node's file holds only jobs-index's tables; no ``Failed to initialize database`` and
no jobs-index ERROR in the log.

``measure``: process start -> first ``/api/jobs`` answer, without the node, with the
node on a new (empty) index, and with the node on a large index (SQLite; PostgreSQL
with ``--pg``), built by ``bench.py``'s tooling (``jobs-index import``) and reused
across runs; then, on the large index, the frontend's requests
(``status=completed,failed,cancelled&limit=64&offset=N`` for deeper and deeper N, and
the queue's ``status=in_progress,pending``) over HTTP through ComfyUI.

Usage::

    .venv/bin/python benchmarks/comfyui_startup.py verify --comfyui /work/comfy/ComfyUI \\
        --python /work/comfy/venv/bin/python --starts 10 --workflow /work/comfy/wf_save.json
    .venv/bin/python benchmarks/comfyui_startup.py measure --comfyui ... --python ... \\
        --jobs 1000000 --pg postgresql+psycopg://postgres@127.0.0.1:5432/test

Writes ``benchmarks/results/comfyui-<verify|startup>.md`` and a ``.json`` twin.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

WORK = ROOT / "benchmarks" / "_work" / "comfyui"
RESULTS = ROOT / "benchmarks" / "results"
FRONTEND = "status=completed,failed,cancelled&limit=64&offset={}"
QUEUE = "status=in_progress,pending"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] (load {os.getloadavg()[0]:.1f}) {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, None


def post(port: int, path: str, body: bytes) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _default_sigint() -> None:
    """A command started in the background by a non-interactive shell ignores SIGINT,
    and Python then installs no KeyboardInterrupt handler: give ComfyUI its Ctrl-C back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def base_directory(node: Path | None) -> Path:
    """A ComfyUI base directory whose custom_nodes/ holds only ``node`` as jobs-index
    (or nothing): one per node directory."""
    if node is None:
        base = WORK / "base-without-node"
    else:
        node = node.resolve()
        base = WORK / f"base-{node.name}-{hashlib.sha1(str(node).encode()).hexdigest()[:8]}"
    custom = base / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    link = custom / "jobs-index"
    if node is not None and not link.exists():
        link.symlink_to(node, target_is_directory=True)
    return base


class Comfy:
    """One ComfyUI process on a new user directory."""

    def __init__(self, args, *, node: Path | None, env: dict | None = None, extra: tuple = ()) -> None:
        self.port = free_port()
        self.user = WORK / "users" / uuid.uuid4().hex[:12]
        self.user.mkdir(parents=True)
        self.log_path = self.user.with_suffix(".log")
        command = [
            args.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(base_directory(node)),
            "--user-directory",
            str(self.user),
            "--database-url",
            f"sqlite:///{self.user / 'comfyui.db'}",
            *extra,
        ]
        environ = {key: value for key, value in os.environ.items() if not key.startswith("JOBS_INDEX_")}
        environ.update(env or {})
        self.started = time.perf_counter()
        self.out = self.log_path.open("w")
        self.proc = subprocess.Popen(
            command,
            cwd=args.comfyui,
            env=environ,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint,
        )

    def wait(self, predicate, timeout: float = 300.0, interval: float = 0.02) -> float | None:
        """Seconds from the process start until ``predicate()`` holds (None: timeout/exit)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if predicate():
                return time.perf_counter() - self.started
            if self.proc.poll() is not None:
                return None
            time.sleep(interval)
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds of ComfyUI so far, its waited-for children (the node's migration
        child) included: far less sensitive to a busy machine than wall time (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def answers(self, query: str = "limit=1") -> dict | None:
        status, body = get(self.port, f"/api/jobs?{query}", timeout=5)
        return body if status == 200 else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops ComfyUI
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def tables(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        )
    finally:
        conn.close()


def scalar(path: Path, sql: str):
    """The first value ``sql`` reads from ``path``, or None (no file, no such table...)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def comfyui_head(args) -> str:
    code = (
        "from alembic.config import Config; from alembic.script import ScriptDirectory; c = Config(); "
        "c.set_main_option('script_location', 'alembic_db'); "
        "print(ScriptDirectory.from_config(c).get_current_head())"
    )
    return subprocess.run(
        [args.python, "-c", code], cwd=args.comfyui, capture_output=True, text=True, check=True
    ).stdout.strip()


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_1m": round(os.getloadavg()[0], 2),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ---------------------------------------------------------------------------- verify


def verify(args) -> None:
    from jobs_index.database import VERSION_TABLE, head_revision
    from jobs_index.schema import Base

    head = comfyui_head(args)
    commit = (
        subprocess.run(
            ["git", "-C", args.node, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    ours_expected = sorted(set(Base.metadata.tables) | {VERSION_TABLE})
    workflow = Path(args.workflow).read_bytes() if args.workflow else None
    extra = ("--enable-assets",) if args.enable_assets else ()
    log("baseline: one start without the node")
    baseline = Comfy(args, node=None, extra=extra)
    assert baseline.wait(lambda: baseline.answers() is not None), baseline.log_text()[-3000:]
    baseline_code = baseline.stop()
    comfy_expected = tables(baseline.user / "comfyui.db")
    runs = []
    for attempt in range(args.starts):
        comfy = Comfy(args, node=Path(args.node), extra=extra)
        run: dict = {"start": attempt + 1}
        run["first_answer_s"] = comfy.wait(lambda comfy=comfy: comfy.answers() is not None)
        ours = comfy.user / "jobs-index" / "jobs.sqlite3"
        if workflow is not None and run["first_answer_s"] is not None:
            job = post(comfy.port, "/prompt", workflow)["prompt_id"]

            def listed(comfy=comfy, job=job) -> bool:
                jobs = (comfy.answers("limit=5") or {}).get("jobs") or [{}]
                return jobs[0].get("id") == job and jobs[0].get("status") == "completed"

            run["job_listed_completed_s"] = comfy.wait(listed, timeout=120)
        run["exit_code"] = comfy.stop()
        text = comfy.log_text()
        theirs = comfy.user / "comfyui.db"
        run["comfyui_db_revision"] = (
            scalar(theirs, "SELECT version_num FROM alembic_version") if theirs.exists() else None
        )
        run["comfyui_db_tables_ok"] = theirs.exists() and tables(theirs) == comfy_expected
        run["our_tables_ok"] = ours.exists() and tables(ours) == ours_expected
        run["our_revision_ok"] = (
            ours.exists() and scalar(ours, f"SELECT version_num FROM {VERSION_TABLE}") == head_revision()
        )
        run["our_jobs"] = scalar(ours, "SELECT COUNT(*) FROM jobs") if run["our_tables_ok"] else None
        run["comfy_db_error"] = "Failed to initialize database" in text or "Error upgrading database" in text
        run["node_errors"] = [
            line
            for line in text.splitlines()
            if "jobs-index" in line
            and "ERROR" in line.upper()
            and ("cannot" in line or "failed" in line or "not enabled" in line)
        ]
        run["ok"] = (
            run["exit_code"] == 0
            and run["comfyui_db_revision"] == head
            and run["comfyui_db_tables_ok"]
            and run["our_tables_ok"]
            and run["our_revision_ok"]
            and not run["comfy_db_error"]
            and not run["node_errors"]
            and run["first_answer_s"] is not None
            and (workflow is None or (run.get("job_listed_completed_s") is not None and run["our_jobs"] == 1))
        )
        runs.append(run)
        log(f"start {attempt + 1}: {'ok' if run['ok'] else 'FAILED'} {json.dumps(run)}")
    report = {
        "machine": machine(),
        "node_commit": commit,
        "comfyui_head": head,
        "comfyui_tables": comfy_expected,
        "our_tables": ours_expected,
        "enable_assets": args.enable_assets,
        "baseline_exit_code": baseline_code,
        "runs": runs,
        "ok": sum(run["ok"] for run in runs),
    }
    name = "comfyui-verify" + ("-assets" if args.enable_assets else "") + (f"-{args.tag}" if args.tag else "")
    lines = [
        f"# jobs-index in a real ComfyUI: {args.starts} fresh starts"
        f"{' with --enable-assets' if args.enable_assets else ''}",
        "",
        f"Measured {report['machine']['when']} on {report['machine']['cpus']} shared cores "
        f"(`benchmarks/comfyui_startup.py verify`). Node installed as `custom_nodes/jobs-index` "
        f"({args.node}, commit {commit}); each start on a new user directory.",
        "",
        f"ComfyUI's Alembic head: `{head}`; its tables (from a start without the node, exit code "
        f"{baseline_code}): {', '.join(comfy_expected)}.",
        "",
        f"**{report['ok']} of {len(runs)} starts ok.**",
        "",
        "| start | first /api/jobs (s) | job listed completed (s) | exit | comfyui.db revision "
        "| its tables | our tables | our jobs | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['start']} | {_s(run['first_answer_s'])} | {_s(run.get('job_listed_completed_s'))} | "
            f"{run['exit_code']} | {run['comfyui_db_revision']} | {run['comfyui_db_tables_ok']} | "
            f"{run['our_tables_ok'] and run['our_revision_ok']} | {run['our_jobs']} | "
            f"{'db' if run['comfy_db_error'] else ''}{len(run['node_errors']) or ''} |"
        )
    write(name, "\n".join(lines) + "\n", report)


def _s(value) -> str:
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------- measure


def large_index(args, base: str | None):
    import bench

    target = bench.Target(base, args.jobs, label=f"{args.label}_{args.jobs}")
    stats, reused = bench.get_or_build(target, args.jobs, 1, 20, reuse=True)
    log(f"{'reusing' if reused else 'built'} {target.url}")
    return target


def one_start(args, case: dict) -> tuple[float | None, float | None]:
    """One ComfyUI start: seconds to the first /api/jobs answer, and to the index answering."""
    from jobs_index.database import VERSION_TABLE, head_revision

    comfy = Comfy(args, node=Path(args.node) if case["node"] else None, env=case.get("env"))
    try:
        first = comfy.wait(lambda: comfy.answers() is not None)
        case.setdefault("cpu_s", []).append(comfy.cpu_s())
        indexed = None
        if case.get("until_index") is not None:
            indexed = comfy.wait(
                lambda: (comfy.answers() or {}).get("pagination", {}).get("total", 0) >= case["until_index"]
            )
        elif case.get("empty_index"):
            ours, head = comfy.user / "jobs-index" / "jobs.sqlite3", head_revision()

            def ready() -> bool:
                return scalar(ours, f"SELECT version_num FROM {VERSION_TABLE}") == head

            indexed = comfy.wait(ready)
    finally:
        comfy.stop()
    imported = re.search(r"([0-9.]+) seconds(?: \(IMPORT FAILED\))?: \S*jobs-index", comfy.log_text())
    case.setdefault("import_s", []).append(float(imported.group(1)) if imported else None)
    log(f"{case['label']}: first answer {_s(first)} s, index answering {_s(indexed)} s")
    return first, indexed


def start_series(args, cases: list[dict]) -> list[dict]:
    """``args.starts`` rounds, each starting every case once (interleaved, so a change
    in the machine's load hits every case alike)."""
    results = [
        {
            "label": case["label"],
            "first_answer_s": [],
            "index_s": [],
            "import_s": case.setdefault("import_s", []),
            "cpu_s": case.setdefault("cpu_s", []),
        }
        for case in cases
    ]
    for _ in range(args.starts):
        for case, result in zip(cases, results, strict=True):
            first, indexed = one_start(args, case)
            result["first_answer_s"].append(first)
            if indexed is not None or case.get("until_index") is not None or case.get("empty_index"):
                result["index_s"].append(indexed)
    return results


def page_series(args, label: str, env: dict, total: int) -> dict:
    comfy = Comfy(args, node=Path(args.node), env=env)
    try:
        assert comfy.wait(lambda: (comfy.answers() or {}).get("pagination", {}).get("total", 0) >= total)
        offsets = [o for o in (0, 64, 128, 640, 6_400, 64_000, 640_000, total - 64) if 0 <= o < total]
        rows = []
        for query in [QUEUE] + [FRONTEND.format(o) for o in sorted(set(offsets))]:
            times = []
            for _ in range(args.warmup):
                get(comfy.port, f"/api/jobs?{query}")
            for _ in range(args.requests):
                started = time.perf_counter()
                status, body = get(comfy.port, f"/api/jobs?{query}", timeout=120)
                times.append(time.perf_counter() - started)
                assert status == 200 and body is not None, (query, status)
            rows.append(
                {
                    "query": query,
                    "n": len(times),
                    "p50_ms": statistics.median(times) * 1000,
                    "p95_ms": sorted(times)[max(0, int(len(times) * 0.95) - 1)] * 1000,
                    "max_ms": max(times) * 1000,
                    "jobs": len(body["jobs"]),
                }
            )
            log(f"{label} {query}: p50 {rows[-1]['p50_ms']:.1f} ms")
        return {"label": label, "rows": rows}
    finally:
        comfy.stop()


def measure(args) -> None:
    pages, starts = [], []
    cases = args.cases.split(",")
    if "without" in cases:
        starts.append({"label": "without the node", "node": False})
    if "empty" in cases:
        starts.append({"label": "with the node, new empty index (SQLite)", "node": True, "empty_index": True})
    backends = ([("SQLite", None)] if "sqlite" in cases else []) + (
        [("PostgreSQL", args.pg)] if args.pg and "postgresql" in cases else []
    )
    large = []
    for name, base in backends:
        target = large_index(args, base)
        env = {"JOBS_INDEX_DB": target.url}
        large.append((name, env))
        starts.append(
            {
                "label": f"with the node, {args.jobs:,}-job index ({name})",
                "node": True,
                "env": env,
                "until_index": args.jobs,
            }
        )
    series = start_series(args, starts)
    for name, env in large:
        pages.append(page_series(args, f"{args.jobs:,} jobs, {name}", env, args.jobs))
    report = {"machine": machine(), "jobs": args.jobs, "starts": args.starts, "series": series, "pages": pages}
    lines = [
        f"# jobs-index in a real ComfyUI: start-up cost and the frontend's requests at {args.jobs:,} jobs",
        "",
        f"Measured {report['machine']['when']} on {report['machine']['cpus']} cores shared with other work "
        f"(1-minute load {report['machine']['load_1m']}), `benchmarks/comfyui_startup.py measure`. "
        f"ComfyUI `--cpu`, a new user directory per start (ComfyUI migrates a new comfyui.db each time, "
        f"with or without the node); node installed as `custom_nodes/jobs-index`.",
        "",
        "## Start-up: process start to answers",
        "",
        "First `/api/jobs` answer: whoever answers (ComfyUI's built-in handler until the index is ready). "
        "Index answering: the large index's total is served, or (new index) its schema is created.",
        "",
        'Node import: ComfyUI\'s own "Import times for custom nodes" line for jobs-index.',
        "",
        "CPU: ComfyUI's CPU seconds (user + system, the node's migration child included) at its first "
        "answer: on a busy shared machine the wall times mostly measure the other work.",
        "",
        "| case | starts | first /api/jobs, median (min-max) s | CPU at first answer, median (min-max) s | "
        "index answering, median (min-max) s | node import s |",
        "|---|---|---|---|---|---|",
    ]
    for item in series:
        lines.append(
            f"| {item['label']} | {len(item['first_answer_s'])} | {_spread(item['first_answer_s'])} | "
            f"{_spread(item['cpu_s'])} | {_spread(item['index_s'])} | {_spread(item['import_s'])} |"
        )
    lines += [
        "",
        "## The frontend's requests through ComfyUI (HTTP, one client, sequential)",
        "",
        f"`{QUEUE}` is the queue's request; `{FRONTEND.format('N')}` the history panel paging. "
        f"{args.requests} timed requests each after {args.warmup} warm-up.",
        "",
        "| index | query | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for page in pages:
        for row in page["rows"]:
            lines.append(
                f"| {page['label']} | `{row['query']}` | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                f"{row['max_ms']:.1f} |"
            )
    suffix = "" if set(cases) >= {"without", "empty", "sqlite", "postgresql"} else "-" + "-".join(cases)
    write(f"comfyui-startup{suffix}", "\n".join(lines) + "\n", report)


def _spread(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def write(name: str, markdown: str, data: dict) -> None:
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(markdown)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["verify", "measure"])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI directory (with main.py)")
    parser.add_argument("--python", required=True, help="the Python that runs ComfyUI")
    parser.add_argument("--node", default=str(ROOT), help="the custom node directory (default: this repository)")
    parser.add_argument("--starts", type=int, default=3, help="starts per case (verify: fresh starts)")
    parser.add_argument("--enable-assets", action="store_true", help="verify: start ComfyUI with --enable-assets")
    parser.add_argument("--tag", help="verify: appended to the results file name (e.g. before-fix)")
    parser.add_argument("--workflow", help="verify: an API-format workflow to run once per start")
    parser.add_argument("--jobs", type=int, default=1_000_000, help="measure: jobs in the large index")
    parser.add_argument("--pg", help="measure: also a PostgreSQL index (base URL; a schema is created)")
    parser.add_argument(
        "--cases",
        default="without,empty,sqlite,postgresql",
        help="measure: which of without,empty,sqlite,postgresql (default all)",
    )
    parser.add_argument("--label", default="comfyui", help="measure: names the large index (<label>_<jobs>)")
    parser.add_argument("--requests", type=int, default=20, help="measure: timed requests per query")
    parser.add_argument("--warmup", type=int, default=3, help="measure: warm-up requests per query")
    args = parser.parse_args()
    (verify if args.mode == "verify" else measure)(args)


if __name__ == "__main__":
    main()
