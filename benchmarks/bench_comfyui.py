"""Benchmark: the pack's graphs executed by a real ComfyUI (0.33.0 or 0.3.75) in-process, on CUDA.

What runs: ComfyUI's own ``execution.PromptExecutor`` (the code behind the Run button, with its
CLASSIC output cache, as the server uses) executing API-format graphs made of this pack's nodes,
loaded through ComfyUI's custom-node loader. Start-up as ``main.py`` does it on a GPU (:func:`server_startup`):
its ``cuda_malloc`` choice (``backend:cudaMallocAsync`` for CUDA torch) before torch is imported and, on
0.33, comfy-aimdo's DynamicVRAM when main.py would enable it; the JSON says what was active. Models: the real architectures (LGM ``big``, MVDream
and ImageDream at their hub configs) with random weights written as the real files under the real
names; ``precision=auto`` (fp16 on the H100). Compute does not depend on the weight values.

Graphs (each timed run changes the seed, so the diffusion, reconstruction and render nodes really
execute; the loader nodes stay cached as in a running ComfyUI):

* image -> Gaussians: LoadImage -> LGM Image to Multi-View (ImageDream, 30 steps, CFG 5) ->
  LGM Reconstruct -> a no-op output node (the Gaussians end in ComfyUI's cache).
* text -> 3D + turntable: LGM Text to Multi-View (MVDream, 30 steps, CFG 7.5) -> LGM Reconstruct ->
  LGM Orbit Cameras (24 frames, 512x512) -> LGM Render Splat -> a no-op output node.
* the same two graphs with real output nodes (LGM Save Splat .ply; Save Animated WEBP of the frames)
  to show what file encoding adds.

Time = wall clock of validate_prompt + PromptExecutor.execute for one prompt (median of --iters
after --warmup runs). Peak = torch.cuda.max_memory_allocated over the timed runs with every model of
the graph resident (and, last row, with all three models resident). ``direct`` rows: the same
lgm_core calls the nodes make, without ComfyUI, for the executor's overhead.

The JSON also records the state of the LGM models' CUDA-graph runners after each graph (the nodes'
fast path: set by ``optimize_for_inference()``, graphs captured, no failed capture).

Usage (device, ComfyUI 0.33.0): ``bash benchmarks/bench_comfyui_device.sh run`` (see that script), i.e.
python benchmarks/bench_comfyui.py --comfyui .device/comfyui/ComfyUI --configs .device/comfyui/mvdream_configs
Local smoke on CPU with tiny stand-ins (inside a core's venv, which has ComfyUI's requirements):
.comfyui/0.33.0/venv/bin/python benchmarks/bench_comfyui.py --tiny --comfyui .comfyui/0.33.0/ComfyUI
(the same with 0.3.75).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- environment helpers
def stub_missing_av() -> bool:
    """ComfyUI's V3 API imports PyAV (video I/O) at import time; nothing on the LGM path uses it.
    If it is not installed (the device machine), register an inert stand-in so ComfyUI imports."""
    try:
        import av  # noqa: F401
        return False
    except ImportError:
        pass

    class _Any(type):
        def __getattr__(cls, name):
            return _Dummy

    class _Dummy(metaclass=_Any):
        def __init__(self, *a, **k):
            raise RuntimeError("PyAV is not installed (benchmark stand-in)")

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "av" or name.startswith("av."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            mod = types.ModuleType(spec.name)
            mod.__path__ = []
            mod.__lgm_stand_in__ = True
            mod.__getattr__ = lambda attr: _Dummy
            return mod

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Finder())
    return True


def server_startup(comfy_root: Path, cpu: bool) -> dict:
    """What ComfyUI's ``main.py`` sets up before torch is imported, for the in-process executor: the
    CLI defaults (no flags, ``--cpu`` for the CPU smoke) and its ``cuda_malloc`` module, which puts
    ``backend:cudaMallocAsync`` into ``PYTORCH_CUDA_ALLOC_CONF`` for CUDA builds of torch (both cores),
    then, on cores with comfy-aimdo (0.33), its DynamicVRAM native library when main.py's rule enables it.
    Returns what was switched on."""
    sys.path.insert(0, str(comfy_root))
    from comfy.cli_args import args

    args.cpu = cpu
    args.disable_api_nodes = True  # in-process: no server, no API nodes
    import cuda_malloc  # noqa: F401  (sets PYTORCH_CUDA_ALLOC_CONF like main.py)

    state = {"cuda_malloc_async": "cudaMallocAsync" in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
             "dynamic_vram": False}
    try:
        from comfy.cli_args import enables_dynamic_vram
    except ImportError:  # 0.3.75: no DynamicVRAM
        return state
    if enables_dynamic_vram():
        try:
            import comfy_aimdo.control

            headroom = None if args.reserve_vram is None else int(args.reserve_vram * 1024 ** 3)
            comfy_aimdo.control.init(simple_vram_headroom=headroom, nvml_pressure=not args.disable_nvml_pressure)
            state["aimdo_lib"] = True
        except Exception as exc:  # recorded, the benchmark goes on with the legacy patcher
            state["aimdo_error"] = f"{type(exc).__name__}: {exc}"
    return state


def enable_dynamic_vram(state: dict) -> None:
    """main.py's second DynamicVRAM step (after ``comfy.model_management`` is imported): register the
    devices with comfy-aimdo and switch ComfyUI's core patcher to the dynamic one. The pack's models
    use the plain ``ModelPatcher`` either way; this only makes ComfyUI's memory manager run as a server
    on this GPU would (``aimdo_enabled``)."""
    if not state.get("aimdo_lib"):
        return
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control
    from comfy.cli_args import args

    if not (mm.is_nvidia() and mm.torch_version_numeric >= (2, 8)):
        return
    try:
        ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3))
                                              for d in mm.get_all_torch_devices())
    except Exception as exc:
        state["aimdo_error"] = f"{type(exc).__name__}: {exc}"
        return
    if ok:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
        state["dynamic_vram"] = True


def graph_runner_state() -> list[dict]:
    """Every live LGM model's CUDA-graph runner (the nodes' fast path): set, enabled, failed, number of
    captured graphs, the weights' device. Found by type name, as ComfyUI loads the pack's own lgm_core."""
    import gc

    out = []
    for obj in gc.get_objects():
        if type(obj).__name__ == "LGM" and hasattr(obj, "_graph_runner") and hasattr(obj, "conv"):
            r = obj._graph_runner
            out.append({"device": str(obj.device), "runner": r is not None,
                        "enabled": bool(r is not None and r.enabled), "failed": bool(r is not None and r.failed),
                        "graphs": 0 if r is None else len(r.graphs)})
    return out


def load_image_without_av() -> None:
    """0.33's LoadImage decodes through PyAV first and falls back to Pillow when that yields no frame
    (its path for animated WebP); with the PyAV stand-in, send it down the Pillow path (the same
    decoded pixels for a PNG) instead of failing."""
    import torch
    from comfy_api.latest._input_impl import video_types

    class _NoFrames:
        images = torch.zeros(0)
        alpha = None

    video_types.VideoFromFile.get_components = lambda self: _NoFrames()


def load_prebuilt_gsplat(path: str | None) -> None:
    if not path or not os.path.isfile(path):
        return
    import importlib.util

    import torch  # noqa: F401  (the extension links against torch)
    spec = importlib.util.spec_from_file_location("gsplat_cuda", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["gsplat.csrc"] = mod


# ----------------------------------------------------------------------------- models on disk
def write_real_size_models(models: Path, configs: Path, device) -> None:
    """Random-weight models at the real architectures, written under the real names/layouts."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from lgm_core.models.lgm import LGM
    from lgm_core.mvdiffusion.unet import MultiViewUNet
    from lgm_core.weights import save_lgm

    torch.manual_seed(0)
    with torch.device(device):
        lgm = LGM("big")
    save_lgm(lgm, models / "lgm" / "model_fp16_fixrot.safetensors", dtype=torch.float16)
    del lgm

    def save(module, path, prefix=""):
        state = {prefix + k: v.detach().to("cpu", torch.float16).contiguous() for k, v in module.state_dict().items()
                 if not k.endswith("position_ids")}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))

    for name in ("mvdream-sd2.1-diffusers", "imagedream-ipmv-diffusers"):
        src, dst = configs / name, models / "diffusers" / name
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
        rd = lambda p: json.loads((src / p).read_text())  # noqa: E731
        with torch.device(device):
            unet = MultiViewUNet(**{k: v for k, v in rd("unet/config.json").items() if not k.startswith("_")})
            save(unet, dst / "unet" / "diffusion_pytorch_model.safetensors")
            del unet
            save(AutoencoderKL.from_config(rd("vae/config.json")), dst / "vae" / "diffusion_pytorch_model.safetensors")
            save(CLIPTextModel(CLIPTextConfig.from_dict(rd("text_encoder/config.json"))),
                 dst / "text_encoder" / "model.safetensors")
            if (src / "image_encoder").is_dir():
                save(CLIPVisionModel(CLIPVisionConfig.from_dict(rd("image_encoder/config.json"))),
                     dst / "image_encoder" / "model.safetensors")
        torch.cuda.empty_cache() if torch.cuda.is_available() else None


# ----------------------------------------------------------------------------- ComfyUI in-process
class _Server:
    """What the executor and the progress hook need of ComfyUI's PromptServer (messages dropped,
    node start times kept)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.marks = []

    def send_sync(self, event, data, sid=None):
        if event == "executing":
            self.marks.append((time.perf_counter(), data.get("node")))

    def queue_updated(self):
        pass


def boot_comfyui(comfy_root: Path, work: Path, models: Path, startup: dict):
    """ComfyUI's executor in this process (after :func:`server_startup`), with core's image nodes and
    this pack loaded through ComfyUI's custom-node loader."""
    import folder_paths

    for sub in ("input", "output", "temp", "user"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(work / "output"))
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_temp_directory(str(work / "temp"))
    folder_paths.set_user_directory(str(work / "user"))
    folder_paths.add_model_folder_path("lgm", str(models / "lgm"), is_default=True)
    folder_paths.add_model_folder_path("diffusers", str(models / "diffusers"), is_default=True)
    import utils.extra_config  # noqa: F401  (before `nodes`)
    import comfy.model_management as mm
    import comfy.utils

    enable_dynamic_vram(startup)
    import execution
    import nodes
    from comfy_api.latest import io

    if "av" in sys.modules and getattr(sys.modules["av"], "__lgm_stand_in__", False):
        load_image_without_av()
    from comfy_execution.progress import get_progress_state

    server = _Server()

    def hook(value, total, preview_image, prompt_id=None, node_id=None):  # as main.hijack_progress
        mm.throw_exception_if_processing_interrupted()
        get_progress_state().update_progress(node_id, value, total, preview_image)
        server.send_sync("progress", {"value": value, "max": total, "node": node_id}, server.client_id)

    comfy.utils.set_progress_bar_global_hook(hook)
    # core's image nodes (Save Animated WEBP) and this pack, through ComfyUI's own loader
    asyncio.run(nodes.load_custom_node(str(comfy_root / "comfy_extras" / "nodes_images.py"),
                                       module_parent="comfy_extras"))
    ok = asyncio.run(nodes.load_custom_node(str(REPO)))
    assert ok and "LGMReconstruct" in nodes.NODE_CLASS_MAPPINGS, "the pack did not load"

    class BenchSink(io.ComfyNode):
        """Output node that only receives its input (keeps file encoding out of the timing)."""

        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="BenchSink", category="bench", is_output_node=True,
                             inputs=[io.AnyType.Input("value")])

        @classmethod
        def execute(cls, value):
            return io.NodeOutput()

    nodes.NODE_CLASS_MAPPINGS["BenchSink"] = BenchSink
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})  # 0.33 reads ram_inactive
    return types.SimpleNamespace(server=server, executor=executor, execution=execution, mm=mm, nodes=nodes)


def run_prompt(env, prompt: dict) -> float:
    import torch

    t0 = time.perf_counter()
    valid = asyncio.run(env.execution.validate_prompt(uuid.uuid4().hex, prompt, None))
    if not valid[0]:
        raise RuntimeError(f"invalid prompt: {valid[1]} {valid[3]}")
    env.server.marks = []
    env.executor.execute(prompt, uuid.uuid4().hex, {"client_id": "bench"}, valid[2])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if not env.executor.success:
        msgs = [m for m in env.executor.status_messages if m[0] == "execution_error"]
        raise RuntimeError(f"prompt failed: {msgs}")
    return dt


# ----------------------------------------------------------------------------- graphs
def image_graph(seed: int, steps: int, sink: bool) -> dict:
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "bench_object.png"}},
        "2": {"class_type": "LGMMultiViewLoader",
              "inputs": {"model_name": "imagedream-ipmv-diffusers", "precision": "auto", "allow_download": False}},
        "3": {"class_type": "LGMImageToMultiView",
              "inputs": {"mv_pipeline": ["2", 0], "image": ["1", 0], "mask": ["1", 1], "invert_mask": True,
                         "prompt": "", "negative_prompt": "ugly, blurry", "seed": seed, "steps": steps,
                         "guidance": 5.0, "elevation": 0.0}},
        "4": {"class_type": "LGMModelLoader",
              "inputs": {"ckpt_name": "model_fp16_fixrot.safetensors", "precision": "auto", "allow_download": False}},
        "5": {"class_type": "LGMReconstruct",
              "inputs": {"lgm_model": ["4", 0], "views": ["3", 0], "cameras": ["3", 1], "elevation": 0.0}},
    }
    g["6"] = ({"class_type": "BenchSink", "inputs": {"value": ["5", 0]}} if sink else
              {"class_type": "LGMSaveSplat", "inputs": {"splat": ["5", 0], "filename_prefix": "bench/splat",
                                                        "min_opacity": 0.005}})
    return g


def text_graph(seed: int, steps: int, frames: int, size: int, sink: bool) -> dict:
    g = {
        "1": {"class_type": "LGMMultiViewLoader",
              "inputs": {"model_name": "mvdream-sd2.1-diffusers", "precision": "auto", "allow_download": False}},
        "2": {"class_type": "LGMTextToMultiView",
              "inputs": {"mv_pipeline": ["1", 0], "prompt": "a cute owl, 3d asset", "negative_prompt": "ugly",
                         "seed": seed, "steps": steps, "guidance": 7.5, "elevation": 0.0}},
        "3": {"class_type": "LGMModelLoader",
              "inputs": {"ckpt_name": "model_fp16_fixrot.safetensors", "precision": "auto", "allow_download": False}},
        "4": {"class_type": "LGMReconstruct",
              "inputs": {"lgm_model": ["3", 0], "views": ["2", 0], "cameras": ["2", 1], "elevation": 0.0}},
        "5": {"class_type": "LGMOrbitCameras",
              "inputs": {"num_frames": frames, "elevation": 10.0, "radius": 1.5, "fovy": 49.1, "width": size,
                         "height": size, "start_azimuth": 0.0}},
        "6": {"class_type": "LGMRenderSplat",
              "inputs": {"splat": ["4", 0], "cameras": ["5", 0], "background": 1.0, "scale_modifier": 1.0,
                         "depth_mode": "normalized"}},
    }
    g["7"] = ({"class_type": "BenchSink", "inputs": {"value": ["6", 0]}} if sink else
              {"class_type": "SaveAnimatedWEBP",
               "inputs": {"images": ["6", 0], "filename_prefix": "bench/turntable", "fps": 24.0, "lossless": False,
                          "quality": 85, "method": "default"}})
    return g


def node_times(env, prompt) -> dict:
    marks = env.server.marks
    out = {}
    for (t0, node), (t1, _) in zip(marks, marks[1:]):
        if node is not None:
            out[prompt[node]["class_type"]] = round((t1 - t0) * 1000, 1)
    return out


def bench(env, make, iters: int, warmup: int, seed0: int):
    import torch

    for i in range(warmup):
        run_prompt(env, make(seed0 + i))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times, per_node = [], []
    for i in range(iters):
        prompt = make(seed0 + 1000 + i)
        times.append(run_prompt(env, prompt))
        per_node.append(node_times(env, prompt))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    med = statistics.median(times)
    nodes_med = {k: statistics.median(d.get(k, 0.0) for d in per_node) for k in per_node[0]}
    return med, min(times), peak, nodes_med


def direct_text_to_3d(env, steps, frames, size, iters):
    """The lgm_core calls the nodes make, without ComfyUI's executor (models loaded by the loader
    nodes' own code, then called directly)."""
    import torch

    from lgm_core.cameras import Cameras
    from lgm_core.render import render

    classes = env.nodes.NODE_CLASS_MAPPINGS
    managed_pipe = classes["LGMMultiViewLoader"].execute("mvdream-sd2.1-diffusers", "auto", False).result[0]
    managed_lgm = classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "auto", False).result[0]
    pipe = managed_pipe.get()
    lgm = managed_lgm.get()
    dev = managed_lgm.device
    cams = Cameras.turntable(frames, 10.0, 1.5, 49.1, size).to(dev)
    times = []
    for i in range(iters + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen = torch.Generator("cpu").manual_seed(5000 + i)
        out = pipe("a cute owl, 3d asset", negative_prompt="ugly", num_inference_steps=steps, guidance_scale=7.5,
                   generator=gen, output_type="pt")
        with torch.inference_mode():
            g = lgm.reconstruct(out.views.to(dev))
            r = render(g, cams)
            r.image.cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, iters: int, warmup: int, dev) -> float:
    """Median wall ms of ``fn()`` over ``iters`` calls after ``warmup`` calls, synchronised with ``dev``."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(out), 2)


def reconstruct_breakdown(env, iters: int, warmup: int = 3) -> dict:
    """Where LGM Reconstruct's node time goes (ms, medians, CUDA-synchronised): the node's ``execute``
    on a CPU IMAGE batch (as ComfyUI hands it over: validation, copy to the GPU, network, SPLAT frame
    conversion, copy to ComfyUI's intermediate device), ``LGM.reconstruct`` on views already on the GPU,
    and ``forward_gaussians`` alone on a prepared input (the library's number)."""
    import torch

    classes = env.nodes.NODE_CLASS_MAPPINGS
    managed = classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "auto", False).result[0]
    lgm = managed.get()
    dev = managed.device
    size = lgm.config.input_size
    images = torch.rand(4, size, size, 3, generator=torch.Generator().manual_seed(0))
    node = classes["LGMReconstruct"]

    def timed(fn):
        return _median_ms(fn, iters, warmup, dev)

    from lgm_core.views import Views

    views = Views.from_channels_last(images).to(dev)
    res = {"node_execute_ms": timed(lambda: node.execute(managed, images, 0.0))}
    with torch.inference_mode():
        res["lgm_reconstruct_ms"] = timed(lambda: lgm.reconstruct(views))
        x = torch.randn(1, 4, 9, size, size, device=dev, dtype=lgm.dtype)
        res["forward_gaussians_ms"] = timed(lambda: lgm.forward_gaussians(x))
    r = lgm._graph_runner
    res["graph_runner"] = {"set": r is not None, "failed": bool(r and r.failed), "graphs": 0 if r is None else len(r.graphs)}
    return res


def node_overhead_probe(env, iters: int = 10) -> dict:
    """Where LGM Reconstruct's time outside the network goes inside ComfyUI: the node's steps timed one
    by one (CUDA-synchronised medians, ms, under ``torch.inference_mode`` as the executor runs nodes),
    ComfyUI's memory-manager calls made meanwhile (count and total ms of ``load_models_gpu``,
    ``free_memory``, ``soft_empty_cache``), the graph runner's captures and resets, and the top
    functions of a cProfile of ``execute``; in three modes of ``ManagedModel``: as before this probe
    (graphs released on ComfyUI's bookkeeping detach, ``load_models_gpu`` on every call), with the
    graphs kept, and with the graphs kept plus the resident fast path (the default now)."""
    import cProfile
    import io as stdio
    import pstats

    import torch

    mm = env.mm
    classes = env.nodes.NODE_CLASS_MAPPINGS
    node = classes["LGMReconstruct"]
    managed = classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "auto", False).result[0]
    lgm = managed.get()
    dev = managed.device
    size = lgm.config.input_size
    images = torch.rand(4, size, size, 3, generator=torch.Generator().manual_seed(0))
    pack = sys.modules[type(managed).__module__.rsplit(".", 1)[0]]  # the pack's `nodes` package
    types_mod = sys.modules[pack.__name__ + ".types"]
    bridge = sys.modules[pack.__name__ + ".bridge"]
    from lgm_core.pipelines import views_to_gaussians

    calls: dict = {}

    def counted(name):
        orig = getattr(mm, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                entry = calls.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += (time.perf_counter() - t0) * 1000
        setattr(mm, name, wrapper)
        return orig

    originals = {n: counted(n) for n in ("load_models_gpu", "free_memory", "soft_empty_cache", "get_free_memory")}
    runner = lgm._graph_runner
    events = {"captures": 0, "resets": 0}
    if runner is not None:
        cap, rst = runner._capture, runner.reset

        def capture(*a, **k):
            events["captures"] += 1
            return cap(*a, **k)

        def reset(*a, **k):
            events["resets"] += 1
            return rst(*a, **k)
        runner._capture, runner.reset = capture, reset

    def stages():
        out = {}
        t = time.perf_counter()

        def lap(name):
            nonlocal t
            _sync(dev)
            now = time.perf_counter()
            out[name] = (now - t) * 1000
            t = now
        views = types_mod.image_to_views(images, None, 0.0); lap("image_to_views")
        model = managed.get(); lap("ManagedModel.get")
        v = views.to(dev); lap("views to GPU")
        g = views_to_gaussians(model, v); lap("LGM.reconstruct")
        g = g.to(pack.devices.intermediate_device()); lap("Gaussians to intermediate device")
        bridge.gaussians_to_splat(g); lap("gaussians_to_splat")
        return out

    result = {}
    default_fast, default_release = type(managed).resident_fast_path, type(managed).release_on_any_detach
    try:
        modes = {"before (graphs released on every detach, load_models_gpu every call)": (False, True),
                 "graphs kept on bookkeeping detach, load_models_gpu every call": (False, False),
                 "graphs kept + resident fast path (the default)": (True, False)}
        for mode, (fast, release_any) in modes.items():
            type(managed).resident_fast_path = fast
            type(managed).release_on_any_detach = release_any
            calls.clear()
            events.update(captures=0, resets=0)
            with torch.inference_mode():
                for _ in range(3):
                    node.execute(managed, images, 0.0)
                _sync(dev)
                laps = [stages() for _ in range(iters)]
                execute_ms = _median_ms(lambda: node.execute(managed, images, 0.0), iters, 0, dev)
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(iters):
                    node.execute(managed, images, 0.0)
                _sync(dev)
                prof.disable()
            text = stdio.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(22)
            n_calls = 3 + 3 * iters
            result[mode] = {
                "node_execute_ms": execute_ms,
                "stages_ms": {k: round(statistics.median(l[k] for l in laps), 2) for k in laps[0]},
                "memory_manager_per_call": {k: [round(c / n_calls, 2), round(ms / n_calls, 2)]
                                            for k, (c, ms) in calls.items()},
                "graph_runner_per_call": {k: round(v / n_calls, 2) for k, v in events.items()},
                "cprofile_top": "\n".join(line for line in text.getvalue().splitlines()[:60] if line.strip()),
            }
    finally:
        for n, f in originals.items():
            setattr(mm, n, f)
        type(managed).resident_fast_path, type(managed).release_on_any_detach = default_fast, default_release
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", default=str(REPO / ".comfyui" / "0.33.0" / "ComfyUI"))
    ap.add_argument("--configs", default=str(REPO.parent / "shared" / "spec" / "mvdream_configs"))
    ap.add_argument("--gsplat-so", default=str(REPO / ".device" / "render" / "gsplat_cuda.so"))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny stand-in models")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only-overhead", action="store_true",
                    help="only the LGM Reconstruct overhead probe (node_overhead_probe), no graph rows")
    a = ap.parse_args()

    stubbed = stub_missing_av()
    comfy_root = Path(a.comfyui).resolve()
    version = {}
    exec((comfy_root / "comfyui_version.py").read_text(), version)
    startup = server_startup(comfy_root, cpu=a.tiny)  # before torch is imported, as main.py
    sys.path.insert(1, str(REPO))  # lgm_core from this checkout; ComfyUI's root stays first (its `nodes`)
    import torch

    cuda = torch.cuda.is_available() and not a.tiny
    if cuda:
        load_prebuilt_gsplat(a.gsplat_so)
    work = Path(tempfile.mkdtemp(prefix="lgm_bench_"))
    models = work / "models"
    t0 = time.perf_counter()
    if a.tiny:
        from lgm_core.testing import make_standin_models

        make_standin_models(models)
        a.steps, a.frames, a.size, a.iters, a.warmup = 2, 2, 64, 2, 1
    else:
        configs = Path(a.configs)
        if (configs / "mvdream-sd2.1-diffusers__DERIVED").is_dir() and not (configs / "mvdream-sd2.1-diffusers").exists():
            shutil.copytree(configs, work / "configs")
            (work / "configs" / "mvdream-sd2.1-diffusers__DERIVED").rename(work / "configs" / "mvdream-sd2.1-diffusers")
            configs = work / "configs"
        write_real_size_models(models, configs, "cuda" if cuda else "cpu")
    print(f"# models written in {time.perf_counter() - t0:.1f} s", flush=True)
    env = boot_comfyui(comfy_root, work / "comfy", models, startup)
    from PIL import Image
    import numpy as np

    yy, xx = np.mgrid[0:320, 0:320]
    rgba = np.zeros((320, 320, 4), np.uint8)
    rgba[..., :3] = 180
    rgba[..., 3] = (((xx - 160) ** 2 + (yy - 150) ** 2) < 100 ** 2) * 255
    Image.fromarray(rgba, "RGBA").save(work / "comfy" / "input" / "bench_object.png")

    dev = torch.cuda.get_device_name() if cuda else "CPU"
    rows = []
    runners = {}

    def add(name, run):
        try:
            res = run()
        except Exception as exc:  # keep the other rows
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            rows.append({"graph": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            return
        med, best, peak, per_node = res
        rows.append({"graph": name, "median_s": round(med, 3), "min_s": round(best, 3), "peak_gib": round(peak, 2),
                     "nodes_ms": per_node})
        print(f"{name}: median {med:.3f} s (min {best:.3f}), peak {peak:.2f} GiB; nodes {per_node}", flush=True)

    if a.only_overhead:
        probe = node_overhead_probe(env, 2 if a.tiny else max(5, a.iters))
        for mode, res in probe.items():
            print(f"== LGM Reconstruct overhead, {mode}:", flush=True)
            print(json.dumps({k: v for k, v in res.items() if k != "cprofile_top"}, indent=1))
            print(res["cprofile_top"], flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps({"device": dev, "torch": torch.__version__, "startup": startup,
                                                "overhead_probe": probe}, indent=1))
        return 0
    S, F, Z = a.steps, a.frames, a.size
    few, few_warm, alt, alt_warm = (1, 0, 2, 0) if a.tiny else (3, 1, 4, 2)  # output-node and alternating rows
    # one model family at a time, so each peak is that graph's own models + activations
    add(f"image -> Gaussians (ImageDream {S} steps + LGM)",
        lambda: bench(env, lambda s: image_graph(s, S, True), a.iters, a.warmup, 1))
    add("  + LGM Save Splat (.ply) as output", lambda: bench(env, lambda s: image_graph(s, S, False), few, few_warm, 50))
    runners["after image graph"] = graph_runner_state()
    env.mm.unload_all_models()
    if cuda:
        torch.cuda.empty_cache()
    add(f"text -> 3D + turntable (MVDream {S} steps + LGM + {F} frames {Z}x{Z})",
        lambda: bench(env, lambda s: text_graph(s, S, F, Z, True), a.iters, a.warmup, 100))
    add("  + Save Animated WEBP as output", lambda: bench(env, lambda s: text_graph(s, S, F, Z, False), few, few_warm, 150))
    runners["after text graph"] = graph_runner_state()
    # all three models resident: alternate both graphs
    add("both graphs alternating, all 3 models resident (peak)",
        lambda: bench(env, lambda s: image_graph(s, S, True) if s % 2 else text_graph(s, S, F, Z, True), alt, alt_warm,
                      300))
    env.mm.unload_all_models()
    try:
        breakdown = reconstruct_breakdown(env, *((1, 0) if a.tiny else (max(5, a.iters), 3)))
        print(f"LGM Reconstruct breakdown: {breakdown}", flush=True)
    except Exception as exc:
        breakdown = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(f"breakdown: FAILED {exc}", flush=True)
    env.mm.unload_all_models()
    try:
        direct = direct_text_to_3d(env, S, F, Z, max(3, a.iters // 2))
    except Exception as exc:
        print(f"direct: FAILED {exc}", flush=True)
        direct = None
    info = {"device": dev, "torch": torch.__version__, "comfyui": version.get("__version__"), "av_stubbed": stubbed,
            "gsplat": "gsplat.csrc" in sys.modules, "startup": startup,
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
            "allocator_backend": torch.cuda.get_allocator_backend() if cuda else None,
            "lgm_graph_runners": runners, "reconstruct_breakdown": breakdown, "rows": rows,
            "direct_text_to_3d_s": None if direct is None else round(direct, 3)}
    if direct is not None:
        print(f"direct lgm_core calls, text -> 3D + turntable: median {direct:.3f} s", flush=True)
    print(json.dumps(info, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
