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

WORDS = (
    "a corgi wearing glasses, a castle at dusk, neon city rain, watercolor fox, "
    "portrait of an astronaut, misty forest, retro robot, mountain lake, koi pond, "
    "cyberpunk street market, studio photo of a teapot"
).split(", ")
TRACEBACK = [
    '  File "/opt/ComfyUI/execution.py", line 542, in execute\n'
    "    output_data, output_ui, has_subgraph = await get_output_data(prompt_id, unique_id, obj, input_data_all)\n",
    '  File "/opt/ComfyUI/execution.py", line 341, in get_output_data\n'
    "    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION)\n",
    '  File "/opt/ComfyUI/comfy_extras/nodes_math.py", line 98, in execute\n'
    "    result = simple_eval(expression, names=context, functions=MATH_FUNCTIONS)\n",
]


def _graph(rng: random.Random, text: str, seed: int) -> dict:
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": rng.choice((20, 25, 30)),
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def _workflow(workflow_id: str, graph: dict) -> dict:
    nodes = [
        {
            "id": int(node_id),
            "type": node["class_type"],
            "pos": [100 * i, 80],
            "size": [315, 98],
            "flags": {},
            "order": i,
            "mode": 0,
            "properties": {"Node name for S&R": node["class_type"]},
        }
        for i, (node_id, node) in enumerate(graph.items())
    ]
    return {
        "id": workflow_id,
        "revision": 0,
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": nodes,
        "links": [],
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1, "offset": [0, 0]}},
        "version": 0.4,
    }


def _extra_data(rng: random.Random, workflow_id: str, graph: dict, create_time: int) -> dict:
    return {
        "extra_pnginfo": {"workflow": _workflow(workflow_id, graph)},
        "client_id": f"client-{rng.randrange(16):02x}",
        "create_time": create_time,
    }


def history_item(rng: random.Random, job_id: str, number: int, create_time: int, workflow_id: str) -> dict:
    """One realistic /history item (success, error, interruption or a cached re-run)."""
    seed = rng.randrange(2**32)
    graph = _graph(rng, rng.choice(WORDS), seed)
    start = create_time + rng.randrange(1, 50)
    end = start + rng.randrange(200, 60_000)
    roll = rng.random()
    messages: list = [
        ["execution_start", {"prompt_id": job_id, "timestamp": start}],
        ["execution_cached", {"nodes": [], "prompt_id": job_id, "timestamp": start}],
    ]
    outputs: dict = {}
    if roll < 0.08:
        status_str, completed = "error", False
        messages.append(
            [
                "execution_error",
                {
                    "prompt_id": job_id,
                    "node_id": "3",
                    "node_type": "KSampler",
                    "executed": ["4", "5"],
                    "exception_message": "division by zero\n",
                    "exception_type": "ZeroDivisionError",
                    "traceback": TRACEBACK,
                    "current_inputs": {},
                    "current_outputs": {},
                    "timestamp": end,
                },
            ]
        )
    elif roll < 0.12:
        status_str, completed = "error", False
        messages.append(
            [
                "execution_interrupted",
                {"prompt_id": job_id, "node_id": "3", "node_type": "KSampler", "executed": ["4"], "timestamp": end},
            ]
        )
    else:
        status_str, completed = "success", True
        outputs = {"9": {"images": [{"filename": f"ComfyUI_{number:05d}_.png", "subfolder": "", "type": "output"}]}}
        messages.append(["execution_success", {"prompt_id": job_id, "timestamp": end}])
    return {
        "prompt": [number, job_id, graph, _extra_data(rng, workflow_id, graph, create_time), ["9"]],
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": completed, "messages": messages},
        "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
        if outputs
        else {},
    }


def queue_item(rng: random.Random, job_id: str, number: int, create_time: int, workflow_id: str) -> list:
    graph = _graph(rng, rng.choice(WORDS), rng.randrange(2**32))
    return [number, job_id, graph, _extra_data(rng, workflow_id, graph, create_time), ["9"]]


def synthetic_history(
    count: int, *, seed: int = 42, start_ms: int = 1_764_000_000_000, workflows: int = 50
) -> Iterator[tuple[str, dict]]:
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
    live = [
        from_queue(
            queue_item(
                rng,
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                count + i,
                last + 1000 * (i + 1),
                "sample-workflow",
            ),
            status,
        )
        for i, status in enumerate((IN_PROGRESS, PENDING, PENDING))
    ]
    result.add(index.ingest(live))
    return result


# -- realistic prompt graphs (search tests and benchmarks) ----------------------

_SYLLABLES = (
    "ka ri to mu sen lo va ne shi ra po lin dor mel qua zet fi ba run tor gal hel im os pra vec ul wyn xi yor"
).split()
_COMMON = (
    "a the of in with and on at portrait photo detailed masterpiece best quality "
    "woman man girl cat dog fox red blue green golden light dark night sunset "
    "forest city street castle mountain river ocean snow rain fog neon cinematic "
    "lighting 8k highly sharp focus illustration painting anime style by artist "
    "wearing dress armor hair eyes smile standing sitting background bokeh"
).split()
_NODE_TYPES = (
    "LoraLoader",
    "ControlNetLoader",
    "ControlNetApplyAdvanced",
    "IPAdapterAdvanced",
    "IPAdapterModelLoader",
    "CLIPVisionLoader",
    "LoadImage",
    "ImageScale",
    "UpscaleModelLoader",
    "ImageUpscaleWithModel",
    "VAEEncode",
    "VAELoader",
    "CLIPSetLastLayer",
    "FreeU_V2",
    "ConditioningCombine",
    "ConditioningSetArea",
    "LatentUpscaleBy",
    "KSamplerAdvanced",
    "PreviewImage",
    "SaveImage",
    "ImageBlur",
    "ImageSharpen",
    "FaceDetailer",
    "SAMLoader",
    "UltralyticsDetectorProvider",
    "CR Prompt Text",
    "Note",
    "PrimitiveNode",
    "Reroute",
    "ModelSamplingDiscrete",
    "SDXLPromptStyler",
    "CheckpointLoaderSimple",
    "UNETLoader",
    "DualCLIPLoader",
    "FluxGuidance",
    "BasicScheduler",
    "SamplerCustomAdvanced",
    "RandomNoise",
    "KSamplerSelect",
    "EmptySD3LatentImage",
    "InpaintModelConditioning",
)


class RealisticVocabulary:
    """Words with a Zipf-like frequency (rank r drawn with weight 1 / r^1.07), and
    hundreds of checkpoint and LoRA names, some of them the issue's examples."""

    def __init__(self, seed: int = 7, words: int = 30_000, models: int = 300, loras: int = 500) -> None:
        rng = random.Random(seed)
        made = set(_COMMON)
        vocabulary = list(_COMMON)
        while len(vocabulary) < words:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
            if word not in made:
                made.add(word)
                vocabulary.append(word)
        self.words = vocabulary
        self.word_weights = _cumulative([1 / (r + 1) ** 1.07 for r in range(len(vocabulary))])
        self.models = ["juggernautXL_v9.safetensors", "sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
        self.models += [
            f"{rng.choice(vocabulary[200:3000])}{rng.choice(('XL', 'Mix', 'Real', ''))}_"
            f"v{rng.randint(1, 12)}.{rng.choice(('safetensors', 'ckpt'))}"
            for _ in range(models - 3)
        ]
        self.loras = ["detail_tweaker", "add_more_details", "epiNoiseoffset_v2"]
        self.loras += [
            f"{rng.choice(vocabulary[100:5000])}_{rng.choice(('style', 'lora', 'v1', 'xl'))}" for _ in range(loras - 3)
        ]
        self.model_weights = _cumulative([1 / (r + 1) for r in range(len(self.models))])
        self.lora_weights = _cumulative([1 / (r + 1) for r in range(len(self.loras))])

    def text(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choices(self.words, cum_weights=self.word_weights, k=n))

    def model(self, rng: random.Random) -> str:
        return rng.choices(self.models, cum_weights=self.model_weights)[0]

    def lora(self, rng: random.Random) -> str:
        return rng.choices(self.loras, cum_weights=self.lora_weights)[0]


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def realistic_graph(rng: random.Random, vocab: RealisticVocabulary) -> dict:
    """A prompt graph of 5 to 60 nodes: a txt2img core, LoRAs, and other node types."""
    text = vocab.text(rng, rng.randint(6, 60))
    if rng.random() < 0.3:
        text += f", <lora:{vocab.lora(rng)}:{rng.choice((0.5, 0.7, 0.8, 1.0))}>"
    graph = _graph(rng, text, rng.randrange(2**32))
    graph["4"]["inputs"]["ckpt_name"] = vocab.model(rng)
    graph["7"]["inputs"]["text"] = vocab.text(rng, rng.randint(3, 15))
    graph["3"]["_meta"] = {"title": "KSampler"}
    extra = rng.randint(0, 53)
    for i in range(extra):
        class_type = rng.choice(_NODE_TYPES)
        inputs: dict = {}
        if class_type == "LoraLoader":
            inputs = {
                "lora_name": f"{vocab.lora(rng)}.safetensors",
                "strength_model": 0.8,
                "strength_clip": 1.0,
                "model": ["4", 0],
                "clip": ["4", 1],
            }
        elif class_type in ("ControlNetLoader", "UpscaleModelLoader", "IPAdapterModelLoader", "VAELoader"):
            inputs = {"model_name": f"{vocab.words[rng.randrange(500, 4000)]}_{rng.randint(1, 4)}x.pth"}
        elif class_type == "LoadImage":
            inputs = {"image": f"input_{rng.randrange(100_000):05d}.png", "upload": "image"}
        elif class_type in ("CR Prompt Text", "SDXLPromptStyler"):
            inputs = {"prompt": vocab.text(rng, rng.randint(3, 20))}
        elif class_type in ("KSamplerAdvanced", "RandomNoise"):
            inputs = {"noise_seed": rng.randrange(2**32), "steps": 20, "model": ["4", 0]}
        else:
            inputs = {"strength": 1.0, "image": [str(10 + i), 0]}
        graph[str(10 + i)] = {"class_type": class_type, "inputs": inputs}
    return graph


def realistic_history(
    count: int,
    *,
    seed: int = 42,
    start_ms: int = 1_764_000_000_000,
    workflows: int = 50,
    vocab: RealisticVocabulary | None = None,
) -> Iterator[tuple[str, dict]]:
    """Like ``synthetic_history`` with ``realistic_graph`` prompt graphs."""
    rng = random.Random(seed)
    vocab = vocab or RealisticVocabulary()
    workflow_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(workflows)]
    create_time = start_ms
    for number in range(count):
        if rng.random() > 0.02:
            create_time += rng.randrange(1, 30_000)
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        item = history_item(rng, job_id, number, create_time, rng.choice(workflow_ids))
        graph = realistic_graph(rng, vocab)
        item["prompt"][2] = graph
        item["prompt"][3]["extra_pnginfo"]["workflow"] = _workflow(
            item["prompt"][3]["extra_pnginfo"]["workflow"]["id"], graph
        )
        yield job_id, item
