"""Model loader nodes: LGM checkpoints (``models/lgm``) and multi-view diffusion (``models/diffusers``)."""

from __future__ import annotations

import os

import torch

from . import comfy_api as api, devices, files
from .comfy_api import io
from .types import CATEGORY, PRECISIONS, LGMModel, MultiViewPipelineType, check_choice, first_error

LGM_REPO = "ashawkey/LGM"
LGM_OFFICIAL = "model_fp16_fixrot.safetensors"
LGM_DEMO = "demo (bundled, lgm_demo.safetensors)"
"""The small LGM shipped inside the pack (lgm_core/assets/demo), listed first: works offline, no copying."""
MV_REPOS = {
    "mvdream-sd2.1-diffusers": "ashawkey/mvdream-sd2.1-diffusers",
    "imagedream-ipmv-diffusers": "ashawkey/imagedream-ipmv-diffusers",
}

_DOWNLOAD_TIP = ("Download the official file from the Hugging Face hub into the first models folder when it is "
                 "missing. Off: never touch the network (files must already be there).")


def _hub_download(repo_id: str, dest: str, filename: str | None = None) -> str:
    """Download one file (or a whole repo snapshot when ``filename`` is None) into ``dest``."""
    try:
        import huggingface_hub
    except ImportError as exc:  # pragma: no cover - a listed dependency
        raise RuntimeError("huggingface_hub is needed for downloads: pip install huggingface_hub") from exc
    api.log.info("downloading %s%s into %s", repo_id, f"/{filename}" if filename else "", dest)
    try:
        if filename:
            return huggingface_hub.hf_hub_download(repo_id=repo_id, filename=filename, local_dir=dest)
        return huggingface_hub.snapshot_download(
            repo_id=repo_id, local_dir=dest,
            allow_patterns=["*.json", "*.txt", "*.safetensors", "tokenizer/*", "scheduler/*"])
    except Exception as exc:
        raise RuntimeError(f"could not download {repo_id}{'/' + filename if filename else ''} into {dest}: {exc}. "
                           "Check the connection (or HF_HUB_OFFLINE), or download it by hand.") from exc


class LGMModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        options = _lgm_options()
        return io.Schema(
            node_id="LGMModelLoader",
            display_name="LGM Model Loader",
            category=CATEGORY,
            description="Loads an LGM checkpoint (.safetensors) from models/lgm. The architecture (big/small/"
                        "custom) is detected from the file; fixrot vs legacy rotations from its name. "
                        "ComfyUI's memory manager moves the model between devices.",
            inputs=[
                io.Combo.Input("ckpt_name", options=options, default=LGM_OFFICIAL,
                               tooltip="Checkpoint file in models/lgm, or the small demo model bundled with the pack "
                                       "(offline, CPU-sized, for trying it out). The official one is "
                                       f"{LGM_OFFICIAL} from huggingface.co/{LGM_REPO}."),
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="Weights dtype. auto: fp16 on GPUs that support it, fp32 on the CPU."),
                io.Boolean.Input("allow_download", default=False, tooltip=_DOWNLOAD_TIP),
            ],
            outputs=[LGMModel.Output(display_name="lgm_model", tooltip="The loaded LGM reconstruction model.")],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, precision):
        return first_error(check_choice("precision", precision, PRECISIONS),
                           check_choice("ckpt_name", ckpt_name, _lgm_options()))

    @classmethod
    def execute(cls, ckpt_name, precision, allow_download) -> io.NodeOutput:
        from lgm_core.weights import load_lgm

        if ckpt_name == LGM_DEMO:
            from lgm_core.demo import demo_weights_path

            path = str(demo_weights_path())
        else:
            path = files.lgm_checkpoint_path(ckpt_name)  # contained in models/lgm, or UnsafePathError
        if path is None:
            if not allow_download or ckpt_name != LGM_OFFICIAL:
                raise FileNotFoundError(
                    f"{ckpt_name} is not in {files.lgm_folder()}. Download "
                    f"https://huggingface.co/{LGM_REPO}/resolve/main/{LGM_OFFICIAL} there, or enable allow_download.")
            path = _hub_download(LGM_REPO, files.lgm_folder(), LGM_OFFICIAL)
        dtype = devices.pick_dtype(precision)
        model = load_lgm(path, dtype=dtype, device="cpu")
        managed = api.ManagedModel(model, dtype, kind="lgm", preset=model.preset or "custom",
                                   rotation=model.rotation_mode, file=os.path.basename(path))
        return io.NodeOutput(managed)


def _lgm_options() -> list[str]:
    """The bundled demo model first, then models/lgm's files, then the official file (downloadable)."""
    names = files.lgm_checkpoint_names()
    return [LGM_DEMO] + names + [n for n in [LGM_OFFICIAL] if n not in names]


class LGMMultiViewLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = files.diffusers_model_names()
        options = names + [n for n in MV_REPOS if n not in names]
        return io.Schema(
            node_id="LGMMultiViewLoader",
            display_name="LGM Multi-View Diffusion Loader",
            category=CATEGORY,
            description="Loads MVDream (text -> 4 views) or ImageDream (image -> 4 views) from a diffusers-layout "
                        "folder in models/diffusers. Only .safetensors weights are read; no code from the folder runs.",
            inputs=[
                io.Combo.Input("model_name", options=options, default="imagedream-ipmv-diffusers",
                               tooltip="Folder in models/diffusers: mvdream-sd2.1-diffusers (text) or "
                                       "imagedream-ipmv-diffusers (image), from huggingface.co/ashawkey."),
                io.Combo.Input("precision", options=PRECISIONS, default="auto",
                               tooltip="Weights dtype. auto: fp16 on GPUs that support it, fp32 on the CPU."),
                io.Boolean.Input("allow_download", default=False, tooltip=_DOWNLOAD_TIP),
            ],
            outputs=[MultiViewPipelineType.Output(display_name="mv_pipeline",
                                                  tooltip="The multi-view diffusion pipeline.")],
        )

    @classmethod
    def validate_inputs(cls, model_name, precision):
        names = files.diffusers_model_names()
        return first_error(check_choice("precision", precision, PRECISIONS),
                           check_choice("model_name", model_name, names + [n for n in MV_REPOS if n not in names]))

    @classmethod
    def execute(cls, model_name, precision, allow_download) -> io.NodeOutput:
        from lgm_core.mvdiffusion import MultiViewPipeline

        path = files.diffusers_model_path(model_name)  # contained in models/diffusers, or UnsafePathError
        if path is None:
            repo = MV_REPOS.get(model_name)
            if not allow_download or repo is None:
                hint = f"huggingface.co/{repo}" if repo else "its diffusers-format repository"
                raise FileNotFoundError(f"{model_name} is not in {files.diffusers_folder()}. Download {hint} into "
                                        f"{os.path.join(files.diffusers_folder(), model_name)}, or enable allow_download.")
            path = _hub_download(repo, os.path.join(files.diffusers_folder(), model_name))
        dtype = devices.pick_dtype(precision)
        pipe = MultiViewPipeline.from_pretrained(path, dtype=dtype, device="cpu")
        managed = api.ManagedModel(_PipelineModules(pipe), dtype, on_reload=pipe.to,
                                   kind="imagedream" if pipe.is_imagedream else "mvdream", name=model_name)
        managed.pipeline = pipe
        return io.NodeOutput(managed)


class _PipelineModules(torch.nn.ModuleList):
    """The pipeline's torch modules in one container, so ComfyUI moves them together."""

    def __init__(self, pipe):
        super().__init__([m for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.image_encoder) if m is not None])
