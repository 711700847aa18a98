"""The ComfyExtension that lists the pack's nodes (returned by ``comfy_entrypoint``)."""

from __future__ import annotations

from . import comfy_api as api, devices, files
from . import dependencies
from .examples import LGMExampleViews
from .loaders import LGMModelLoader, LGMMultiViewLoader
from .mesh import LGMSaveMesh, LGMSplatToMesh
from .multiview import LGMImageToMultiView, LGMPrepareImage, LGMTextToMultiView
from .reconstruct import LGMReconstruct
from .render import LGMOrbitCameras, LGMRenderSplat
from .splat_files import LGMLoadSplat, LGMSaveSplat

NODES = [
    LGMModelLoader, LGMMultiViewLoader,
    LGMTextToMultiView, LGMImageToMultiView, LGMPrepareImage, LGMExampleViews,
    LGMReconstruct,
    LGMOrbitCameras, LGMRenderSplat,
    LGMSaveSplat, LGMLoadSplat,
    LGMSplatToMesh, LGMSaveMesh,
]

for _node in NODES:
    dependencies.guard_node(_node, _node.__name__)  # node ids are the class names (tested)


class LGMExtension(api.ComfyExtension):
    def __init__(self):
        # ComfyUI 0.3.x never awaits on_load, so start-up work happens here (once, at load time)
        files.register_model_folders()
        devices.log_accelerators()
        deps = dependencies.report()
        if not deps.ok:  # the nodes still load (workflows open); each affected node fails with this message
            api.log.error(deps.message())

    async def get_node_list(self):
        return list(NODES)
