"""LGM Example Views: the 4 example views bundled with the pack, read in place (no copying, no download).

How a fresh install finds them: the views live in the pack's own ``examples/<name>/view_000.png ...
view_270.png`` (``files.example_view_sets``); this node lists those folders and loads one, so the shipped
*views -> 3D* demo workflow runs before the user has put anything into ComfyUI's input folder.
"""

from __future__ import annotations

from . import files
from .comfy_api import io
from .types import CATEGORY, check_choice, first_error


class LGMExampleViews(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = list(files.example_view_sets()) or ["demo"]
        return io.Schema(
            node_id="LGMExampleViews",
            display_name="LGM Example Views",
            category=CATEGORY,
            description="Loads 4 example views bundled with the pack (examples/<name>/view_000..270.png: front, "
                        "then the object turned by 90, 180, 270 degrees, elevation 0, on white), read where the pack "
                        "is installed. 'demo' is a held-out test object of the bundled demo model (CC-BY-3.0, see "
                        "examples/demo/LICENSE.txt).",
            inputs=[io.Combo.Input("example", options=names, default=names[0],
                                   tooltip="A view set in the pack's examples/ folder.")],
            outputs=[io.Image.Output(display_name="views",
                                     tooltip="The 4 views [4,H,W,3] in LGM order, for LGM Reconstruct.")],
        )

    @classmethod
    def validate_inputs(cls, example):
        return first_error(check_choice("example", example, list(files.example_view_sets())))

    @classmethod
    def execute(cls, example) -> io.NodeOutput:
        from lgm_core.demo import example_views

        folder = files.example_view_sets().get(example)
        if folder is None:
            raise FileNotFoundError(f"no example view set {example!r} in the pack's examples/ folder")
        views = example_views(folder)  # [4,3,H,W] in [0,1] on white, LGM order
        return io.NodeOutput(views.permute(0, 2, 3, 1).float().cpu().contiguous())
