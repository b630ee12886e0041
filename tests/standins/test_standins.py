"""The ComfyUI stand-ins reproduce what the captures in tests/fixtures/comfyui show.

Everything runs on real loopback sockets; async code runs under `asyncio.run` inside
plain sync tests.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict

import aiohttp
import pytest

from ..fixtures_util import capture_history, load_capture, snapshot_history
from .comfy_server import (
    PromptQueue,
    PromptServer,
    comfy_modules_installed,
    run_worker,
)
from .fake_comfyui import FakeComfyUI, FakeComfyUIThread, running_fake_comfyui

pytestmark = pytest.mark.timeout(60)

IDS = load_capture("ids.json")
CLIENT = IDS["client_id"]
CLOSED = {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def body(name: str):
    return load_capture(name)["body"]


def request_body(name: str) -> dict:
    return load_capture(name)["request"]["body"]


def captured_events() -> list[dict]:
    return [event["msg"] for event in load_capture("ws_events.json")]


async def get_json(session: aiohttp.ClientSession, url: str):
    async with session.get(url) as response:
        return response.status, await response.json()


async def post_json(session: aiohttp.ClientSession, url: str, payload):
    async with session.post(url, json=payload) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def receive_until(ws, predicate, timeout: float = 5.0) -> list[dict]:
    """Messages up to and including the first one `predicate` accepts."""
    received = []
    while True:
        message = await ws.receive_json(timeout=timeout)
        received.append(message)
        if predicate(message):
            return received


async def drain(ws, quiet: float = 0.2) -> list[dict]:
    """Every message until none arrives for `quiet` seconds."""
    received = []
    while True:
        try:
            received.append(await ws.receive_json(timeout=quiet))
        except asyncio.TimeoutError:
            return received


def done(prompt_id: str):
    """The last event of a prompt: `executing` with node null."""
    return lambda m: m["type"] == "executing" and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id


def event_types(messages) -> list[str]:
    return [m["type"] for m in messages if m["type"] != "progress_state"]


def key_shapes(messages) -> dict[str, set[frozenset]]:
    """Per event type, the key sets its data took (and those of nested parts)."""
    shapes: dict[str, set[frozenset]] = defaultdict(set)
    for message in messages:
        data = message["data"]
        shapes[message["type"]].add(frozenset(data))
        if message["type"] == "status":
            shapes["status.status"].add(frozenset(data["status"]))
            shapes["status.exec_info"].add(frozenset(data["status"]["exec_info"]))
        if message["type"] == "progress_state":
            for node in data["nodes"].values():
                shapes["progress_state.node"].add(frozenset(node))
    return shapes


def assert_entry_like(entry: dict, captured: dict) -> None:
    """A served history entry has the captured entry's layout, graph and outputs."""
    assert list(entry) == list(captured) == ["prompt", "outputs", "status", "meta"]
    assert len(entry["prompt"]) == len(captured["prompt"]) == 5
    _, prompt_id, graph, extra_data, outputs_to_execute = entry["prompt"]
    assert graph == captured["prompt"][2]
    assert outputs_to_execute == captured["prompt"][4]
    assert list(extra_data) == list(captured["prompt"][3])
    assert isinstance(extra_data["create_time"], int)
    assert entry["outputs"] == captured["outputs"]
    assert entry["meta"] == captured["meta"]
    status, captured_status = entry["status"], captured["status"]
    assert list(status) == list(captured_status) == ["status_str", "completed", "messages"]
    assert (status["status_str"], status["completed"]) == (captured_status["status_str"], captured_status["completed"])
    assert [m[0] for m in status["messages"]] == [m[0] for m in captured_status["messages"]]
    for (_, data), (_, captured_data) in zip(status["messages"], captured_status["messages"], strict=True):
        assert list(data) == list(captured_data)
        assert data["prompt_id"] == prompt_id
        assert isinstance(data["timestamp"], int)
    stamps = [data["timestamp"] for _, data in status["messages"]]
    assert stamps == sorted(stamps)


# ----------------------------------------------------------------- HTTP vs captures


def test_seeded_fake_serves_the_captured_bodies():
    async def scenario():
        async with running_fake_comfyui(fake=FakeComfyUI.from_capture()) as fake, aiohttp.ClientSession() as s:
            assert await get_json(s, fake.url + "/history") == (200, body("history.json"))
            assert await get_json(s, fake.url + "/api/history") == (200, body("history.json"))
            assert await get_json(s, fake.url + "/history?max_items=2") == (200, body("history_max_items_2.json"))
            for name in (
                "history_item_success.json",
                "history_item_error.json",
                "history_item_interrupted.json",
                "history_item_cancelled_running.json",
                "history_item_cached.json",
                "history_unknown.json",
            ):
                capture = load_capture(name)
                assert await get_json(s, fake.url + capture["request"]["path"]) == (200, capture["body"]), name
            assert await get_json(s, fake.url + "/queue") == (200, body("queue_running_pending.json"))
            assert await get_json(s, fake.url + "/prompt") == (200, body("prompt_status.json"))
            assert await get_json(s, fake.url + "/features") == (200, body("features.json"))
        async with running_fake_comfyui() as fake, aiohttp.ClientSession() as s:
            assert await get_json(s, fake.url + "/queue") == (200, body("queue_idle.json"))

    run(scenario())


def test_raw_state_accessors_return_comfyui_shapes():
    fake = FakeComfyUI.from_capture(history_at_queue_snapshot=True)
    assert json.loads(json.dumps(fake.history_dict())) == snapshot_history()
    running, pending = body("queue_running_pending.json").values()
    assert all(len(item) == 5 for item in fake.queue_running() + fake.queue_pending())
    assert json.loads(json.dumps(fake.queue_running())) == running
    assert json.loads(json.dumps(fake.queue_pending())) == pending
    assert fake.reference().list_jobs({"limit": "2"})[1]["pagination"]["total"] == 7
    assert fake.running_prompt_id == IDS["slow_a_interrupted"]


PAGING = [  # (query, indexes of the 5 entries answered), as PromptQueue.get_history pages
    ("", [0, 1, 2, 3, 4]),
    ("?max_items=2", [3, 4]),
    ("?max_items=9", [0, 1, 2, 3, 4]),
    ("?max_items=0", []),
    ("?offset=1", [1, 2, 3, 4]),
    ("?offset=1&max_items=2", [1, 2]),
    ("?offset=4&max_items=3", [4]),
    ("?offset=9", []),
    ("?offset=-3&max_items=2", [3, 4]),  # a negative offset means "the last max_items"
    ("?offset=0&max_items=0", [0]),  # the count is checked only after adding one
]


def test_history_paging_like_comfyui():
    history = capture_history()
    ids = list(history)[:5]

    async def scenario():
        fake = FakeComfyUI()
        fake.seed({pid: history[pid] for pid in ids})
        async with running_fake_comfyui(fake=fake) as fake, aiohttp.ClientSession() as s:
            for query, indexes in PAGING:
                status, answer = await get_json(s, fake.url + "/history" + query)
                assert status == 200
                assert list(answer) == [ids[i] for i in indexes], query
            async with s.get(fake.url + "/history?max_items=x") as response:
                assert response.status == 500  # int() raises in ComfyUI's handler too

    run(scenario())


def test_post_prompt_answers_like_the_captures():
    async def scenario():
        async with running_fake_comfyui() as fake, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            await ws.receive_json()

            status, answer = await post_json(s, fake.url + "/prompt", request_body("post_prompt_success.json"))
            assert status == 200 and list(answer) == ["prompt_id", "number", "node_errors"]
            assert str(uuid.UUID(answer["prompt_id"])) == answer["prompt_id"]
            assert (answer["number"], answer["node_errors"]) == (0, {})
            assert await ws.receive_json() == {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": 1}}},
            }

            for name in ("post_prompt_client_id.json", "post_prompt_bad_prompt_id.json", "post_prompt_no_prompt.json"):
                capture = load_capture(name)
                assert await post_json(s, fake.url + "/prompt", capture["request"]["body"]) == (
                    capture["status"],
                    capture["body"],
                ), name
            # Rejected prompts used up numbers 2 and 3, as in the capture's numbering.
            status, answer = await post_json(s, fake.url + "/api/prompt", request_body("post_prompt_front.json"))
            assert (status, answer["number"]) == (200, -4)

            status, queue = await get_json(s, fake.url + "/queue")
            captured_item = body("queue_running_pending.json")["queue_pending"][0]
            # Served in heap order (a copy of ComfyUI's heap), not sorted.
            assert [item[0] for item in queue["queue_pending"]] == [-4, 1, 0]
            item = queue["queue_pending"][0]
            assert len(item) == 5 and item[4] == captured_item[4]
            assert list(item[3]) == list(captured_item[3]) == ["extra_pnginfo", "client_id", "create_time"]
            await ws.close()

    run(scenario())


# --------------------------------------------------------------- websocket events


def test_scripted_lifecycle_matches_captured_events_and_history():
    """Success, error, interrupt and a fully cached re-run, driven like the capture run."""
    slow_graph = body("queue_running_pending.json")["queue_running"][0][2]
    success_outputs = body("history_item_success.json")[IDS["ok1"]]["outputs"]
    cached_outputs = body("history_item_cached.json")[IDS["ok3_cached"]]["outputs"]

    async def scenario():
        async with running_fake_comfyui() as fake, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            events = [await ws.receive_json()]
            entries = {}

            _, answer = await post_json(s, fake.url + "/prompt", request_body("post_prompt_success.json"))
            ok = answer["prompt_id"]
            fake.start_next()
            fake.progress(0.5)
            fake.finish(ok, outputs=success_outputs)
            ok_events = await receive_until(ws, done(ok))

            _, answer = await post_json(s, fake.url + "/prompt", request_body("post_prompt_error_workflow.json"))
            err = answer["prompt_id"]
            fake.start_next()
            fake.finish(
                err,
                status="error",
                error={"exception_type": "ZeroDivisionError", "exception_message": "division by zero\n"},
            )
            err_events = await receive_until(ws, done(err))

            slow_body = {**request_body("post_prompt_success.json"), "prompt": slow_graph}
            _, answer = await post_json(s, fake.url + "/prompt", slow_body)
            slow = answer["prompt_id"]
            fake.start_next()
            assert await post_json(s, fake.url + "/interrupt", {"prompt_id": slow}) == (200, None)
            slow_events = await receive_until(ws, done(slow))

            rerun = {k: v for k, v in request_body("post_prompt_client_id.json").items() if k != "prompt_id"}
            _, answer = await post_json(s, fake.url + "/prompt", rerun)  # the capture re-ran this graph
            cached = answer["prompt_id"]
            fake.start_next(cached=["1", "2"])
            fake.finish(cached, outputs=cached_outputs)
            cached_events = await receive_until(ws, done(cached))

            for prompt_id in (ok, err, slow, cached):
                status, answer = await get_json(s, fake.url + f"/history/{prompt_id}")
                entries[prompt_id] = answer[prompt_id]
            await ws.close()
            return events + ok_events + err_events + slow_events + cached_events, (ok, err, slow, cached), entries

    events, (ok, err, slow, cached), entries = run(scenario())
    captured = captured_events()

    # Every captured event type, with the same data keys (and the legacy `progress`).
    ours, theirs = key_shapes(events), key_shapes(captured)
    for event_type, shapes in theirs.items():
        assert ours[event_type] == shapes, event_type
    assert ours["progress"] == {frozenset({"value", "max", "prompt_id", "node"})}

    # The captured order of events for a plain success and for an error.
    def captured_run(prompt_id):
        """One prompt's captured events: from the status its POST caused to its end."""
        end = next(i for i, m in enumerate(captured) if done(prompt_id)(m))
        start = max(i for i in range(end) if captured[i]["type"] == "execution_start") - 2
        return captured[start : end + 1]

    ok_end, err_end = (next(i for i, m in enumerate(events) if done(pid)(m)) for pid in (ok, err))
    ok_part, err_part = events[1 : ok_end + 1], events[ok_end + 1 : err_end + 1]
    assert [t for t in event_types(ok_part) if t != "progress"] == event_types(captured_run(IDS["ok1"]))
    assert event_types(err_part) == event_types(captured_run(IDS["err"]))

    # History entries laid out as the captured ones.
    assert_entry_like(entries[ok], body("history_item_success.json")[IDS["ok1"]])
    assert_entry_like(entries[err], body("history_item_error.json")[IDS["err"]])
    assert_entry_like(entries[slow], body("history_item_interrupted.json")[IDS["slow_a_interrupted"]])
    assert_entry_like(entries[cached], body("history_item_cached.json")[IDS["ok3_cached"]])
    assert entries[cached]["status"]["messages"][1][1]["nodes"] == ["1", "2"]


def test_execution_events_reach_only_the_submitting_client():
    async def scenario():
        async with running_fake_comfyui() as fake, aiohttp.ClientSession() as s:
            submitter = await s.ws_connect(fake.url + "/ws?clientId=submitter")
            observer = await s.ws_connect(fake.url + "/ws")  # no clientId: the server mints a sid
            assert (await submitter.receive_json())["data"]["sid"] == "submitter"
            sid = (await observer.receive_json())["data"]["sid"]
            assert len(sid) == 32 and set(fake.connected_client_ids()) == {"submitter", sid}

            mine = fake.submit(client_id="submitter")
            fake.start_next()
            fake.finish(mine)
            assert "execution_success" in event_types(await receive_until(submitter, done(mine)))
            assert {m["type"] for m in await drain(observer)} == {"status"}

            # Without a client_id nothing is sent but status, progress_state (broadcast as
            # ComfyUI's progress handler does) and execution_interrupted (broadcast=True).
            orphan = fake.submit()
            fake.start_next()
            fake.finish(orphan, status="interrupted")
            for ws in (submitter, observer):
                types = {m["type"] for m in await drain(ws)}
                assert types == {"status", "progress_state", "execution_interrupted"}
            await submitter.close()
            await observer.close()

    run(scenario())


def test_reconnect_with_the_same_client_id_gets_the_executing_node():
    async def scenario():
        async with running_fake_comfyui() as fake, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(fake.url + "/ws?clientId=me")
            await ws.receive_json()
            prompt_id = fake.submit(client_id="me")
            fake.start_next()
            await receive_until(ws, lambda m: m["type"] == "executing")
            fake.drop_connections()
            assert (await ws.receive()).type in CLOSED

            ws = await s.ws_connect(fake.url + "/ws?clientId=me")
            greeting, executing = await ws.receive_json(), await ws.receive_json()
            assert greeting == {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "me"},
            }
            assert executing == {"type": "executing", "data": {"node": "1"}}
            fake.finish(prompt_id)
            assert "execution_success" in event_types(await receive_until(ws, done(prompt_id)))
            await ws.close()

    run(scenario())


# ------------------------------------------------------------------------- faults


def test_restart_drops_connections_and_forgets_everything():
    async def scenario():
        async with running_fake_comfyui(fake=FakeComfyUI.from_capture()) as fake, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            await ws.receive_json()
            fake.pause_ws()
            fake.finish()  # the running job's events are queued, never delivered
            fake.restart()
            fake.resume_ws()
            assert (await ws.receive()).type in CLOSED

            assert await get_json(s, fake.url + "/history") == (200, {})
            assert await get_json(s, fake.url + "/queue") == (200, body("queue_idle.json"))
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            assert (await ws.receive_json())["data"]["status"]["exec_info"]["queue_remaining"] == 0
            assert await drain(ws) == []
            _, answer = await post_json(s, fake.url + "/prompt", request_body("post_prompt_success.json"))
            assert answer["number"] == 0  # numbering starts again
            await ws.close()

    run(scenario())


def test_drop_connections_keeps_the_state():
    async def scenario():
        async with running_fake_comfyui(fake=FakeComfyUI.from_capture()) as fake, aiohttp.ClientSession() as s:
            before = await get_json(s, fake.url + "/queue")
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            await ws.receive_json()
            fake.drop_connections()
            assert (await ws.receive()).type in CLOSED
            assert await get_json(s, fake.url + "/queue") == before
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            await ws.receive_json()
            fake.finish(IDS["slow_a_interrupted"], status="interrupted")
            events = await receive_until(ws, done(IDS["slow_a_interrupted"]))
            assert "execution_interrupted" in event_types(events)
            await ws.close()

    run(scenario())


def test_paused_websocket_delivers_held_events_in_order_on_resume():
    async def scenario():
        async with running_fake_comfyui() as fake, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(fake.url + "/ws?clientId=me")
            await ws.receive_json()
            fake.pause_ws()
            prompt_id = fake.submit(client_id="me")
            fake.start_next()
            fake.finish(prompt_id)
            assert await drain(ws, quiet=0.3) == []
            status, answer = await get_json(s, fake.url + f"/history/{prompt_id}")
            assert answer[prompt_id]["status"]["status_str"] == "success"  # HTTP is not paused
            fake.resume_ws()
            events = await receive_until(ws, done(prompt_id))
            assert event_types(events) == [
                "status",
                "status",
                "execution_start",
                "execution_cached",
                "executing",
                "executing",
                "executed",
                "execution_success",
                "status",
                "executing",
            ]
            await ws.close()

    run(scenario())


def test_evict_removes_history_silently():
    async def scenario():
        async with (
            running_fake_comfyui(fake=FakeComfyUI.from_capture(queue=None)) as fake,
            aiohttp.ClientSession() as s,
        ):
            ws = await s.ws_connect(fake.url + "/ws?clientId=me")
            await ws.receive_json()
            assert fake.evict(IDS["ok1"]) is True
            assert fake.evict(IDS["ok1"]) is False
            assert await get_json(s, fake.url + f"/history/{IDS['ok1']}") == (200, {})
            status, history = await get_json(s, fake.url + "/history")
            assert list(history) == [pid for pid in capture_history() if pid != IDS["ok1"]]
            assert await drain(ws) == []
            await ws.close()

    run(scenario())


def test_cancel_and_interrupt_like_the_captures():
    async def scenario():
        fake = FakeComfyUI.from_capture(history_at_queue_snapshot=True, jobs_api=True)
        async with running_fake_comfyui(fake=fake) as fake, aiohttp.ClientSession() as s:
            for name in ("job_detail_running.json", "job_detail_pending.json"):
                capture = load_capture(name)
                assert await get_json(s, fake.url + capture["request"]["path"]) == (capture["status"], capture["body"])
            assert await get_json(s, fake.url + "/api/jobs") == (200, fake.reference().list_jobs({})[1])

            for name in (
                "cancel_pending.json",
                "cancel_batch_invalid.json",
                "cancel_batch_not_list.json",
                "cancel_unknown_nonuuid.json",
            ):
                capture = load_capture(name)
                assert await post_json(s, fake.url + capture["request"]["path"], capture["request"]["body"]) == (
                    capture["status"],
                    capture["body"],
                ), name
            capture = load_capture("job_detail_after_pending_cancel.json")
            assert await get_json(s, fake.url + capture["request"]["path"]) == (capture["status"], capture["body"])

            capture = load_capture("interrupt_targeted.json")
            assert await post_json(s, fake.url + "/interrupt", capture["request"]["body"]) == (200, None)
            status, answer = await get_json(s, fake.url + f"/history/{IDS['slow_a_interrupted']}")
            assert [m[0] for m in answer[IDS["slow_a_interrupted"]]["status"]["messages"]] == [
                "execution_start",
                "execution_interrupted",
            ]  # it was seeded as already running

            assert fake.start_next() == IDS["quick_c_front"]  # front=true: the lowest number
            capture = load_capture("cancel_running.json")
            assert await post_json(s, fake.url + f"/api/jobs/{IDS['quick_c_front']}/cancel", None) == (
                200,
                capture["body"],
            )
            status, job = await get_json(s, fake.url + f"/api/jobs/{IDS['quick_c_front']}")
            assert job["status"] == "cancelled"
            capture = load_capture("cancel_terminal.json")
            assert await post_json(s, fake.url + f"/api/jobs/{IDS['quick_c_front']}/cancel", None) == (
                200,
                capture["body"],
            )
            capture = load_capture("cancel_batch_ok.json")
            assert await post_json(s, fake.url + "/api/jobs/cancel", capture["request"]["body"]) == (
                200,
                capture["body"],
            )

    run(scenario())


def test_auto_execute_runs_queued_prompts():
    async def scenario():
        async with running_fake_comfyui(auto_execute=True) as fake, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(fake.url + f"/ws?clientId={CLIENT}")
            await ws.receive_json()
            _, answer = await post_json(s, fake.url + "/prompt", request_body("post_prompt_success.json"))
            await receive_until(ws, done(answer["prompt_id"]))
            _, history = await get_json(s, fake.url + "/history")
            assert history[answer["prompt_id"]]["status"]["status_str"] == "success"
            await ws.close()

    run(scenario())


# ------------------------------------------------------------------ thread variant


def test_fake_in_a_thread_for_sync_tests():
    def get(url):
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    with FakeComfyUIThread() as server:
        assert get(server.url + "/queue") == body("queue_idle.json")
        prompt_id = server.submit(client_id="sync", workflow_id=IDS["workflow_id"])
        assert get(server.url + "/queue")["queue_pending"][0][1] == prompt_id
        assert server.start_next() == prompt_id
        entry = server.finish(prompt_id, status="error")
        assert entry == get(server.url + f"/history/{prompt_id}")[prompt_id]
        assert entry["prompt"][3]["extra_pnginfo"]["workflow"]["id"] == IDS["workflow_id"]

        # Cancels from this thread: the fake's queue takes its lock on the server loop.
        running, pending = server.submit(), server.submit()
        server.start_next()
        assert server.prompt_queue.interrupt_if_running(running) is True
        assert server.cancel_job(pending) is True
        assert get(server.url + "/queue") == body("queue_idle.json")
        assert get(server.url + f"/history/{running}")[running]["status"]["messages"][-1][0] == "execution_interrupted"

        async def connect_then_drop():
            async with aiohttp.ClientSession() as s:
                ws = await s.ws_connect(server.url + "/ws?clientId=sync")
                await ws.receive_json()
                await asyncio.get_running_loop().run_in_executor(None, server.restart)
                assert (await ws.receive()).type in CLOSED

        run(connect_then_drop())
        assert get(server.url + "/history") == {}


# ------------------------------------------------------- in-process PromptQueue


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def queue_item(number: int, prompt_id: str, sensitive: dict | None = None) -> tuple:
    _, _, graph, extra_data, outputs = body("history_item_success.json")[IDS["ok1"]]["prompt"]
    return (number, prompt_id, graph, {**extra_data, "client_id": "worker-test"}, outputs, sensitive or {})


def test_worker_thread_history_entries_like_the_capture():
    server = PromptServer()
    queue = server.prompt_queue
    outputs = body("history_item_success.json")[IDS["ok1"]]["outputs"]
    threads = []

    def executor(run):
        threads.append(threading.get_ident())
        run.run_node("1")
        run.run_node("2", output=outputs["2"])

    worker = run_worker(queue, executor)
    try:
        prompt_id = str(uuid.uuid4())
        queue.put(queue_item(0, prompt_id, {"api_key_comfy_org": "secret-key"}))
        wait_for(lambda: prompt_id in queue.get_history())
    finally:
        worker.stop()
    assert threads and threads[0] != threading.get_ident()
    entry = queue.get_history(prompt_id=prompt_id)[prompt_id]
    assert isinstance(entry["prompt"], tuple)
    assert_entry_like(json.loads(json.dumps(entry)), body("history_item_success.json")[IDS["ok1"]])
    assert "secret-key" not in json.dumps(queue.get_history())
    assert queue.get_current_queue() == ([], []) and queue.get_tasks_remaining() == 0


def test_worker_reports_errors_and_interrupts():
    server = PromptServer()
    queue = server.prompt_queue
    started = threading.Event()

    def executor(run):
        run.run_node("1")
        if run.prompt_id.startswith("0"):
            raise ZeroDivisionError("division by zero")  # a node that fails as ComfyUI reports it
        started.set()
        while True:
            run.check_interrupted()
            time.sleep(0.01)

    worker = run_worker(queue, executor)
    try:
        failing, slow = "0" + str(uuid.uuid4())[1:], "f" + str(uuid.uuid4())[1:]
        queue.put(queue_item(0, failing))
        queue.put(queue_item(1, slow))
        assert started.wait(5)
        assert queue.interrupt_if_running(slow) is True
        assert queue.interrupt_if_running(failing) is False
        wait_for(lambda: slow in queue.get_history())
    finally:
        worker.stop()
    history = json.loads(json.dumps(queue.get_history()))
    error = history[failing]["status"]
    captured_error = body("history_item_error.json")[IDS["err"]]["status"]
    assert (error["status_str"], error["completed"]) == ("error", False)
    assert list(error["messages"][-1][1]) == list(captured_error["messages"][-1][1])
    assert error["messages"][-1][1]["exception_type"] == "ZeroDivisionError"
    assert error["messages"][-1][1]["node_id"] == "2" and error["messages"][-1][1]["executed"] == ["1"]
    interrupted = history[slow]["status"]
    captured_interrupted = body("history_item_interrupted.json")[IDS["slow_a_interrupted"]]["status"]
    assert [m[0] for m in interrupted["messages"]] == [m[0] for m in captured_interrupted["messages"]]
    assert list(interrupted["messages"][-1][1]) == list(captured_interrupted["messages"][-1][1])


def test_get_blocks_until_put_and_times_out():
    queue = PromptServer(set_instance=False).prompt_queue
    assert queue.get(timeout=0.05) is None
    got = []
    waiter = threading.Thread(target=lambda: got.append(queue.get()))
    waiter.start()
    time.sleep(0.05)
    assert not got
    item = queue_item(3, "p3")
    queue.put(item)
    waiter.join(5)
    assert got == [(item, 0)]
    assert queue.currently_running[0] == item and queue.currently_running[0] is not item  # a deep copy
    queue.put(queue_item(5, "p5"))
    queue.put(queue_item(-6, "p6"))
    queue.put(queue_item(4, "p4"))
    assert queue.get_tasks_remaining() == 4
    assert queue.delete_queue_item(lambda it: it[1] == "p4") is True
    assert queue.delete_queue_item(lambda it: it[1] == "nope") is False
    assert [it[1] for it in queue.get_current_queue()[1]] == ["p6", "p5"]
    assert queue.get(timeout=0)[0][1] == "p6"  # negative (front) numbers first


def test_history_eviction_at_the_cap():
    queue = PromptQueue(PromptServer(set_instance=False), max_history_size=3)
    status = PromptQueue.ExecutionStatus("success", True, [])
    for number in range(6):
        queue.put(queue_item(number, f"p{number}"))
        item, task_id = queue.get()
        queue.task_done(task_id, {"outputs": {}, "meta": {}}, status, process_item=lambda p: p[:5] + p[6:])
    # ComfyUI evicts only when the history is already over the cap: cap + 1 entries.
    assert list(queue.get_history()) == ["p2", "p3", "p4", "p5"]
    assert all(len(entry["prompt"]) == 5 for entry in queue.history.values())
    queue.delete_history_item("p3")
    queue.delete_history_item("unknown")
    assert list(queue.get_history(max_items=2)) == ["p4", "p5"]
    queue.wipe_history()
    assert queue.get_history() == {}


def test_flags():
    queue = PromptServer(set_instance=False).prompt_queue
    queue.set_flag("free_memory", True)
    assert queue.get_flags(reset=False) == {"free_memory": True}
    assert queue.get_flags() == {"free_memory": True}
    assert queue.get_flags() == {}


# ---------------------------------------------- custom-node view of the stand-in


CUSTOM_NODE = """
from aiohttp import web
from server import PromptServer
import execution

routes = PromptServer.instance.routes

@routes.get("/custom/ping")
async def ping(request):
    running, pending = PromptServer.instance.prompt_queue.get_current_queue_volatile()
    return web.json_response({"cap": execution.MAXIMUM_HISTORY_SIZE, "pending": len(pending)})

@routes.get("/api/jobs")
async def jobs_override(request):
    return web.json_response({"override": True})
"""


def test_custom_node_imports_server_and_execution(tmp_path, monkeypatch):
    (tmp_path / "standin_custom_node.py").write_text(CUSTOM_NODE)
    monkeypatch.syspath_prepend(str(tmp_path))

    modules_before = {name: sys.modules.get(name) for name in ("server", "execution")}

    async def scenario():
        with comfy_modules_installed():
            server = PromptServer(asyncio.get_running_loop())
            server.prompt_queue.history = capture_history()
            importlib.import_module("standin_custom_node")
            await server.start()
            worker = run_worker(server.prompt_queue)
            try:
                async with aiohttp.ClientSession() as s:
                    for path in ("/custom/ping", "/api/custom/ping"):
                        assert await get_json(s, server.url + path) == (200, {"cap": 10000, "pending": 0})
                    # A route added after ComfyUI's built-in one never matches: aiohttp
                    # resolves the first registered resource for a path.
                    assert await get_json(s, server.url + "/api/jobs") == (200, body("jobs_all.json"))
                    capture = load_capture("job_detail.json")
                    assert await get_json(s, server.url + capture["request"]["path"]) == (200, capture["body"])
                    capture = load_capture("job_detail_not_found.json")
                    assert await get_json(s, server.url + capture["request"]["path"]) == (404, capture["body"])
                    capture = load_capture("jobs_legacy_double_api_prefix.json")
                    status, answer = await get_json(s, server.url + capture["request"]["path"])
                    assert answer["jobs"] == capture["body"]["jobs"]

                    ws = await s.ws_connect(server.url + f"/ws?clientId={CLIENT}")
                    await ws.receive_json()
                    _, answer = await post_json(s, server.url + "/prompt", request_body("post_prompt_success.json"))
                    events = await receive_until(ws, done(answer["prompt_id"]))
                    assert event_types(events)[:4] == ["status", "status", "execution_start", "execution_cached"]
                    status, job = await get_json(s, server.url + f"/api/jobs/{answer['prompt_id']}")
                    assert (job["status"], job["outputs_count"]) == ("completed", 1)
                    await ws.close()
            finally:
                worker.stop()
                await server.stop()

    try:
        run(scenario())
    finally:
        sys.modules.pop("standin_custom_node", None)
    assert {name: sys.modules.get(name) for name in modules_before} == modules_before


def test_in_process_cancel_interrupts_the_worker():
    async def scenario():
        server = PromptServer(asyncio.get_running_loop())
        await server.start()
        started = threading.Event()

        def executor(run):
            run.enter_node("1")
            started.set()
            while True:
                run.check_interrupted()
                time.sleep(0.01)

        worker = run_worker(server.prompt_queue, executor)
        try:
            async with aiohttp.ClientSession() as s:
                _, answer = await post_json(s, server.url + "/prompt", request_body("post_prompt_success.json"))
                prompt_id = answer["prompt_id"]
                await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
                status, job = await get_json(s, server.url + f"/api/jobs/{prompt_id}")
                assert job["status"] == "in_progress"
                assert await post_json(s, server.url + f"/api/jobs/{prompt_id}/cancel", None) == (
                    200,
                    {"cancelled": True},
                )
                for _ in range(200):
                    status, job = await get_json(s, server.url + f"/api/jobs/{prompt_id}")
                    if job["status"] != "in_progress":
                        break
                    await asyncio.sleep(0.02)
                assert job["status"] == "cancelled"
        finally:
            worker.stop()
            await server.stop()

    run(scenario())
