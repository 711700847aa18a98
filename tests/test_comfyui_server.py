"""The pack in a real ComfyUI server process: one HTTP run driven like the web UI does (POST /prompt,
progress over the websocket, /history, /view, /object_info, validation errors as HTTP 400, node errors
as execution_error). The --quick-test-for-ci smoke is in test_comfyui_env.py."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from comfy_harness import (CPU_COST_OVERRIDES, ComfyServer, add_comfy_to_path, load_api_workflow, require_comfy,
                           write_example_inputs)

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_core")]  # once per ComfyUI core


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfy_core):
    paths = require_comfy(comfy_core)
    from lgm_core.testing import make_standin_models

    root = tmp_path_factory.mktemp("server")
    make_standin_models(root / "models")
    write_example_inputs(root / "work" / "input")
    with ComfyServer(paths, root / "work", root / "models") as srv:
        yield srv


async def _run_over_websocket(server: ComfyServer, prompt: dict, timeout: float = 240.0) -> tuple[dict, list]:
    import aiohttp

    client_id = uuid.uuid4().hex
    messages = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
            async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                body = await r.json()
                assert r.status == 200, body
                prompt_id = body["prompt_id"]
                assert body.get("node_errors") == {}
            async with asyncio.timeout(timeout):
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue  # binary previews
                    data = json.loads(msg.data)
                    messages.append(data)
                    d = data.get("data", {})
                    if data["type"] == "executing" and d.get("node") is None and d.get("prompt_id") == prompt_id:
                        break
        async with session.get(f"{server.url}/history/{prompt_id}") as r:
            history = (await r.json())[prompt_id]
    return history, messages


def test_http_run_with_websocket(server):
    add_comfy_to_path(server.paths)  # aiohttp comes with ComfyUI's requirements
    prompt = load_api_workflow("lgm_ply_to_mesh", CPU_COST_OVERRIDES)
    history, messages = asyncio.run(_run_over_websocket(server, prompt))
    assert history["status"]["status_str"] == "success", (history["status"], server.log_tail())
    types = [m["type"] for m in messages]
    assert "execution_start" in types and "execution_success" in types
    progress_nodes = {m["data"]["node"] for m in messages if m["type"] == "progress"}
    assert "5" in progress_nodes  # LGMSplatToMesh reports progress
    (record,) = history["outputs"]["6"]["3d"]
    status, data = server.request("GET", f"/view?filename={record['filename']}&subfolder={record['subfolder']}"
                                         f"&type=output")
    assert status == 200 and isinstance(data, bytes) and data[:4] == b"glTF"
    # Preview3D got the path of the GLB written by LGMSaveMesh
    assert history["outputs"]["7"]["result"][0] == f"{record['subfolder']}/{record['filename']}"


def test_http_errors(server):
    add_comfy_to_path(server.paths)
    bad = load_api_workflow("lgm_ply_to_mesh", CPU_COST_OVERRIDES)
    bad["5"]["inputs"]["resolution"] = 4  # below the minimum
    bad["2"]["inputs"]["num_frames"] = 0
    status, body = server.request("POST", "/prompt", {"prompt": bad, "client_id": "x"})
    assert status == 400 and {"2", "5"} <= set(body["node_errors"]), body
    assert "resolution" in json.dumps(body["node_errors"]["5"])
    graph = {
        "1": {"class_type": "LGMModelLoader",
              "inputs": {"ckpt_name": "model_fp16_fixrot.safetensors", "precision": "fp32", "allow_download": False}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}},
        "3": {"class_type": "LGMReconstruct", "inputs": {"lgm_model": ["1", 0], "views": ["2", 0], "elevation": 0.0}},
        "4": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["3", 0], "filename_prefix": "x", "min_opacity": 0.0}},
    }
    history, messages = asyncio.run(_run_over_websocket(server, graph))
    assert history["status"]["status_str"] == "error"
    (err,) = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert err["node_id"] == "3" and "exactly 4 views" in err["exception_message"]


def test_object_info_and_templates(server):
    status, info = server.request("GET", "/object_info/LGMReconstruct")
    assert status == 200
    node = info["LGMReconstruct"]
    assert node["category"] == "LGM" and node["output"] == ["SPLAT"]
    assert node["input"]["required"]["views"][0] == "IMAGE"
    status, templates = server.request("GET", "/workflow_templates")
    assert status == 200
    ours = [v for k, v in templates.items() if "lgm" in k.lower()]
    assert ours and {"lgm_text_to_3d", "lgm_image_to_3d", "lgm_views_to_3d", "lgm_ply_to_mesh"} <= set(ours[0])
