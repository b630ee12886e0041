"""Synthetic ComfyUI jobs shaped like real captured history, for demos and benchmarks.

Items follow the shapes in ``tests/fixtures/comfyui`` (a txt2img graph, the UI
workflow in ``extra_pnginfo``, status messages with millisecond timestamps, image
outputs, a ZeroDivisionError with its traceback, interrupted jobs). A fixed seed
makes every run produce the same jobs. About 3 KB of JSON per job.
"""
from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

from .normalize import IN_PROGRESS, PENDING, from_history, from_queue
from .services import IngestResult, JobsIndex

WORDS = ("a corgi wearing glasses, a castle at dusk, neon city rain, watercolor fox, "
         "portrait of an astronaut, misty forest, retro robot, mountain lake, koi pond, "
         "cyberpunk street market, studio photo of a teapot").split(", ")
TRACEBACK = [
    '  File "/opt/ComfyUI/execution.py", line 542, in execute\n    output_data, output_ui, has_subgraph = await get_output_data(prompt_id, unique_id, obj, input_data_all)\n',
    '  File "/opt/ComfyUI/execution.py", line 341, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION)\n',
    '  File "/opt/ComfyUI/comfy_extras/nodes_math.py", line 98, in execute\n    result = simple_eval(expression, names=context, functions=MATH_FUNCTIONS)\n',
]


def _graph(rng: random.Random, text: str, seed: int) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": rng.choice((20, 25, 30)), "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def _workflow(workflow_id: str, graph: dict) -> dict:
    nodes = [{"id": int(node_id), "type": node["class_type"], "pos": [100 * i, 80], "size": [315, 98],
              "flags": {}, "order": i, "mode": 0, "properties": {"Node name for S&R": node["class_type"]}}
             for i, (node_id, node) in enumerate(graph.items())]
    return {"id": workflow_id, "revision": 0, "last_node_id": 9, "last_link_id": 9, "nodes": nodes,
            "links": [], "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
            "version": 0.4}


def _extra_data(rng: random.Random, workflow_id: str, graph: dict, create_time: int) -> dict:
    return {"extra_pnginfo": {"workflow": _workflow(workflow_id, graph)},
            "client_id": f"client-{rng.randrange(16):02x}", "create_time": create_time}


def history_item(rng: random.Random, job_id: str, number: int, create_time: int, workflow_id: str) -> dict:
    """One realistic /history item (success, error, interruption or a cached re-run)."""
    seed = rng.randrange(2**32)
    graph = _graph(rng, rng.choice(WORDS), seed)
    start = create_time + rng.randrange(1, 50)
    end = start + rng.randrange(200, 60_000)
    roll = rng.random()
    messages: list = [["execution_start", {"prompt_id": job_id, "timestamp": start}],
                      ["execution_cached", {"nodes": [], "prompt_id": job_id, "timestamp": start}]]
    outputs: dict = {}
    if roll < 0.08:
        status_str, completed = "error", False
        messages.append(["execution_error", {
            "prompt_id": job_id, "node_id": "3", "node_type": "KSampler", "executed": ["4", "5"],
            "exception_message": "division by zero\n", "exception_type": "ZeroDivisionError",
            "traceback": TRACEBACK, "current_inputs": {}, "current_outputs": {}, "timestamp": end}])
    elif roll < 0.12:
        status_str, completed = "error", False
        messages.append(["execution_interrupted", {
            "prompt_id": job_id, "node_id": "3", "node_type": "KSampler", "executed": ["4"], "timestamp": end}])
    else:
        status_str, completed = "success", True
        outputs = {"9": {"images": [{"filename": f"ComfyUI_{number:05d}_.png", "subfolder": "",
                                     "type": "output"}]}}
        messages.append(["execution_success", {"prompt_id": job_id, "timestamp": end}])
    return {
        "prompt": [number, job_id, graph, _extra_data(rng, workflow_id, graph, create_time), ["9"]],
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": completed, "messages": messages},
        "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
                if outputs else {},
    }


def queue_item(rng: random.Random, job_id: str, number: int, create_time: int, workflow_id: str) -> list:
    graph = _graph(rng, rng.choice(WORDS), rng.randrange(2**32))
    return [number, job_id, graph, _extra_data(rng, workflow_id, graph, create_time), ["9"]]


def synthetic_history(count: int, *, seed: int = 42, start_ms: int = 1_764_000_000_000,
                      workflows: int = 50) -> Iterator[tuple[str, dict]]:
    """``count`` (prompt_id, history item) pairs, oldest first, with some equal create_times."""
    rng = random.Random(seed)
    workflow_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(workflows)]
    create_time = start_ms
    for number in range(count):
        if rng.random() > 0.02:  # 2% share the previous job's create_time (ties)
            create_time += rng.randrange(1, 30_000)
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        yield job_id, history_item(rng, job_id, number, create_time, rng.choice(workflow_ids))


def build_sample(index: JobsIndex, count: int = 500, *, seed: int = 42) -> IngestResult:
    """Fill ``index`` with ``count`` history jobs plus one running and two pending jobs."""
    history = [from_history(job_id, item) for job_id, item in synthetic_history(count, seed=seed)]
    result = index.ingest(history)
    rng = random.Random(seed + 1)
    last = history[-1].create_time
    live = [from_queue(queue_item(rng, str(uuid.UUID(int=rng.getrandbits(128), version=4)), count + i,
                                  last + 1000 * (i + 1), "sample-workflow"), status)
            for i, status in enumerate((IN_PROGRESS, PENDING, PENDING))]
    result.add(index.ingest(live))
    return result
