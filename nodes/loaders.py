"""Model loader nodes: LGM checkpoints (``models/lgm``) and multi-view diffusion (``models/diffusers``)."""

from __future__ import annotations

import os

from lgm_core import hub

from . import comfy_api as api, devices, files
from .comfy_api import io
from .model_management import ManagedModel
from .types import CATEGORY, PRECISIONS, LGMModel, MultiViewPipelineType, check_choice, first_error

LGM_OFFICIAL = hub.LGM_WEIGHTS.filename
LGM_DEMO = "demo (bundled, lgm_demo.safetensors)"
"""The small LGM shipped inside the pack (lgm_core/assets/demo), listed first: works offline, no copying."""
MV_MODELS = {m.name: m for m in (hub.MVDREAM, hub.IMAGEDREAM)}
"""Official multi-view models by their folder name in models/diffusers (from lgm_core.hub's registry)."""

_DOWNLOAD_TIP = ("Download the official file from the Hugging Face hub into the first models folder when it is "
                 "missing. Off: never touch the network (files must already be there).")


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
                                       f"{LGM_OFFICIAL} from huggingface.co/{hub.LGM_WEIGHTS.repo_id}."),
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
            from lgm_core.demo_assets import demo_weights_path

            path = str(demo_weights_path())
        else:
            path = files.lgm_checkpoint_path(ckpt_name)  # contained in models/lgm, or UnsafePathError
        if path is None:
            if not allow_download or ckpt_name != LGM_OFFICIAL:
                raise FileNotFoundError(
                    f"{ckpt_name} is not in {files.lgm_folder()}. Download "
                    f"{hub.file_url(hub.LGM_WEIGHTS.repo_id, LGM_OFFICIAL)} there, or enable allow_download.")
            api.log.info("downloading %s/%s into %s", hub.LGM_WEIGHTS.repo_id, LGM_OFFICIAL, files.lgm_folder())
            path = hub.fetch_file(hub.LGM_WEIGHTS.repo_id, LGM_OFFICIAL, what=hub.LGM_WEIGHTS.what,
                                  local_dir=files.lgm_folder(), place_hint=files.lgm_folder())
        dtype = devices.pick_dtype(precision)
        # ComfyUI places the weights; ManagedModel.get() switches on the library's fast path once they are
        # on the compute device (LGM.optimize_for_inference())
        model = load_lgm(path, dtype=dtype, device="cpu")
        managed = ManagedModel(model, dtype, kind="lgm", preset=model.preset or "custom",
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
        options = names + [n for n in MV_MODELS if n not in names]
        return io.Schema(
            node_id="LGMMultiViewLoader",
            display_name="LGM Multi-View Diffusion Loader",
            category=CATEGORY,
            description="Loads MVDream (text -> 4 views) or ImageDream (image -> 4 views) from a diffusers-layout "
                        "folder in models/diffusers. Only .safetensors weights are read; no code from the folder runs.",
            inputs=[
                io.Combo.Input("model_name", options=options, default=hub.IMAGEDREAM.name,
                               tooltip=f"Folder in models/diffusers: {hub.MVDREAM.name} (text) or "
                                       f"{hub.IMAGEDREAM.name} (image), from huggingface.co/ashawkey."),
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
                           check_choice("model_name", model_name, names + [n for n in MV_MODELS if n not in names]))

    @classmethod
    def execute(cls, model_name, precision, allow_download) -> io.NodeOutput:
        from lgm_core.mvdiffusion import MultiViewPipeline

        path = files.diffusers_model_path(model_name)  # contained in models/diffusers, or UnsafePathError
        if path is None:
            official = MV_MODELS.get(model_name)
            dest = os.path.join(files.diffusers_folder(), model_name)
            if not allow_download or official is None:
                hint = f"huggingface.co/{official.repo_id}" if official else "its diffusers-format repository"
                raise FileNotFoundError(f"{model_name} is not in {files.diffusers_folder()}. Download {hint} into "
                                        f"{dest}, or enable allow_download.")
            api.log.info("downloading %s into %s", official.repo_id, dest)
            path = hub.fetch_snapshot(official.repo_id, what=official.what, files=official.files, local_dir=dest,
                                      place_hint=dest)
        dtype = devices.pick_dtype(precision)
        pipe = MultiViewPipeline.from_pretrained(path, dtype=dtype, device="cpu")
        managed = ManagedModel(pipe, dtype, modules=pipe.torch_modules(),
                               kind="imagedream" if pipe.is_imagedream else "mvdream", name=model_name)
        return io.NodeOutput(managed)
