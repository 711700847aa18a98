#!/usr/bin/env python3
"""Turn Debian's ``sweethome3d-furniture`` catalogues into compact meshes + a sources list for
``python -m lgm_core prepare-data --sources``.

The package holds five zip catalogues (``*.sh3f``) of OBJ+MTL furniture, each with a
``PluginFurnitureCatalog.properties`` that names every model and its creator. Licences (Debian's
``copyright`` file): KatorLegaz and Reallusion CC-BY-3.0-US, Scopia and BlendSwap-CC-BY CC-BY-3.0,
BlendSwap-CC-0 CC0.

For each model this script applies the catalogue's ``modelRotation``, bakes image textures into vertex
colours (textured faces are first split in UV space so the colours keep some texture detail), simplifies
meshes above ``--max-faces`` (fast-simplification, colours carried over from the nearest original
vertex), and writes a binary PLY with vertex colours. That keeps a whole catalogue small enough to travel
to a GPU machine (about 30 MB for all 820 models at 4,000 faces), where ``prepare-data`` renders it.
It also assigns a seeded ``train``/``val``/``test`` split by object and records name, creator,
catalogue and licence of every model, which the dataset manifest and the model card carry on.

Usage:
    apt-get download sweethome3d-furniture && dpkg -x sweethome3d-furniture_*.deb furniture-pkg
    python scripts/sweethome3d_dataset.py furniture-pkg/usr/share/sweethome3d/furniture -o data/sh3d
    python -m lgm_core prepare-data --sources data/sh3d/sources.json -o data/sh3d-views ...
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

LICENSES = {
    "KatorLegaz": ("CC-BY-3.0-US", "Andrew Kator & Jennifer Legaz"),
    "Reallusion": ("CC-BY-3.0-US", "Reallusion"),
    "Scopia": ("CC-BY-3.0", "Scopia Visual Interfaces Systems"),
    "BlendSwap-CC-BY": ("CC-BY-3.0", "BlendSwap contributors"),
    "BlendSwap-CC-0": ("CC0-1.0", "BlendSwap contributors / eTeks"),
}


def read_properties(data: bytes) -> dict:
    """Java .properties (ISO-8859-1 with \\uXXXX escapes) -> dict."""
    text = data.decode("latin-1")
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), value)
        out[key.strip()] = value.replace("\\:", ":").replace("\\=", "=").strip()
    return out


def catalogue_models(sh3f: Path, extract_to: Path):
    """Yield one dict per model of a catalogue (extracting the zip once)."""
    name = sh3f.stem
    dest = extract_to / name
    if not (dest / "PluginFurnitureCatalog.properties").is_file():
        with zipfile.ZipFile(sh3f) as z:
            z.extractall(dest)
    props = read_properties((dest / "PluginFurnitureCatalog.properties").read_bytes())
    license_id, default_author = LICENSES.get(name, ("see catalogue", ""))
    n = 1
    while f"id#{n}" in props:
        model = props.get(f"model#{n}", "").lstrip("/")
        rot = props.get(f"modelRotation#{n}")
        yield {
            "catalogue": name,
            "catalogue_id": props[f"id#{n}"],
            "name": props.get(f"name#{n}", ""),
            "category": props.get(f"category#{n}", ""),
            "author": props.get(f"creator#{n}", default_author),
            "license": license_id,
            "model": dest / model,
            "rotation": [float(v) for v in rot.split()] if rot else None,
        }
        n += 1


def bake_vertex_colors(mesh, max_faces: int, texel_area: float = 48.0):
    """RenderMesh -> (vertices [V,3] float32, faces [F,3] int64, colours [V,3] uint8)."""
    import torch

    corners = mesh.corners.numpy().astype(np.float64)
    colors = mesh.colors.numpy().astype(np.float64)
    if mesh.face_texture is not None:
        uvs = mesh.uvs.numpy().astype(np.float64)
        tex_id = mesh.face_texture.numpy()
        sizes = np.array([t.shape[0] * t.shape[1] for t in mesh.textures], dtype=np.float64)
        for _ in range(4):  # split big textured faces (in texels) into 4, up to the face budget
            e1, e2 = uvs[:, 1] - uvs[:, 0], uvs[:, 2] - uvs[:, 0]
            area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) * np.where(tex_id >= 0, sizes[tex_id], 0)
            big = np.nonzero(area > texel_area)[0]
            if not len(big) or len(corners) + 3 * len(big) > max_faces:
                break

            def split(a):
                m01, m12, m20 = (a[:, 0] + a[:, 1]) / 2, (a[:, 1] + a[:, 2]) / 2, (a[:, 2] + a[:, 0]) / 2
                return np.concatenate([np.stack([a[:, 0], m01, m20], 1), np.stack([m01, a[:, 1], m12], 1),
                                       np.stack([m20, m12, a[:, 2]], 1), np.stack([m01, m12, m20], 1)])

            keep = np.ones(len(corners), bool)
            keep[big] = False
            corners = np.concatenate([corners[keep], split(corners[big])])
            colors = np.concatenate([colors[keep], split(colors[big])])
            uvs = np.concatenate([uvs[keep], split(uvs[big])])
            tex_id = np.concatenate([tex_id[keep], np.tile(tex_id[big], 4)])
        for t, tex in enumerate(mesh.textures):  # sample each corner's texel (bilinear, repeat)
            sel = np.nonzero(tex_id == t)[0]
            if not len(sel):
                continue
            uv = uvs[sel].reshape(-1, 2)
            uv = uv - np.floor(uv)
            grid = torch.from_numpy(np.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)).float()[None, None]
            texel = torch.nn.functional.grid_sample(tex.permute(2, 0, 1)[None], grid, mode="bilinear",
                                                    padding_mode="border", align_corners=False)[0, :, 0].T
            colors[sel] = colors[sel] * texel.numpy().reshape(-1, 3, 3)
    q = np.round(corners.reshape(-1, 3) * 1e5).astype(np.int64)
    c8 = np.clip(colors.reshape(-1, 3) * 255 + 0.5, 0, 255).astype(np.int64)
    if len(corners) <= max_faces:  # weld by position and colour: exact colours, no simplification
        key = np.concatenate([q, c8], 1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        verts = uniq[:, :3] / 1e5
        return verts.astype(np.float32), inv.reshape(-1, 3), uniq[:, 3:].astype(np.uint8)
    import fast_simplification
    from scipy.spatial import cKDTree

    uniq, inv = np.unique(q, axis=0, return_inverse=True)
    verts = uniq / 1e5
    faces = inv.reshape(-1, 3)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    reduction = 1.0 - max_faces / max(len(faces), 1)
    new_v, new_f = fast_simplification.simplify(verts.astype(np.float32), faces.astype(np.int32),
                                                target_reduction=float(np.clip(reduction, 0.0, 0.99)))
    _, nearest = cKDTree(corners.reshape(-1, 3)).query(new_v)
    return new_v.astype(np.float32), new_f.astype(np.int64), c8[nearest].astype(np.uint8)


def write_ply(path: Path, verts, faces, colors) -> None:
    vdt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v = np.empty(len(verts), vdt)
    v["x"], v["y"], v["z"] = verts[:, 0], verts[:, 1], verts[:, 2]
    v["red"], v["green"], v["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    fdt = np.dtype([("n", "u1"), ("i", "<i4", (3,))])
    f = np.empty(len(faces), fdt)
    f["n"] = 3
    f["i"] = faces
    header = ("ply\nformat binary_little_endian 1.0\ncomment sweethome3d-furniture, baked vertex colours\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    tmp = path.with_suffix(".ply.tmp")
    tmp.write_bytes(header.encode() + v.tobytes() + f.tobytes())
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("furniture", type=Path, help="folder with the *.sh3f catalogues")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output folder (meshes/ + sources.json)")
    ap.add_argument("--max-faces", type=int, default=4000, help="simplify meshes above this many triangles")
    ap.add_argument("--test", type=int, default=40, help="objects held out for testing")
    ap.add_argument("--val", type=int, default=40, help="objects held out for validation")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split")
    ap.add_argument("--limit", type=int, default=0, help="only the first N models (0 = all)")
    args = ap.parse_args(argv)

    from lgm_core.training.prepare import MeshLoadError, load_render_mesh

    out = args.output
    (out / "meshes").mkdir(parents=True, exist_ok=True)
    models = [m for sh3f in sorted(args.furniture.glob("*.sh3f")) for m in catalogue_models(sh3f, out / "extracted")]
    if not models:
        print(f"error: no *.sh3f catalogues in {args.furniture}", file=sys.stderr)
        return 2
    if args.limit:
        models = models[: args.limit]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(models))
    split = {int(i): "test" for i in order[: args.test]}
    split.update({int(i): "val" for i in order[args.test: args.test + args.val]})
    sources, skipped = [], []
    t0 = time.time()
    for k, m in enumerate(models):
        oid = re.sub(r"[^A-Za-z0-9_.-]+", "_", m["catalogue_id"].replace("#", "_"))
        ply = out / "meshes" / f"{oid}.ply"
        try:
            if not ply.is_file():
                mesh = load_render_mesh(m["model"], m["rotation"])
                verts, faces, colors = bake_vertex_colors(mesh, args.max_faces)
                if len(faces) == 0:
                    raise MeshLoadError("no faces left")
                write_ply(ply, verts, faces, colors)
        except (MeshLoadError, ValueError, RuntimeError, OSError, IndexError, MemoryError) as exc:
            skipped.append((str(m["model"]), str(exc).splitlines()[0]))
            print(f"skipped {m['model']}: {skipped[-1][1]}", file=sys.stderr)
            continue
        sources.append({"path": f"meshes/{ply.name}", "id": oid, "name": m["name"], "license": m["license"],
                        "author": m["author"], "split": split.get(k, "train"),
                        "catalogue": m["catalogue"], "category": m["category"]})
        if (k + 1) % 50 == 0:
            el = time.time() - t0
            print(f"[{k + 1}/{len(models)}] {el:.0f} s, ETA {el / (k + 1) * (len(models) - k - 1):.0f} s", file=sys.stderr)
    (out / "sources.json").write_text(json.dumps(sources, indent=1))
    size = sum(p.stat().st_size for p in (out / "meshes").glob("*.ply"))
    counts = {s: sum(1 for x in sources if x["split"] == s) for s in ("train", "val", "test")}
    print(f"{len(sources)} meshes ({size / 2**20:.1f} MiB) in {out / 'meshes'}; split {counts}; "
          f"{len(skipped)} skipped; {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
