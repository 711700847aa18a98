"""Source of the shipped workflows: each graph as an API-format prompt (node id -> class_type, inputs).

``scripts/build_workflows.py`` loads these into the real ComfyUI frontend (headless Chromium), lets it
lay them out and saves what the frontend serialises as the UI-format files ``workflows/<name>.json``
(what users open), plus the frontend's own ``graphToPrompt`` output as the API twin
``workflows/api/<name>.json`` (what tests execute). Only core nodes and this pack's nodes appear.

Input files the graphs reference (put them in ComfyUI's input folder, or pick your own in the UI):
``lgm_example_object.png`` (an RGBA object photo), ``lgm_view_0..3.png`` (your 4 views) and
``lgm_example.ply`` (a 3DGS .ply). The ``lgm_demo_*`` graphs need nothing: they read the example views
bundled with the pack (LGM Example Views) and the bundled demo model (LGM Model Loader's first entry).

``CORES`` names the ComfyUI cores a graph needs (default: every tested core): the ``*_core3d`` graphs use
core's 3D nodes (SplatToFile3D, PreviewGaussianSplat, SaveGLB, MeshToFile3D), which ComfyUI 0.3.75 lacks.
"""

from __future__ import annotations

from lgm_core.hub import LGM_WEIGHTS
from lgm_core.pipelines import DEFAULT_NEGATIVE_PROMPT as NEGATIVE

LGM_CKPT = LGM_WEIGHTS.filename
LGM_DEMO = "demo (bundled, lgm_demo.safetensors)"
"""LGM Model Loader's entry for the demo model bundled in the pack (nodes/loaders.py LGM_DEMO)."""


def _lgm_loader(ckpt: str = LGM_CKPT):
    return {"class_type": "LGMModelLoader",
            "inputs": {"ckpt_name": ckpt, "precision": "auto", "allow_download": False}}


def _outputs(splat: list, first_id: int, prefix: str) -> dict:
    """Save .ply + turntable WEBP + textured GLB shown in core's 3D viewer."""
    i = first_id
    ids = [str(i + k) for k in range(7)]
    return {
        ids[0]: {"class_type": "LGMSaveSplat",
                 "inputs": {"splat": splat, "filename_prefix": f"lgm/{prefix}", "min_opacity": 0.005,
                            "format": "ply"}},
        ids[1]: {"class_type": "LGMOrbitCameras",
                 "inputs": {"num_frames": 24, "elevation": 10.0, "radius": 1.5, "fovy": 49.1, "width": 256,
                            "height": 256, "start_azimuth": 0.0}},
        ids[2]: {"class_type": "LGMRenderSplat",
                 "inputs": {"splat": splat, "cameras": [ids[1], 0], "background": 1.0, "scale_modifier": 1.0,
                            "depth_mode": "normalized"}},
        ids[3]: {"class_type": "SaveAnimatedWEBP",
                 "inputs": {"images": [ids[2], 0], "filename_prefix": f"lgm/{prefix}_turntable", "fps": 12.0,
                            "lossless": False, "quality": 85, "method": "default"}},
        ids[4]: {"class_type": "LGMSplatToMesh",
                 "inputs": {"splat": splat, "resolution": 128, "target_faces": 30000, "texture": True,
                            "texture_size": 512, "level": 0.6, "calibrate_level": False}},
        ids[5]: {"class_type": "LGMSaveMesh",
                 "inputs": {"mesh": [ids[4], 0], "filename_prefix": f"lgm/{prefix}_mesh", "format": "glb"}},
        ids[6]: {"class_type": "Preview3D", "inputs": {"model_file": [ids[5], 0], "image": ""}},
    }


def text_to_3d() -> dict:
    g = {
        "1": {"class_type": "LGMMultiViewLoader",
              "inputs": {"model_name": "mvdream-sd2.1-diffusers", "precision": "auto", "allow_download": False}},
        "2": {"class_type": "LGMTextToMultiView",
              "inputs": {"mv_pipeline": ["1", 0], "prompt": "a cute owl, 3d asset", "negative_prompt": NEGATIVE,
                         "seed": 42, "steps": 30, "guidance": 7.5, "elevation": 0.0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "4": _lgm_loader(),
        "5": {"class_type": "LGMReconstruct",
              "inputs": {"lgm_model": ["4", 0], "views": ["2", 0], "cameras": ["2", 1], "elevation": 0.0}},
    }
    g.update(_outputs(["5", 0], 6, "text_to_3d"))
    return g


def image_to_3d() -> dict:
    g = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "lgm_example_object.png"}},
        "2": {"class_type": "LGMMultiViewLoader",
              "inputs": {"model_name": "imagedream-ipmv-diffusers", "precision": "auto", "allow_download": False}},
        "3": {"class_type": "LGMImageToMultiView",
              "inputs": {"mv_pipeline": ["2", 0], "image": ["1", 0], "mask": ["1", 1], "invert_mask": True,
                         "prompt": "", "negative_prompt": NEGATIVE, "seed": 42, "steps": 30, "guidance": 5.0,
                         "elevation": 0.0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": _lgm_loader(),
        "6": {"class_type": "LGMReconstruct",
              "inputs": {"lgm_model": ["5", 0], "views": ["3", 0], "cameras": ["3", 1], "elevation": 0.0}},
    }
    g.update(_outputs(["6", 0], 7, "image_to_3d"))
    return g


def views_to_3d() -> dict:
    g = {str(k + 1): {"class_type": "LoadImage", "inputs": {"image": f"lgm_view_{k}.png"}} for k in range(4)}
    g.update({
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "6": {"class_type": "ImageBatch", "inputs": {"image1": ["5", 0], "image2": ["3", 0]}},
        "7": {"class_type": "ImageBatch", "inputs": {"image1": ["6", 0], "image2": ["4", 0]}},
        "8": _lgm_loader(),
        "9": {"class_type": "LGMReconstruct",
              "inputs": {"lgm_model": ["8", 0], "views": ["7", 0], "elevation": 0.0}},
    })
    g.update(_outputs(["9", 0], 10, "views_to_3d"))
    return g


def ply_to_mesh() -> dict:
    return {
        "1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": "lgm_example.ply", "frame": "auto"}},
        "2": {"class_type": "LGMOrbitCameras",
              "inputs": {"num_frames": 4, "elevation": 10.0, "radius": 1.5, "fovy": 49.1, "width": 256,
                         "height": 256, "start_azimuth": 0.0}},
        "3": {"class_type": "LGMRenderSplat",
              "inputs": {"splat": ["1", 0], "cameras": ["2", 0], "background": 1.0, "scale_modifier": 1.0,
                         "depth_mode": "normalized"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "LGMSplatToMesh",
              "inputs": {"splat": ["1", 0], "resolution": 128, "target_faces": 30000, "texture": True,
                         "texture_size": 512, "level": 0.6, "calibrate_level": False}},
        "6": {"class_type": "LGMSaveMesh",
              "inputs": {"mesh": ["5", 0], "filename_prefix": "lgm/ply_mesh", "format": "glb"}},
        "7": {"class_type": "Preview3D", "inputs": {"model_file": ["6", 0], "image": ""}},
    }


def demo_views_to_3d() -> dict:
    """Runs out of the box: bundled example views -> bundled demo model -> splat, turntable, mesh."""
    g = {
        "1": {"class_type": "LGMExampleViews", "inputs": {"example": "demo"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": _lgm_loader(LGM_DEMO),
        "4": {"class_type": "LGMReconstruct", "inputs": {"lgm_model": ["3", 0], "views": ["1", 0], "elevation": 0.0}},
    }
    g.update(_outputs(["4", 0], 5, "demo"))
    return g


def _viewport_state() -> dict:
    """The viewer state 0.33's frontend serialises for a fresh PreviewGaussianSplat (its default camera)."""
    return {"image": "", "mask": "", "normal": "",
            "camera_info": {"position": {"x": 10, "y": 10, "z": 10.000000000000002}, "target": {"x": 0, "y": 0, "z": 0},
                            "zoom": 1, "cameraType": "perspective",
                            "quaternion": {"x": -0.2798481423331213, "y": 0.3647051996310008, "z": 0.11591689595929511,
                                           "w": 0.8804762392171493},
                            "fov": 35, "aspect": 1, "near": 0.01, "far": 10000,
                            "frustum": {"left": -5, "right": 5, "top": 5, "bottom": -5}},
            "recording": "", "model_3d_info": []}


def _core_3d_outputs(splat: list, first_id: int, prefix: str) -> dict:
    """Core's 3D nodes on the pack's objects: the splat in core's splat viewer, the mesh saved by core's
    SaveGLB and shown by Preview 3D, plus the pack's .ply (with the workflow in its header)."""
    ids = [str(first_id + k) for k in range(6)]
    return {
        ids[0]: {"class_type": "SplatToFile3D", "inputs": {"splat": splat, "format": "spz"}},
        ids[1]: {"class_type": "PreviewGaussianSplat",
                 "inputs": {"model_3d": [ids[0], 0], "viewport_state": _viewport_state(), "width": 1024,
                            "height": 1024}},
        ids[2]: {"class_type": "LGMSplatToMesh",
                 "inputs": {"splat": splat, "resolution": 128, "target_faces": 30000, "texture": True,
                            "texture_size": 512, "level": 0.6, "calibrate_level": False}},
        ids[3]: {"class_type": "SaveGLB",
                 "inputs": {"mesh": [ids[2], 0], "filename_prefix": f"lgm/{prefix}_mesh", "image": ""}},
        ids[4]: {"class_type": "MeshToFile3D", "inputs": {"mesh": [ids[2], 0]}},
        ids[5]: {"class_type": "Preview3D", "inputs": {"model_file": [ids[4], 0], "image": ""}},
    }


def demo_core3d() -> dict:
    """Out of the box, with core's 3D viewers (ComfyUI >= 0.33)."""
    g = {
        "1": {"class_type": "LGMExampleViews", "inputs": {"example": "demo"}},
        "2": _lgm_loader(LGM_DEMO),
        "3": {"class_type": "LGMReconstruct", "inputs": {"lgm_model": ["2", 0], "views": ["1", 0], "elevation": 0.0}},
        "4": {"class_type": "LGMSaveSplat",
              "inputs": {"splat": ["3", 0], "filename_prefix": "lgm/demo_core3d", "min_opacity": 0.005,
                         "format": "ply"}},
    }
    g.update(_core_3d_outputs(["3", 0], 5, "demo_core3d"))
    return g


def image_to_3d_core3d() -> dict:
    """Image -> 3D (official models) shown and saved by core's 3D nodes (ComfyUI >= 0.33)."""
    g = {k: v for k, v in image_to_3d().items() if int(k) <= 6}
    g.update(_core_3d_outputs(["6", 0], 7, "image_to_3d_core3d"))
    return g


WORKFLOWS = {
    "lgm_demo_views_to_3d": demo_views_to_3d,
    "lgm_text_to_3d": text_to_3d,
    "lgm_image_to_3d": image_to_3d,
    "lgm_views_to_3d": views_to_3d,
    "lgm_ply_to_mesh": ply_to_mesh,
    "lgm_demo_core3d": demo_core3d,
    "lgm_image_to_3d_core3d": image_to_3d_core3d,
}

ALL_CORES = ("0.3.75", "0.33.0")
CORES = {name: ALL_CORES for name in WORKFLOWS}
CORES.update({"lgm_demo_core3d": ("0.33.0",), "lgm_image_to_3d_core3d": ("0.33.0",)})
"""The ComfyUI cores each graph runs on (and whose frontend builds it: the oldest listed)."""
