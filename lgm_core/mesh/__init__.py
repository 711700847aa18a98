"""Gaussians -> textured triangle meshes (pip-only; see docs/mesh_extraction.md).

``extract_mesh(gaussians, ...) -> Mesh``; ``Mesh.export("out.glb" | ".obj" | ".ply")``;
``render_mesh(mesh, cameras)`` is a small PyTorch z-buffer renderer for checks and benchmarks.
On CUDA every heavy stage runs in PyTorch on the GPU (marching cubes, decimation, UV charts: ``mc``,
``decimate``, ``charts``; the small hole-filling pass runs in NumPy); the optional compiled helpers (scikit-image, fast-simplification, xatlas,
SciPy, trimesh for interop) are imported only when used.
"""

from .types import Mesh, vertex_normals
from .extract import extract_mesh
from .raster import Fragments, MeshRender, rasterize, render_mesh

__all__ = ["Mesh", "extract_mesh", "render_mesh", "rasterize", "Fragments", "MeshRender", "vertex_normals"]
