#!/usr/bin/env python
"""Pages of the listings revision 0015 changed, the code before against this code,
in one process, interleaved call by call (issue 16: three indexes fewer).

    nice -n 15 .venv/bin/python benchmarks/fewer_indexes.py --base /tmp/base \\
        --before sqlite:///before.db --after sqlite:///after.db [--repeat 300] [--out FILE]

``--base``: a checkout of the code before (its ``jobs_index`` is imported from a
copy, as ``jobs_index_base``); ``--before``: an index it wrote (revision 0013, with
``(workflow_id, create_time, id)``, ``(source, create_time, id)`` and
``(execution_duration, id)``); ``--after``: the same jobs written by this code
(0015, without them). Both are opened without migrating. Each shape's page
(``list_jobs`` + ``body``, what the route does) is asked of both in turn, the
first of the pair alternating, ``--repeat`` times: p50 and p90 in µs, and the
load average around the run (the machine may be shared). The two answers of every
shape must be equal (the same jobs: import the same dump into both).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import jobs_index
from jobs_index.database import make_engine


def load_base(checkout: Path):
    """The older code's package, imported from a copy under another name (its
    modules import each other relatively)."""
    where = Path(tempfile.mkdtemp(prefix="jobs-index-base-"))
    shutil.copytree(checkout / "jobs_index", where / "jobs_index_base")
    sys.path.insert(0, str(where))
    return importlib.import_module("jobs_index_base"), importlib.import_module("jobs_index_base.database")


def shapes(index) -> list[tuple[str, dict]]:
    """The listings that read the dropped indexes before (and two that did not)."""
    with index.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT workflow_id, source FROM jobs").all()
    workflow, in_workflow = Counter(w for w, _ in rows if w).most_common(1)[0]
    source, in_source = Counter(s for _, s in rows if s).most_common(1)[0] if any(s for _, s in rows) else (None, 0)

    def cursor(params: dict, at: int) -> str:
        page = index.list_jobs(jobs_index.parse_list_query({**params, "limit": "1", "offset": str(at)}))
        assert page.next_cursor
        return page.next_cursor

    found = [
        (f"workflow_id ({in_workflow} jobs), limit=50", {"workflow_id": workflow, "limit": "50"}),
        (
            "workflow_id, after a cursor halfway, limit=50",
            {"workflow_id": workflow, "limit": "50", "after": cursor({"workflow_id": workflow}, in_workflow // 2)},
        ),
        ("workflow_id, offset=1000, limit=50", {"workflow_id": workflow, "offset": "1000", "limit": "50"}),
    ]
    if source:
        found += [
            (f"source ({in_source} jobs), limit=50", {"source": source, "limit": "50"}),
            ("source, offset=10000, limit=50", {"source": source, "offset": "10000", "limit": "50"}),
        ]
    found += [
        ("q=fox, workflow_id, limit=50", {"q": "fox", "workflow_id": workflow, "limit": "50"}),
        ("q=fox, sort_by=execution_duration, limit=50", {"q": "fox", "sort_by": "execution_duration", "limit": "50"}),
    ]
    if source:
        found.append(("q=fox, source, limit=50", {"q": "fox", "source": source, "limit": "50"}))
    found += [
        ("sort_by=execution_duration, limit=50", {"sort_by": "execution_duration", "limit": "50"}),
        (
            "sort_by=execution_duration asc, limit=50",
            {"sort_by": "execution_duration", "sort_order": "asc", "limit": "50"},
        ),
        (
            "sort_by=execution_duration, offset=10000, limit=50",
            {"sort_by": "execution_duration", "offset": "10000", "limit": "50"},
        ),
        ("(control) status=completed,failed, limit=50", {"status": "completed,failed", "limit": "50"}),
        ("(control) first page, limit=50", {"limit": "50"}),
    ]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base, base_database = load_base(args.base)
    old = base.JobsIndex(base_database.make_engine(args.before))
    new = jobs_index.JobsIndex(make_engine(args.after))
    sides = {"before": (old, base.parse_list_query), "after": (new, jobs_index.parse_list_query)}
    load = [os.getloadavg()[0]]
    lines = [
        f"Pages at {new.total():,} jobs, in-process (`list_jobs` + `body`), {args.repeat} calls each, interleaved.",
        "",
        "| page | before p50 µs | after p50 µs | after/before | before p90 | after p90 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, params in shapes(new):
        calls = {}
        for side, (index, parse) in sides.items():
            query = parse(params)
            calls[side] = lambda index=index, query=query: index.list_jobs(query).body(query)
        answers = {side: json.dumps(call(), sort_keys=True) for side, call in calls.items()}
        assert answers["before"] == answers["after"], name
        samples: dict[str, list[float]] = {"before": [], "after": []}
        for i in range(args.repeat + 10):
            for side in ("before", "after") if i % 2 else ("after", "before"):
                t0 = time.perf_counter()
                calls[side]()
                if i >= 10:  # warm-up
                    samples[side].append(time.perf_counter() - t0)
        p50 = {side: statistics.median(s) * 1e6 for side, s in samples.items()}
        p90 = {side: statistics.quantiles(s, n=10)[-1] * 1e6 for side, s in samples.items()}
        lines.append(
            f"| {name} | {p50['before']:,.0f} | {p50['after']:,.0f} | {p50['after'] / p50['before']:.2f}x "
            f"| {p90['before']:,.0f} | {p90['after']:,.0f} |"
        )
        load.append(os.getloadavg()[0])
    lines += ["", f"Load average (1 min) during the run: {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as out:
            out.write(text + "\n")
    old.close()
    new.close()


if __name__ == "__main__":
    main()
