"""The history page (``jobs_index.web``) in a real browser, as a user uses it.

Headless Chromium from Debian's ``chromium`` package, driven by Playwright for
Python (its own browser download is not reachable here), against a real
``create_app`` server on loopback over a real index on each backend: the captured
ComfyUI jobs (source ``gpu-a``, followed at a stand-in ComfyUI that serves
``/api/view``), 120 generated jobs (source ``gpu-b``, followed at a closed port) and
jobs full of hostile strings. Expectations come from the records themselves, not
from the API under test. Screenshots go to ``$JOBS_INDEX_SCREENSHOTS`` (default: a
pytest tmp dir) for a person to look at.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import struct
import time
import zlib
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from aiohttp import web

from jobs_index import JobsIndex
from jobs_index.http import create_app
from jobs_index.normalize import from_history
from jobs_index.sample import synthetic_history
from tests.browser import BROWSER_ARGS, CHROMIUM
from tests.conftest import BACKENDS, make_db_url
from tests.fixtures_util import capture_history, load_capture
from tests.live_server import Client, served

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')"
)

if CHROMIUM is None:
    pytest.skip(
        "no system Chromium: install Debian's package (apt-get install -y chromium); "
        ".ci/run does. Playwright's own browser download is not used",
        allow_module_level=True,
    )
PAGE = 50  # the page's page size (app.js)

HOSTILE_SCRIPT = "<script>window.__pwned = 1</script>"
HOSTILE_ATTR = '"><img src=x onerror="window.__pwned = 2">'
HOSTILE_LINK = "javascript:window.__pwned = 3"
HOSTILE_RTL = "\u202eevil-rtl \u05e9\u05dc\u05d5\u05dd"
HOSTILE_ID = 'hostile-"><svg onload=window.__pwned=7>'
HOSTILE_FILE = '"><img src=x onerror=window.__pwned=4>.png'
HOSTILE_ERROR = "<img src=x onerror=window.__pwned=5> & <b>bold</b>"
HUGE = "huge " * 40_000  # 200 kB of prompt text


def _png() -> bytes:
    """A 4x4 opaque PNG (what the stand-in ComfyUI's /api/view answers)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((200, 80, 40)) * 4 for _ in range(4))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


def _hostile_items(with_nul: bool) -> list[tuple[str, dict]]:
    success = next(iter(load_capture("history_item_success.json")["body"].values()))
    failure = next(iter(load_capture("history_item_error.json")["body"].values()))
    base_time = 1_900_000_000_000  # newer than every other job: first on the first page
    items = []

    done = copy.deepcopy(success)
    done["prompt"][1] = HOSTILE_ID
    done["prompt"][2] = {
        "1": {"class_type": "CLIPTextEncode", "inputs": {"text": HOSTILE_SCRIPT, "clip": ["3", 1]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": HOSTILE_ATTR + " " + HOSTILE_RTL, "clip": ["3", 1]}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": HOSTILE_LINK + ".safetensors"}},
        "4": {"class_type": "<b>NodeType</b>", "inputs": {"note": HUGE}},
    }
    done["prompt"][3]["create_time"] = base_time
    done["prompt"][3]["extra_pnginfo"]["workflow"]["id"] = '"><script>window.__pwned=6</script>'
    done["outputs"] = {"9": {"images": [{"filename": HOSTILE_FILE, "subfolder": "../x", "type": "output"}]}}
    items.append((HOSTILE_ID, done))

    failed = copy.deepcopy(failure)
    failed["prompt"][1] = "hostile-failed"
    failed["prompt"][3]["create_time"] = base_time - 1000
    for message in failed["status"]["messages"]:
        if message[0] == "execution_error":
            message[1]["exception_message"] = HOSTILE_ERROR
            message[1]["exception_type"] = "<i>HostileError</i>"
            message[1]["traceback"] = ['  File "<script>alert(1)</script>", line 1\n', HOSTILE_SCRIPT + "\n"]
    items.append(("hostile-failed", failed))

    if with_nul:  # PostgreSQL text cannot hold NUL (that job is rejected there, by design)
        nul = copy.deepcopy(success)
        nul["prompt"][1] = "hostile-nul"
        nul["prompt"][2] = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "before\x00after"}}}
        nul["prompt"][3]["create_time"] = base_time - 2000
        items.append(("hostile-nul", nul))
    return items


class Site:
    """The served index, the stand-in ComfyUI of gpu-a and what each job is."""

    def __init__(self, url: str, index: JobsIndex, base: str, records: dict, sources: dict, views: list) -> None:
        self.url, self.index, self.base, self.records, self.sources, self.views = (
            url,
            index,
            base,
            records,
            sources,
            views,
        )

    def expected_order(self, status: str | None = None, source: str | None = None) -> list[str]:
        chosen = [
            r
            for r in self.records.values()
            if (status is None or r.status == status) and (source is None or self.sources[r.id] == source)
        ]
        return [r.id for r in sorted(chosen, key=lambda r: (r.create_time, r.id), reverse=True)]

    def counts(self, source: str | None = None) -> dict[str, int]:
        result = dict.fromkeys(("pending", "in_progress", "completed", "failed", "cancelled"), 0)
        for r in self.records.values():
            if source is None or self.sources[r.id] == source:
                result[r.status] += 1
        return result


def _standin_comfyui(views: list) -> web.Application:
    """A stand-in ComfyUI that answers ``/api/view`` with a PNG and records each query."""
    png = _png()

    async def view(request: web.Request) -> web.Response:
        views.append(dict(request.rel_url.query))
        return web.Response(body=png, content_type="image/png")

    app = web.Application()
    app.router.add_get("/api/view", view)
    return app


@pytest.fixture(scope="module", params=BACKENDS)
def site(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"web-{request.param}")
    urls = make_db_url(request.param, tmp)
    db_url = next(urls)  # skips when this backend is not configured
    views: list = []
    try:
        with (
            JobsIndex.open(db_url) as index,
            served(_standin_comfyui(views)) as comfy_port,
            served(create_app(index=index)) as port,
        ):
            items = {
                "gpu-a": list(capture_history().items()),
                "gpu-b": list(synthetic_history(120, seed=15)),
                '<b>evil</b> "source"': _hostile_items(with_nul=request.param == "sqlite"),
            }
            records, sources = {}, {}
            for source, pairs in items.items():
                batch = [from_history(key, item) for key, item in pairs]
                result = index.ingest(batch, source=source)
                assert result.rejected == []
                for record in batch:
                    records[record.id], sources[record.id] = record, source
            index.save_follow_state("gpu-a", f"http://127.0.0.1:{comfy_port}", None)
            index.save_follow_state("gpu-b", f"http://127.0.0.1:{_closed_port()}/", None)
            site = Site(f"http://127.0.0.1:{port}/ui/", index, f"http://127.0.0.1:{port}", records, sources, views)
            site.backend = request.param
            site.items = {key: item for pairs in items.values() for key, item in pairs}
            yield site
    finally:
        urls.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("JOBS_INDEX_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    errors: list = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def row_ids(page) -> list[str]:
    return page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.dataset.id)")


def wait_rows(page, n: int) -> None:
    page.wait_for_function("n => document.querySelectorAll('#rows tr').length >= n", arg=n)


def button_counts(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        "#statuses button",
        "bs => Object.fromEntries(bs.map(b => [b.dataset.status, b.querySelector('.count').textContent]))",
    )


def assert_inert(page) -> None:
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.scripts.length") == 1  # app.js only
    assert page.locator('img[src="x"], a[href^="javascript:"]').count() == 0


def test_first_page_newest_first_with_times_and_errors(site, page, shots):
    page.goto(site.url)
    wait_rows(page, PAGE)
    page.wait_for_function("() => document.querySelector('#statuses button .count').textContent !== ''")
    assert row_ids(page) == site.expected_order()[:PAGE]
    counts = button_counts(page)
    assert counts[""] == f"{len(site.records):,}"
    assert {k: v for k, v in counts.items() if k} == {k: f"{n:,}" for k, n in site.counts().items()}
    failed = site.items["ded0128e-d015-4548-bf52-3192e6804d72"]
    row = page.locator('#rows tr[data-id="ded0128e-d015-4548-bf52-3192e6804d72"]')
    assert "ZeroDivisionError: division by zero" in row.inner_text()
    assert "gpu-a" in row.inner_text()
    assert failed["status"]["status_str"] == "error"
    assert_inert(page)
    page.screenshot(path=str(shots / f"{site.backend}-list.png"))


def test_scrolling_loads_every_job_once_in_order(site, page):
    page.goto(site.url)
    wait_rows(page, PAGE)
    total = len(site.records)
    for _ in range(20):
        if len(row_ids(page)) >= total:
            break
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
    ids = row_ids(page)
    assert len(ids) == len(set(ids)), "a job is shown twice"
    assert ids == site.expected_order(), "a job is missing or out of order"
    assert page.locator("#more").inner_text() == f"All {total} jobs shown"

    # open a job far down, then Back: the detail closes, the list stays as it was
    deep = ids[-3]
    page.click(f'#rows tr[data-id="{deep}"]')
    page.wait_for_function(
        "id => document.querySelector('#detail h2') && document.querySelector('#detail h2').textContent.includes(id)",
        arg=deep,
    )
    page.go_back()
    page.wait_for_selector("#detail", state="hidden")
    page.wait_for_timeout(300)
    assert row_ids(page) == ids


def test_status_and_source_filters_update_url_counts_and_survive_reload(site, page, shots):
    page.goto(site.url)
    wait_rows(page, PAGE)
    page.click('#statuses button[data-status="failed"]')
    page.wait_for_url("**/ui/?status=failed")
    want = site.expected_order(status="failed")
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id).join('\\n') === ids.join('\\n')",
        arg=want[:PAGE],
    )
    assert page.locator("#rows .badge:not(.s-failed)").count() == 0

    page.select_option("#source", "gpu-b")
    page.wait_for_url("**/ui/?status=failed&source=gpu-b")
    want = site.expected_order(status="failed", source="gpu-b")
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id).join('\\n') === ids.join('\\n')",
        arg=want,
    )
    expected = {k: f"{n:,}" for k, n in site.counts("gpu-b").items()}
    page.wait_for_function(
        "c => document.querySelector('#statuses button[data-status=\"failed\"] .count').textContent === c",
        arg=expected["failed"],
    )
    counts = button_counts(page)
    assert {k: v for k, v in counts.items() if k} == expected
    assert counts[""] == f"{sum(site.counts('gpu-b').values()):,}"
    page.screenshot(path=str(shots / f"{site.backend}-filtered.png"))

    page.reload()  # the URL holds the view
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id).join('\\n') === ids.join('\\n')",
        arg=want,
    )
    assert page.get_attribute('#statuses button[data-status="failed"]', "aria-pressed") == "true"
    assert page.input_value("#source") == "gpu-b"

    page.go_back()  # back to failed jobs of every source
    page.wait_for_url("**/ui/?status=failed")
    page.wait_for_function(
        "n => document.querySelectorAll('#rows tr').length === n",
        arg=min(PAGE, len(site.expected_order(status="failed"))),
    )


def test_search_box_filters_and_is_in_the_url(site, page):
    page.goto(site.url)
    wait_rows(page, PAGE)
    page.fill("#q", "ComfyMathExpression")
    page.wait_for_url("**/ui/?q=ComfyMathExpression")
    want = sorted(
        (
            k
            for k, item in site.items.items()
            if k in site.records
            and any(
                isinstance(n, dict) and n.get("class_type") == "ComfyMathExpression" for n in item["prompt"][2].values()
            )
        ),
        key=lambda k: (site.records[k].create_time, k),
        reverse=True,
    )
    assert want
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id).join('\\n') === ids.join('\\n')",
        arg=want,
    )
    page.fill("#q", '"unclosed')
    page.wait_for_function("() => !document.getElementById('error').hidden")
    assert "quoted phrase is not closed" in page.inner_text("#error")


def test_failed_job_detail_shows_error_with_traceback_and_reloads(site, page, shots):
    job_id = "ded0128e-d015-4548-bf52-3192e6804d72"
    page.goto(site.url)
    wait_rows(page, PAGE)
    page.click(f'#rows tr[data-id="{job_id}"]')
    page.wait_for_selector("#detail pre.traceback")
    assert f"job={job_id}" in page.url
    text = page.inner_text("#detail")
    assert "ZeroDivisionError: division by zero" in text
    assert 'File "/opt/ComfyUI/execution.py", line 542, in execute' in page.inner_text("#detail pre.traceback")
    assert "in node 1 (ComfyMathExpression)" in text
    assert "a / 0" in text  # the prompt's text input
    page.screenshot(path=str(shots / f"{site.backend}-detail-failed.png"))

    page.reload()
    page.wait_for_selector("#detail pre.traceback")
    assert job_id in page.inner_text("#detail h2")
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert "job=" not in page.url


def test_detail_outputs_link_to_the_source_comfyui_and_thumbnails(site, page, shots):
    captured = [
        k
        for k in site.expected_order(source="gpu-a")
        if site.items[k].get("outputs") and site.records[k].status == "completed"
    ]
    job_id = captured[0]
    item = site.items[job_id]
    files = [f for node in item["outputs"].values() for f in node.get("images", [])]
    site.views.clear()
    page.goto(site.url + "?job=" + job_id)
    page.wait_for_selector("#detail .output a")
    link = urlsplit(page.get_attribute("#detail .output a", "href"))
    comfy = urlsplit(site.index.follow_state("gpu-a")[0])
    assert (link.hostname, link.port, link.path) == (comfy.hostname, comfy.port, "/api/view")
    assert parse_qs(link.query, keep_blank_values=True) == {
        "filename": [files[0]["filename"]],
        "subfolder": [files[0]["subfolder"]],
        "type": [files[0]["type"]],
    }
    page.wait_for_function(
        "() => { const i = document.querySelector('#detail .output img'); return i && i.naturalWidth === 4; }"
    )
    # the list's thumbnail of the same job came from its ComfyUI too
    page.wait_for_function(
        "id => { const i = document.querySelector(`#rows tr[data-id='${id}'] img.thumb`); "
        "return i && i.naturalWidth === 4; }",
        arg=job_id,
    )
    assert any(v.get("filename") == files[0]["filename"] for v in site.views)

    # the workflow, to drag back into ComfyUI: exactly the one the job ran with
    with page.expect_download() as download:
        page.click("#detail button.download >> text=Workflow")
    saved = Path(download.value.path()).read_text(encoding="utf-8")
    assert json.loads(saved) == item["prompt"][3]["extra_pnginfo"]["workflow"]
    assert download.value.suggested_filename == f"workflow-{job_id}.json"

    # a source the browser cannot reach: a clear placeholder, not a broken image
    unreachable = next(
        k
        for k in site.expected_order(source="gpu-b")[: PAGE - 15]
        if site.records[k].preview_output and "images" in site.records[k].preview_output
    )
    row = page.locator(f'#rows tr[data-id="{unreachable}"]')
    row.scroll_into_view_if_needed()
    row.locator(".ph.broken").wait_for()
    assert "offline" in row.locator(".ph").inner_text()
    assert "gpu-b unreachable" in row.locator(".ph").get_attribute("title")
    assert row.locator("img").count() == 0  # no broken image left behind
    page.screenshot(path=str(shots / f"{site.backend}-detail-outputs.png"))


def test_keyboard_moves_opens_and_closes(site, page):
    page.goto(site.url)
    wait_rows(page, PAGE)
    order = site.expected_order()
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert page.evaluate("document.activeElement.dataset.id") == order[1]
    page.keyboard.press("Enter")
    page.wait_for_function(
        "id => document.querySelector('#detail h2') && document.querySelector('#detail h2').textContent.includes(id)",
        arg=order[1],
    )
    assert page.url.endswith("?job=" + __import__("urllib.parse").parse.quote(order[1], safe=""))
    page.keyboard.press("Escape")
    page.wait_for_selector("#detail", state="hidden")
    assert page.evaluate("document.activeElement.dataset.id") == order[1]  # back where the user was
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"


def test_hostile_strings_render_as_text(site, page, shots):
    page.goto(site.url)
    wait_rows(page, PAGE)
    first = page.locator("#rows tr").first
    assert first.get_attribute("data-id") == HOSTILE_ID
    assert HOSTILE_ID in first.inner_text()
    first.click()
    page.wait_for_selector("#detail .output")
    detail = page.inner_text("#detail")
    for text in (
        HOSTILE_SCRIPT,
        HOSTILE_ATTR,
        HOSTILE_FILE,
        HOSTILE_LINK + ".safetensors",
        "<b>NodeType</b>",
        '"><script>window.__pwned=6</script>',
        '<b>evil</b> "source"',
    ):
        assert text in detail, text
    assert HOSTILE_RTL.strip("\u202e") in detail
    assert page.evaluate("t => document.querySelector('#detail').textContent.includes(t)", HUGE.strip())
    assert page.inner_text("#detail .output a") == HOSTILE_FILE
    page.screenshot(path=str(shots / f"{site.backend}-hostile-detail.png"))

    page.click('#rows tr[data-id="hostile-failed"]')
    page.wait_for_selector("#detail pre.traceback")
    assert "<i>HostileError</i>: " + HOSTILE_ERROR in page.inner_text("#detail")
    assert HOSTILE_SCRIPT in page.inner_text("#detail pre.traceback")
    if site.backend == "sqlite":
        page.click('#rows tr[data-id="hostile-nul"]')
        page.wait_for_function("() => document.querySelector('#detail').textContent.includes('before\\u0000after')")
    page.wait_for_timeout(500)  # any injected handler would have run by now
    assert_inert(page)
    page.screenshot(path=str(shots / f"{site.backend}-hostile-failed.png"))


def test_page_endpoints_and_headers(site):
    client = Client(site.base)
    body = client.get("/api/jobs-index/counts?source=gpu-b&status=failed").body
    assert body["counts"] == site.counts("gpu-b") and body["total"] == sum(site.counts("gpu-b").values())
    assert [s["source"] for s in body["sources"]] == sorted(set(site.sources.values()))
    workflow = "11111111-2222-4333-8444-555555555555"  # the captured jobs' (and the hostile failure's)
    for params, keep in (
        (f"workflow_id={workflow}", lambda r: r.workflow_id == workflow),
        (f"workflow_id={workflow}&source=gpu-a", lambda r: r.workflow_id == workflow and site.sources[r.id] == "gpu-a"),
        (
            "q=ComfyMathExpression",
            lambda r: any(
                isinstance(n, dict) and n.get("class_type") == "ComfyMathExpression"
                for n in site.items[r.id]["prompt"][2].values()
            ),
        ),
        ("source=nowhere", lambda r: False),
    ):
        want = dict.fromkeys(("pending", "in_progress", "completed", "failed", "cancelled"), 0)
        for record in site.records.values():
            if keep(record):
                want[record.status] += 1
        assert client.get("/api/jobs-index/counts?" + params).body["counts"] == want, params

    # include=source: the listing exactly as without it, plus each job's source
    plain = client.get("/api/jobs?limit=20&status=completed,failed").body
    page = client.get("/api/jobs?limit=20&status=completed,failed&include=source").body
    assert page.pop("job_sources") == {job["id"]: site.sources[job["id"]] for job in plain["jobs"]}
    assert page == plain and len(plain["jobs"]) == 20
    assert "job_sources" not in client.get("/api/jobs?include=source").body  # no limit: streamed as ComfyUI's
    ids = ["ded0128e-d015-4548-bf52-3192e6804d72", HOSTILE_ID, "no-such-job"]
    from urllib.parse import urlencode

    body = client.get("/api/jobs-index/sources?" + urlencode([("id", i) for i in ids])).body
    assert body["job_sources"] == {ids[0]: "gpu-a", HOSTILE_ID: '<b>evil</b> "source"'}
    by_name = {s["source"]: s for s in body["sources"]}
    assert by_name["gpu-a"]["jobs"] == len(capture_history())
    assert by_name["gpu-b"]["url"] == site.index.follow_state("gpu-b")[0]
    assert by_name['<b>evil</b> "source"']["url"] is None
    odd = client.get("/api/jobs-index/sources?id=a%00b&id=%F0%9F%98%80&id=" + quote(HOSTILE_ID, safe=""))
    assert odd.status == 200 and odd.body["job_sources"] == {HOSTILE_ID: '<b>evil</b> "source"'}
    too_many = client.get("/api/jobs-index/sources?" + urlencode([("id", str(i)) for i in range(501)]))
    assert too_many.status == 400 and "at most 500" in too_many.body["error"]
    bad = client.get("/api/jobs-index/counts?q=%22open")
    assert bad.status == 400 and bad.body["code"] == "INVALID_SEARCH"
    import urllib.request

    with urllib.request.urlopen(site.url) as response:
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert client.get("/ui/static/..%2f..%2fhttp.py").status == 404


def test_new_job_appears_at_the_top_without_reload(site, page):
    page.goto(site.url)
    wait_rows(page, PAGE)
    before = row_ids(page)
    item = copy.deepcopy(next(iter(load_capture("history_item_success.json")["body"].values())))
    item["prompt"][1] = "arrived-while-open"
    item["prompt"][3]["create_time"] = 1_950_000_000_000
    site.index.ingest([from_history("arrived-while-open", item)], source="gpu-a")
    try:
        page.wait_for_function("() => document.querySelector('#rows tr').dataset.id === 'arrived-while-open'")
        ids = row_ids(page)
        assert ids == ["arrived-while-open"] + before
        page.wait_for_function(
            "n => document.querySelector('#statuses button .count').textContent === n", arg=f"{len(site.records) + 1:,}"
        )
    finally:
        site.index.delete_jobs(["arrived-while-open"])


def _ids_in(site, since: int | None = None, until: int | None = None) -> list[str]:
    """The expected order of the jobs created in ``[since, until)`` (from the records)."""
    return [
        job_id
        for job_id in site.expected_order()
        if (since is None or site.records[job_id].create_time >= since)
        and (until is None or site.records[job_id].create_time < until)
    ]


def wait_ids(page, ids: list[str]) -> None:
    page.wait_for_function(
        "ids => [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id).join('\\n') === ids.join('\\n')",
        arg=ids,
    )


def test_time_range_presets_and_from_to_filter_and_survive_reload(site, page, shots):
    page.goto(site.url)
    wait_rows(page, PAGE)

    # a preset: the last hour, from when the list loaded (only the far-future test jobs here)
    page.select_option("#range", "1h")
    page.wait_for_url("**/ui/?range=1h")
    now = int(time.time() * 1000)
    want = _ids_in(site, since=now - 3600_000)
    assert want and len(want) < len(site.records)
    wait_ids(page, want)
    page.wait_for_function(
        "n => document.querySelector('#statuses button .count').textContent === n", arg=f"{len(want):,}"
    )
    page.reload()  # the URL holds the view
    wait_ids(page, want)
    assert page.input_value("#range") == "1h"

    # from / to: the browser's local time, minute precision; `to` is exclusive
    times = sorted(site.records[i].create_time for i in site.expected_order(source="gpu-b"))
    since, until = (times[k] - times[k] % 60_000 for k in (30, 60))
    local = (  # a datetime-local field's value of an instant, in the browser's time zone
        "ms => { const d = new Date(ms), p = n => String(n).padStart(2, '0'); "
        "return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`"
        " + `T${p(d.getHours())}:${p(d.getMinutes())}`; }"
    )
    start, end = page.evaluate(local, since), page.evaluate(local, until)
    page.fill("#from", start)
    page.fill("#to", end)
    page.wait_for_url(f"**/ui/?from={quote(start, safe='')}&to={quote(end, safe='')}")
    want = _ids_in(site, since, until)
    assert 0 < len(want) < PAGE
    wait_ids(page, want)
    assert page.input_value("#range") == "custom"
    page.screenshot(path=str(shots / f"{site.backend}-time-range.png"))

    page.click('#statuses button[data-status="completed"]')  # combines with the other filters
    want_completed = [i for i in want if site.records[i].status == "completed"]
    wait_ids(page, want_completed)
    page.wait_for_function(
        "n => document.querySelector('#statuses button[data-status=\"completed\"] .count').textContent === n",
        arg=f"{len(want_completed):,}",
    )
    page.go_back()  # Back: the range without the status
    wait_ids(page, want)

    page.select_option("#range", "")  # all time again
    page.wait_for_url("**/ui/")
    wait_ids(page, site.expected_order()[:PAGE])
    assert page.input_value("#from") == "" and page.input_value("#to") == ""


def test_printed_token_url_opens_the_page(site, browser):
    """A server configured as one bound to 0.0.0.0 (served here on loopback): the URL
    it prints opens the page, which then works (list, counts) with the token in an
    HttpOnly cookie and no longer in the address bar; without it, the page is refused."""
    from jobs_index.access import access_notice
    from jobs_index.http import ServerConfig

    token = "tok-" + os.urandom(8).hex()
    with served(create_app(ServerConfig(host="0.0.0.0", token=token, show_token=True), index=site.index)) as port:
        [notice] = access_notice("0.0.0.0", port, token, True)
        printed = notice.split("open ", 1)[1].split(" ;")[0]
        assert printed == f"http://0.0.0.0:{port}/ui/?token={token}"
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(15_000)
            errors: list = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(printed.replace("0.0.0.0", "127.0.0.1"))
            wait_rows(page, PAGE)
            assert row_ids(page) == site.expected_order()[:PAGE]
            assert page.url == f"http://127.0.0.1:{port}/ui/"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
            page.wait_for_function(
                "n => document.querySelector('#statuses button .count').textContent === n",
                arg=f"{len(site.records):,}",
            )
            page.click('#statuses button[data-status="failed"]')
            wait_ids(page, site.expected_order(status="failed")[:PAGE])
            assert errors == []
        finally:
            context.close()
        stranger = browser.new_context()
        try:
            page = stranger.new_page()
            reply = page.goto(f"http://127.0.0.1:{port}/ui/")
            assert reply.status == 401 and "Token required" in page.inner_text("h1")
        finally:
            stranger.close()
