"""Run graphs in a real ComfyUI (one of the cores in ``comfy_cores.CORES``, installed by
``scripts/setup_comfyui.sh`` into ``.comfyui/<core>/``) inside the pytest process.

ComfyUI's state is global (node registry, folder paths, model manager), so there is one harness per
process, for the core that process tests: ``get_harness()`` builds it on first use (~8 s: imports
ComfyUI, loads every core node and this pack through ComfyUI's own custom-node loader) and returns the
same object afterwards. The tests run inside the core's own venv (see ``comfy_cores``), so what
ComfyUI imports here is exactly what a user's ComfyUI has.

Tests use the ``harness`` fixture (import it from this module); it skips cleanly, with the reason,
when the environment has not been set up. ``comfy_paths()`` gives the paths without importing ComfyUI
(used by the HTTP-server and browser tests, which start ``main.py`` in a subprocess).
"""

from __future__ import annotations

import asyncio
import os
import site
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comfy_cores import COMFY_ROOT, DEFAULT_CORE, SETUP_HINT, inner_core

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))

from comfy_runner import ComfyPaths, installed_core  # noqa: E402
from comfy_runner import ComfyServer, browser_tools, run_frontend, strip_meta, write_example_inputs  # noqa: E402,F401



def comfy_paths(core: str | None = None) -> ComfyPaths | None:
    """Paths of the installed test ComfyUI ``core`` (default: the core this process tests, else
    the oldest), or None when it is absent or incomplete."""
    return installed_core(core or inner_core() or DEFAULT_CORE, COMFY_ROOT)


def require_comfy(core: str | None = None) -> ComfyPaths:
    paths = comfy_paths(core)
    if paths is None:
        pytest.skip(f"no ComfyUI {core or inner_core() or DEFAULT_CORE} test installation in {COMFY_ROOT}: "
                    f"{SETUP_HINT}")
    if not (paths.custom_nodes / "comfyui-lgm").exists():
        pytest.skip(f"{paths.custom_nodes}/comfyui-lgm link missing: {SETUP_HINT}")
    return paths


def require_browser(core: str | None = None) -> ComfyPaths:
    """:func:`require_comfy`, then skip (with what to install) unless the headless browser tools are
    there, or when ``LGM_SKIP_BROWSER_TESTS=1`` asks to."""
    paths = require_comfy(core)
    if os.environ.get("LGM_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("browser test skipped on request (LGM_SKIP_BROWSER_TESTS=1)")
    if browser_tools() is None:
        pytest.skip("needs chromium + fonts-liberation (scripts/setup_system_deps.sh), node and npm "
                    "playwright-core (scripts/setup_comfyui.sh)")
    return paths


def add_comfy_to_path(paths: ComfyPaths) -> None:
    """Make ComfyUI importable here: its root first on sys.path (it has top-level modules named
    `nodes`, `server`, `utils` that must win over anything else). Inside the core's own venv (the
    normal case) its site-packages are already there; from another interpreter they are appended."""
    root = str(paths.comfyui)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    site.addsitedir(str(paths.site_packages))  # no-op in the venv itself; runs the torchvision shim .pth


@dataclass
class RunResult:
    success: bool
    outputs: dict[str, Any]                      # node id -> ui output dict
    messages: list[tuple[str, dict]]             # executor status messages (execution_* ...)
    events: list[tuple[str, Any]] = field(default_factory=list)  # progress/preview events
    error: dict | None = None                    # the execution_error payload, if any

    def files(self, node_id: str, key: str | None = None) -> list[dict]:
        """File records ({filename, subfolder, type}) a node's UI output lists under ``key``
        (default: every list of such records)."""
        ui = self.outputs.get(str(node_id), {})
        keys = [key] if key else list(ui)
        return [r for k in keys for r in ui.get(k, []) if isinstance(r, dict) and "filename" in r]


class ComfyHarness:
    """One in-process ComfyUI with this pack loaded. Not thread-safe; one per process."""

    def __init__(self, paths: ComfyPaths, work_dir: Path, models_dir: Path):
        self.paths = paths
        self.work_dir = Path(work_dir)
        self.models_dir = Path(models_dir)
        self.input_dir = self.work_dir / "input"
        self.output_dir = self.work_dir / "output"
        self.temp_dir = self.work_dir / "temp"
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.work_dir / "user"):
            d.mkdir(parents=True, exist_ok=True)
        add_comfy_to_path(paths)
        self.events: list[tuple[str, Any]] = []
        self._boot()

    def _boot(self) -> None:
        if "nodes" in sys.modules and not str(getattr(sys.modules["nodes"], "__file__", "")).startswith(
                str(self.paths.comfyui)):
            raise RuntimeError("a module named `nodes` that is not ComfyUI's was imported before the harness")
        from comfy.cli_args import args

        args.cpu = True
        args.disable_api_nodes = True
        args.disable_metadata = False
        import folder_paths

        folder_paths.set_output_directory(str(self.output_dir))
        folder_paths.set_input_directory(str(self.input_dir))
        folder_paths.set_temp_directory(str(self.temp_dir))
        folder_paths.set_user_directory(str(self.work_dir / "user"))
        # the test models as if mapped in extra_model_paths.yaml
        folder_paths.add_model_folder_path("lgm", str(self.models_dir / "lgm"), is_default=True)
        folder_paths.add_model_folder_path("diffusers", str(self.models_dir / "diffusers"), is_default=True)
        folder_paths.add_model_folder_path("custom_nodes", str(self.paths.custom_nodes))

        import utils.extra_config  # noqa: F401  (must precede `nodes`: else `utils` is comfy/utils.py)
        import comfy.utils
        import execution
        import nodes
        import server

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.server = server.PromptServer(self.loop)  # never started; core nodes use .instance
        self.server.send_sync = self._record  # keep what nodes/executor would send to the browser
        self.loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.nodes = nodes
        self.execution = execution
        self.import_failed = list(getattr(nodes, "LOADED_MODULE_DIRS", {}))
        comfy.utils.set_progress_bar_global_hook(self._progress_hook)

    def _record(self, event, data, sid=None):
        self.events.append((str(event), data))

    def _progress_hook(self, value, total, preview_image, prompt_id=None, node_id=None):
        import comfy.model_management
        from comfy_execution.utils import get_executing_context

        ctx = get_executing_context()
        if node_id is None and ctx is not None:
            node_id = ctx.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.events.append(("progress", {"value": value, "max": total, "node": node_id}))
        if preview_image is not None:
            self.events.append(("preview", {"node": node_id, "image": preview_image}))

    # ------------------------------------------------------------------ API
    @property
    def node_classes(self) -> dict[str, Any]:
        return self.nodes.NODE_CLASS_MAPPINGS

    def validate(self, prompt: dict) -> tuple[bool, dict | None, list[str], dict]:
        """ComfyUI's own validation: (ok, error, output node ids, node_errors)."""
        valid = self.loop.run_until_complete(self.execution.validate_prompt(uuid.uuid4().hex, prompt, None))
        return valid[0], valid[1], valid[2], valid[3]

    def run(self, prompt: dict, check: bool = True, extra_data: dict | None = None) -> RunResult:
        """Validate then execute an API-format prompt; raise AssertionError on validation errors
        (and on execution errors when ``check``). ``extra_data`` is what a client sends beside the
        prompt (e.g. ``{"preview_method": "latent2rgb"}``, read per prompt by 0.33's executor)."""
        ok, error, outputs, node_errors = self.validate(prompt)
        if not ok:
            raise AssertionError(f"prompt failed validation: {error} {node_errors}")
        self.events = []
        # cache_args as main.py passes them ("ram_inactive" is read by 0.33's executor, ignored by 0.3.75's)
        executor = self.execution.PromptExecutor(
            self.server, cache_type=self.execution.CacheType.CLASSIC,
            cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        prompt_id = uuid.uuid4().hex
        # execute() runs its own asyncio.run(); do it from a clean thread state
        asyncio.set_event_loop(None)
        try:
            executor.execute(prompt, prompt_id, {"client_id": "pytest", **(extra_data or {})}, outputs)
        finally:
            asyncio.set_event_loop(self.loop)
        history = executor.history_result or {}
        err = None
        for name, data in executor.status_messages:
            if name == "execution_error":
                err = data
        result = RunResult(bool(executor.success), dict(history.get("outputs", {})),
                           list(executor.status_messages), list(self.events), err)
        if check and not result.success:
            msg = err.get("exception_message") if err else executor.status_messages
            tb = "".join(err.get("traceback", [])) if err else ""
            raise AssertionError(f"prompt failed: {msg}\n{tb}")
        return result

    def output_path(self, record: dict) -> Path:
        base = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}[record.get("type", "output")]
        return base / record.get("subfolder", "") / record["filename"]


_HARNESS: ComfyHarness | None = None


def get_harness(tmp_root: Path, core: str | None = None) -> ComfyHarness:
    """The process-wide harness (created on first call, with stand-in models under ``tmp_root``)."""
    global _HARNESS
    if _HARNESS is None:
        paths = require_comfy(core)
        models = Path(tmp_root) / "models"
        if str(REPO_ROOT) not in sys.path:
            sys.path.append(str(REPO_ROOT))
        from lgm_core.testing import make_standin_models

        make_standin_models(models)
        _HARNESS = ComfyHarness(paths, Path(tmp_root) / "comfy", models)
    return _HARNESS


@pytest.fixture(scope="session")
def harness(comfy_core, tmp_path_factory) -> ComfyHarness:
    """A real in-process ComfyUI (core ``comfy_core``) with this pack loaded and stand-in models under
    the real names."""
    if _HARNESS is not None and _HARNESS.paths.core != comfy_core:
        pytest.fail(f"this process already runs ComfyUI {_HARNESS.paths.core}, not {comfy_core}")
    return get_harness(tmp_path_factory.mktemp("comfyui"), comfy_core)


# ---------------------------------------------------------------------------------------------------
# Shipped workflows
# ---------------------------------------------------------------------------------------------------

WORKFLOW_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOW_DIR / "api"

CPU_COST_OVERRIDES = {"steps": 2, "num_frames": 2, "width": 64, "height": 64, "resolution": 32,
                      "texture_size": 128, "target_faces": 2000}
"""Widget values lowered when the shipped graphs run on the 2-core CI machine. Only these cost knobs
change; graph structure, node types, model names and every other value stay as shipped."""


def workflow_names() -> list[str]:
    return sorted(p.stem for p in API_DIR.glob("*.json"))


def load_api_workflow(name: str, overrides: dict | None = None) -> dict:
    """An API twin from ``workflows/api/``, with literal inputs named in ``overrides`` replaced."""
    import json

    prompt = json.loads((API_DIR / f"{name}.json").read_text())
    for node in prompt.values():
        for key, value in (overrides or {}).items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    return prompt


# ---------------------------------------------------------------------------------------------------
# A real ComfyUI server (subprocess) and the real frontend in headless Chromium
# ---------------------------------------------------------------------------------------------------
