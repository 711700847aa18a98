"""The adversarial robustness campaign of issue 14, runnable against any checkout.

    python benchmarks/robustness_campaign.py --repo /work/main --out main.json      # the baseline
    python benchmarks/robustness_campaign.py --repo .          --out branch.json    # this branch
    python benchmarks/robustness_campaign.py --compare main.json branch.json         # the table

``--repo`` picks the code under test (its ``lgm_core`` is imported first, its CLI is run with
``python -m lgm_core`` from that folder, its node pack is loaded into ComfyUI); the corpus and the
checks come from this file and ``tests/fuzz_corpus.py`` beside it, so both checkouts face the
same cases. Categories (each case passes or fails with a reason):

* ``ply``, ``splat``, ``weights``, ``images``: the seeded fuzz corpus (two seeds) against the
  readers: no unexpected exception type, no hang, bounded memory, nothing loaded silently as
  garbage, errors naming the file in one line; plus a 12000² PNG (peak RSS in a subprocess).
* ``degenerate``: 21 Gaussian sets (NaN/Inf per field, zero quaternions, negative scales, empty,
  single, coincident, huge values, strays at 10 / 1e3 / 1e30, ...) x 4 consumers (render, save_ply,
  save_splat, extract_mesh in a subprocess with a time limit): a clean ValueError, or an output
  without NaN that reads back (writers), and a mesh that is not collapsed by strays.
* ``kill9``: writers killed with SIGKILL mid-write: the target stays complete, ffmpeg does not
  live on, and a later write into the folder leaves no temporary file behind.
* ``fulldisk``: writes into a 150 KB tmpfs (needs root; else ``RLIMIT_FSIZE``): an error naming
  the target, the old file(s) untouched, no temporary file left.
* ``comfyui``: node file-name inputs (``../``, absolute paths, symlinks, annotations, counters,
  symlink loops) in a real ComfyUI (``.comfyui/`` of this checkout; the pack under test is linked).
* ``cli``: ``python -m lgm_core`` with meaningless flags and damaged files: exit 2 with one
  ``error:`` line, no traceback, no output file; valid runs exit 0.
* ``concurrent``: concurrent writers of one .mp4, one .ply and one textured .obj with readers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PY = sys.executable


# ------------------------------------------------------------------------------------ plumbing
class Results:
    def __init__(self):
        self.cases = {}

    def add(self, category: str, name: str, ok: bool, detail: str = "") -> None:
        key = f"{category}/{name}"
        n = 2
        while key in self.cases:
            key = f"{category}/{name} #{n}"
            n += 1
        self.cases[key] = {"category": category, "ok": bool(ok), "detail": detail[:300]}
        if not ok:
            print(f"  FAIL {key}: {detail[:160]}", flush=True)


def run_py(repo: Path, code: str, *args, timeout: float = 120.0, env=None, preexec_fn=None):
    """Run ``code`` in a fresh interpreter with ``repo`` first on sys.path; (rc, stdout, stderr)."""
    prelude = f"import sys; sys.path.insert(0, {str(repo)!r}); sys.path.insert(1, {str(HERE / 'tests')!r})\n"
    try:
        p = subprocess.run([PY, "-c", prelude + textwrap.dedent(code), *map(str, args)], capture_output=True,
                           text=True, timeout=timeout, cwd=str(repo), env=env, preexec_fn=preexec_fn)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return None, out, f"timed out after {timeout:.0f} s"


def cli(repo: Path, *argv, timeout: float = 120.0, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    try:
        p = subprocess.run([PY, "-m", "lgm_core", *map(str, argv)], capture_output=True, text=True,
                           timeout=timeout, cwd=str(repo), env=env, preexec_fn=preexec_fn)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout:.0f} s"


def hidden_leftovers(folder: Path, keep=()):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".") and p.name not in keep)


@contextlib.contextmanager
def small_disk(kb: int = 150):
    """A folder on a ``kb`` KB tmpfs (root only); yields (folder, how) or raises OSError."""
    d = Path(tempfile.mkdtemp(prefix="fulldisk_"))
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(d)], capture_output=True)
    if p.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise OSError(p.stderr.decode().strip() or "mount failed")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------------- 1. readers
def reader_table():
    """Readers of the checkout under test, with the error type each should raise."""
    import torch

    import lgm_core.splat_formats as sf
    import lgm_core.weights as w
    from lgm_core.image_io import load_image
    from lgm_core.ply import PlyError, load_ply

    from fuzz_corpus import SANITY_CHECKS as sane  # torch-only checks: they run against any checkout

    def read_weights(path):
        w.read_safetensors_header(path)
        if hasattr(w, "load_safetensors"):
            return w.load_safetensors(path)
        from safetensors.torch import load_file  # what load_lgm does on the baseline

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise w.CheckpointError(f"{path}: cannot read tensors ({exc}); the file may be corrupt") from exc

    del torch
    return {"ply": (load_ply, PlyError, sane["ply"]), "splat": (sf.load_splat, getattr(sf, "SplatError", ValueError),
                                                              sane["splat"]),
            "safetensors": (read_weights, w.CheckpointError, sane["safetensors"]),
            "image": (load_image, ValueError, sane["image"])}


def category_readers(res: Results, repo: Path, work: Path) -> None:
    import torch

    from fuzz_corpus import make_corpus, run_case

    torch.set_num_threads(1)
    table = reader_table()
    names = {"ply": "ply", "splat": "splat", "safetensors": "weights", "image": "images"}
    folder = work / "fuzz"
    folder.mkdir()
    for seed in (0, 1):
        for case in make_corpus(seed):
            problem = run_case(case, folder, table=table)
            res.add(names[case.kind], f"seed {seed}: {case.name}", problem is None, problem or "")
    # a 12000 x 12000 PNG: peak memory of load_image in a fresh process
    big = work / "big.png"
    rc, out, err = run_py(repo, f"""
        import numpy as np, resource
        from PIL import Image
        im = Image.new("RGB", (12000, 12000), (20, 120, 220))
        im.paste((200, 30, 30), (2000, 2000, 9000, 9000))
        im.save({str(big)!r}, compress_level=1)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """, timeout=300)
    rc, out, err = run_py(repo, f"""
        import resource
        from lgm_core.image_io import load_image
        t = load_image({str(big)!r})
        print(tuple(t.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """, timeout=300)
    ok = rc == 0 and int(out.split()[-1]) < 2_500_000  # KB: well under the 5-9 GB reported
    res.add("images", "12000x12000 PNG peak RSS < 2.5 GB", ok, f"rc={rc} {out.strip()} {err.strip()[-200:]}")
    big.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ 2. degenerate
DEGENERATE = ["nan position", "nan scale", "nan rotation", "nan opacity", "nan colour", "inf position", "inf scale",
              "inf colour", "zero quaternion", "negative scale", "all transparent", "empty", "single Gaussian",
              "all at one point", "position 1e30", "scale 1e20", "strays at 10", "strays at 1e3", "strays at 1e30",
              "opacity above 1", "padded batch item"]
INVALID = {"nan position", "nan scale", "nan rotation", "nan opacity", "nan colour", "inf position", "inf scale",
           "inf colour", "zero quaternion", "negative scale"}


def degenerate_set(name: str):
    import dataclasses

    import torch

    from lgm_core.gaussians import Gaussians
    from lgm_core.mesh.synthetic import make_scene

    g = make_scene("sphere", n=6000, seed=0).clone()
    nan, inf = float("nan"), float("inf")
    edits = {
        "nan position": lambda: g.positions[0, 5].__setitem__(0, nan),
        "nan scale": lambda: g.scales[0, 5].__setitem__(1, nan),
        "nan rotation": lambda: g.rotations[0, 5].__setitem__(2, nan),
        "nan opacity": lambda: g.opacities[0, 5].__setitem__(0, nan),
        "nan colour": lambda: g.sh[0, 5, 0].__setitem__(1, nan),
        "inf position": lambda: g.positions[0, 5].__setitem__(2, inf),
        "inf scale": lambda: g.scales[0, 5].__setitem__(0, inf),
        "inf colour": lambda: g.sh[0, 5, 0].__setitem__(0, -inf),
        "zero quaternion": lambda: g.rotations[0, 5].zero_(),
        "negative scale": lambda: g.scales[0, 5].__setitem__(0, -0.02),
        "all transparent": lambda: g.opacities.zero_(),
        "position 1e30": lambda: g.positions[0, :2].fill_(1e30),
        "scale 1e20": lambda: g.scales[0, 5].fill_(1e20),
        "opacity above 1": lambda: g.opacities[0, :100].fill_(3.0),
    }
    if name in edits:
        edits[name]()
        return g
    if name == "empty":
        return Gaussians(g.positions[:, :0], g.scales[:, :0], g.rotations[:, :0], g.opacities[:, :0], g.sh[:, :0])
    if name == "single Gaussian":
        return Gaussians(g.positions[:, :1], g.scales[:, :1], g.rotations[:, :1], g.opacities[:, :1], g.sh[:, :1])
    if name == "all at one point":
        g.positions[:] = 0.25
        return g
    if name.startswith("strays at"):
        d = float(name.split()[-1])
        for i in range(3):
            g.positions[0, i] = torch.tensor([d, -0.3 * d * i, 0.1 * d])
            g.opacities[0, i] = 0.95
        return g
    if name == "padded batch item":  # 4000 real Gaussians + 2000 of padding (counts), as in a padded batch
        g.opacities[0, 4000:] = 0.0
        return dataclasses.replace(g, counts=torch.tensor([4000]))
    raise KeyError(name)


def _one_line_value_error(exc) -> bool:
    return isinstance(exc, ValueError) and "\n" not in str(exc).strip()


def category_degenerate(res: Results, repo: Path, work: Path) -> None:
    import torch

    from lgm_core.cameras import Cameras
    from lgm_core.ply import load_ply, save_ply
    from lgm_core.render import render
    from lgm_core.splat_formats import load_splat, save_splat

    cams = Cameras.orbit(0.0, [0.0, 120.0], size=64)
    for name in DEGENERATE:
        g = degenerate_set(name)
        # render
        try:
            out = render(g, cams, backend="torch")
            finite = all(bool(torch.isfinite(t).all()) for t in (out.image, out.alpha, out.depth))
            ranged = float(out.image.min()) >= 0 and float(out.image.max()) <= 1
            ok, why = finite and ranged, "" if finite and ranged else "NaN or out-of-range pixels in the render"
        except Exception as exc:
            ok, why = _one_line_value_error(exc), f"{type(exc).__name__}: {exc}"
        res.add("degenerate", f"{name} -> render", ok, why)
        # writers: refuse invalid sets; anything written must read back equal in count and finite
        for ext, save, load in ((".ply", save_ply, load_ply), (".splat", save_splat, load_splat)):
            path = work / f"degenerate{ext}"
            path.unlink(missing_ok=True)
            item = g
            expected = int(((item.opacities[0, :, 0] >= 0.005) & item.valid_mask()[0]).sum()) if item.num_gaussians else 0
            try:
                save(item, path)
            except Exception as exc:
                ok = _one_line_value_error(exc) and (name in INVALID or name in ("empty", "all transparent"))
                res.add("degenerate", f"{name} -> save{ext}", ok, f"refused: {type(exc).__name__}: {exc}")
                continue
            if name in INVALID:
                try:
                    back = load(path)
                    why = f"wrote a file of {back.num_gaussians} Gaussians without a word"
                except Exception as exc:
                    why = f"wrote a file its own reader refuses ({exc})"
                res.add("degenerate", f"{name} -> save{ext}", False, why)
                continue
            try:
                back = load(path)
                ok = back.num_gaussians == expected and all(
                    bool(torch.isfinite(getattr(back, f)).all()) for f in ("positions", "scales", "rotations",
                                                                          "opacities", "sh"))
                res.add("degenerate", f"{name} -> save{ext}", ok, f"read back {back.num_gaussians}/{expected}")
            except Exception as exc:
                ok = name == "empty" and ext == ".splat"  # an empty .splat is a 0-byte file: refusing it is fine
                res.add("degenerate", f"{name} -> save{ext}", ok, f"its own reader refuses it: {exc}")
        # the mesher, in a subprocess (the baseline hangs in xatlas on far strays)
        code = f"""
            import sys, time, torch
            torch.set_num_threads(1)
            sys.path.insert(0, {str(HERE / 'benchmarks')!r})
            from robustness_campaign import degenerate_set
            from lgm_core.mesh import extract_mesh
            g = degenerate_set({name!r})
            try:
                m = extract_mesh(g, resolution=48, target_faces=2000, texture=True, texture_size=64)
                fin = all(bool(torch.isfinite(t).all()) for t in (m.vertices, m.vertex_colors, m.uvs, m.texture))
                print("MESH", m.num_faces, int(fin), float(m.vertices.abs().max()))
            except ValueError as exc:
                print("VALUEERROR", str(exc).replace(chr(10), " | "))
        """
        rc, out, err = run_py(repo, code, timeout=150)
        line = next((ln for ln in out.splitlines() if ln.startswith(("MESH", "VALUEERROR"))), "")
        if rc is None:
            ok, why = False, "hung (killed after 150 s)"
        elif line.startswith("VALUEERROR"):
            ok, why = name not in ("strays at 10", "strays at 1e3", "strays at 1e30", "position 1e30", "scale 1e20",
                                   "padded batch item", "opacity above 1"), line
        elif line.startswith("MESH"):
            faces, fin, extent = int(line.split()[1]), int(line.split()[2]), float(line.split()[3])
            ok = bool(fin) and (faces >= 1000 if name.startswith(("strays", "position 1e30", "scale 1e20"))
                                else True) and extent < 10
            why = f"{faces} faces, finite={bool(fin)}, extent {extent:.3g}"
        else:
            ok, why = False, f"crashed rc={rc}: {err.strip()[-200:]}"
        res.add("degenerate", f"{name} -> extract_mesh", ok, why)


# ------------------------------------------------------------------------------------ 3. kill -9
WRITER_LOOP = """
    import sys, os, time, itertools, numpy as np, torch
    target, kind = sys.argv[1], sys.argv[2]
    from lgm_core.mesh.synthetic import make_scene
    scenes = [make_scene("sphere", n=200000, seed=s) for s in (0, 1)]
    frames = [np.random.default_rng(s).integers(0, 256, (60, 256, 256, 3), dtype=np.uint8) for s in (0, 1)]
    print("ready", flush=True)
    for k in itertools.count():
        s = k % 2
        if kind == "ply":
            from lgm_core.ply import save_ply; save_ply(scenes[s], target)
        elif kind == "splat":
            from lgm_core.splat_formats import save_splat; save_splat(scenes[s], target)
        elif kind in ("mp4", "webp"):
            from lgm_core.video import write_video; write_video(frames[s], target)
        elif kind == "png":
            from lgm_core.image_io import write_image; write_image(torch.rand(2048, 2048, 3), target)
        elif kind in ("glb", "obj"):
            from lgm_core.mesh import Mesh
            v = torch.rand(60000, 3); f = torch.randint(0, 60000, (100000, 3))
            Mesh(v, f, uvs=torch.rand(60000, 2), texture=torch.rand(1024, 1024, 3) * (s + 1) / 2).export(target)
        elif kind == "safetensors":
            from safetensors.torch import save
            from lgm_core.fileio import atomic_write_bytes
            atomic_write_bytes(target, save({"w": torch.rand(4_000_000)}))
"""


def _complete(kind: str, path: Path) -> str:
    """'' when ``path`` (and its set) is a complete file of ``kind``, else why not."""
    try:
        if kind == "ply":
            from lgm_core.ply import load_ply
            load_ply(path)
        elif kind == "splat":
            from lgm_core.splat_formats import load_splat
            load_splat(path)
        elif kind in ("mp4", "webp"):
            from lgm_core.video import read_video
            if read_video(path).shape[0] < 1:
                return "no frames"
        elif kind == "png":
            from PIL import Image
            with Image.open(path) as im:
                im.load()
        elif kind in ("glb", "obj"):
            from lgm_core.mesh import Mesh
            m = Mesh.load(path)
            if m.texture is None:
                return "texture missing"
        elif kind == "meshply":
            from lgm_core.mesh import Mesh
            if Mesh.load(path).num_faces < 1:
                return "no faces"
        elif kind == "safetensors":
            from safetensors.torch import load_file
            load_file(str(path))
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return ""


def _ffmpeg_children_of(pid_list):
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        state = stat.rsplit(") ", 1)[1].split()
        if b"ffmpeg" in cmd and state[0] not in "ZX" and int(state[1]) in pid_list + [1]:
            out.append(int(d.name))
    return out


def category_kill9(res: Results, repo: Path, work: Path) -> None:
    prelude = f"import sys; sys.path.insert(0, {str(repo)!r})\n"
    for kind in ("ply", "splat", "mp4", "webp", "png", "glb", "obj", "safetensors"):
        for delay in (0.4, 1.5):
            folder = work / f"kill_{kind}_{delay}"
            folder.mkdir()
            target = folder / f"out.{kind}"
            before_ffmpeg = set(_ffmpeg_children_of([]))
            proc = subprocess.Popen([PY, "-c", prelude + textwrap.dedent(WRITER_LOOP), str(target), kind],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(repo))
            proc.stdout.readline()
            deadline = time.time() + 120
            while not target.exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)  # the first version is complete
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            time.sleep(0.5)
            problems = []
            why = _complete(kind, target)
            if why:
                problems.append(f"target broken: {why}")
            orphans = set(_ffmpeg_children_of([proc.pid])) - before_ffmpeg
            if orphans:
                problems.append(f"orphaned ffmpeg {sorted(orphans)} still running")
                for pid in orphans:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            # a later write into the folder (writer dead, temp aged past any grace period)
            old = time.time() - 3 * 24 * 3600
            for name in hidden_leftovers(folder):
                os.utime(folder / name, (old, old), follow_symlinks=False)
            rc, out, err = run_py(repo, f"""
                from lgm_core.fileio import atomic_write_bytes
                atomic_write_bytes({str(folder / 'other.bin')!r}, b"x")
            """, timeout=60)
            left = hidden_leftovers(folder)
            if left:
                problems.append(f"temporary files never cleaned: {left}")
            res.add("kill9", f"{kind} killed after {delay} s", not problems, "; ".join(problems))


# ---------------------------------------------------------------------------------- 4. full disk
FULL_DISK_WRITERS = {
    "save_ply": "from lgm_core.ply import save_ply; save_ply(big_scene(), T)",
    "save_splat": "from lgm_core.splat_formats import save_splat; save_splat(big_scene(), T)",
    "write_video mp4": "from lgm_core.video import write_video; write_video(frames(48, 512), T)",
    "write_video odd-size mp4": "from lgm_core.video import write_video; write_video(frames(30, 301), T)",
    "write_video webp": "from lgm_core.video import write_video; write_video(frames(12, 256), T)",
    "write_video gif": "from lgm_core.video import write_video; write_video(frames(12, 256), T)",
    "write_image png": "from lgm_core.image_io import write_image; write_image(torch.rand(512, 512, 3), T)",
    "write_image jpg": "from lgm_core.image_io import write_image; write_image(torch.rand(1024, 1024, 3), T)",
    "mesh glb": "mesh().export(T)",
    "mesh ply": "mesh().export(T)",
    "mesh obj (set)": "mesh().export(T)",
    "save_lgm": "from lgm_core.testing import make_standin_lgm; make_standin_lgm(T)",
    "atomic_write_bytes": "from lgm_core.fileio import atomic_write_bytes; atomic_write_bytes(T, bytes(400000))",
}
FULL_DISK_EXT = {"save_ply": ".ply", "save_splat": ".splat", "write_video mp4": ".mp4", "write_video odd-size mp4": ".mp4",
                 "write_video webp": ".webp", "write_video gif": ".gif", "write_image png": ".png",
                 "write_image jpg": ".jpg", "mesh glb": ".glb", "mesh ply": ".ply", "mesh obj (set)": ".obj",
                 "save_lgm": ".safetensors", "atomic_write_bytes": ".bin"}


def _old_set(target: Path) -> dict:
    return {p.name: p.read_bytes() for p in target.parent.iterdir() if p.is_file()}


def category_fulldisk(res: Results, repo: Path, work: Path) -> None:
    helpers = """
        import sys, numpy as np, torch
        T = sys.argv[1]
        def big_scene():
            from lgm_core.mesh.synthetic import make_scene
            return make_scene("sphere", n=20000, seed=0)
        def frames(t, s):
            return np.random.default_rng(0).integers(0, 256, (t, s, s, 3), dtype=np.uint8)
        def mesh():
            from lgm_core.mesh import Mesh
            v = torch.rand(3000, 3); f = torch.randint(0, 3000, (5000, 3))
            return Mesh(v, f, uvs=torch.rand(3000, 2), texture=torch.rand(256, 256, 3), vertex_colors=torch.rand(3000, 3))
    """
    source = work / "fd_src"
    source.mkdir()
    rc, _, err = run_py(repo, f"""
        from lgm_core.mesh.synthetic import make_scene
        from lgm_core.ply import save_ply
        from lgm_core.testing import make_standin_lgm
        from lgm_core.image_io import write_image
        import torch
        save_ply(make_scene("sphere", n=3000, seed=0), {str(source / 's.ply')!r})
        make_standin_lgm({str(source / 'model_fp16_fixrot.safetensors')!r})
        for i in range(4):
            write_image(torch.rand(64, 64, 3), {str(source)!r} + f"/v{{i}}.png")
    """, timeout=120)
    cli_cases = {
        "cli render mp4": (".mp4", ["render", source / "s.ply", "--turntable", "48", "--size", "512", "-o", "{T}"]),
        "cli render webp": (".webp", ["render", source / "s.ply", "--turntable", "24", "--size", "256", "-o", "{T}"]),
        "cli render stills": (".png", ["render", source / "s.ply", "--views", "0", "90", "180", "--size", "512",
                                       "-o", "{T}"]),
        "cli mesh obj": (".obj", ["mesh", source / "s.ply", "--resolution", "48", "--texture-size", "512", "-o", "{T}"]),
        "cli reconstruct": (".ply", ["reconstruct", *[source / f"v{i}.png" for i in range(4)], "--weights",
                                     source / "model_fp16_fixrot.safetensors", "--min-opacity", "0", "-o", "{T}"]),
    }
    try:
        ctx = small_disk(150)
        disk = ctx.__enter__()
        how = "tmpfs 150 KB"
    except OSError:
        ctx, disk, how = None, work / "fd_limit", "RLIMIT_FSIZE 150 KB"
        disk.mkdir()
    print(f"  full disk: {how}", flush=True)

    def limit():
        if ctx is None:
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, resource.RLIM_INFINITY))

    try:
        cases = [(n, FULL_DISK_EXT[n], None) for n in FULL_DISK_WRITERS] + [(n, e, a) for n, (e, a) in cli_cases.items()]
        for name, ext, argv in cases:
            for p in list(disk.iterdir()):
                p.unlink()
            target = disk / f"out{ext}"
            target.write_bytes(b"old version")  # a small old file the new write must not destroy
            if ext == ".obj":
                (disk / "out.mtl").write_bytes(b"old mtl")
                (disk / "out.png").write_bytes(b"old png")
            if name == "cli render stills":
                for az in ("000", "090", "180"):
                    (disk / f"out_az{az}.png").write_bytes(b"old version")
            before = _old_set(target)
            if argv is None:
                rc, out, err = run_py(repo, textwrap.dedent(helpers) + FULL_DISK_WRITERS[name], target, timeout=180,
                                      preexec_fn=limit)
            else:
                rc, out, err = cli(repo, *[str(a).replace("{T}", str(target)) for a in argv], timeout=180,
                                   preexec_fn=limit)
            after = _old_set(target)
            problems = []
            if "Traceback" in err and argv is not None:
                problems.append("traceback")
            # every file is either untouched or a complete new file (a write that fitted is fine)
            changed = sorted(k for k in before if after.get(k) != before[k])
            kinds = {".ply": "ply", ".splat": "splat", ".mp4": "mp4", ".webp": "webp", ".png": "png", ".gif": "webp",
                     ".jpg": "png", ".glb": "glb", ".obj": "obj", ".safetensors": "safetensors"}
            for k in changed:
                ext_k = Path(k).suffix
                if name.startswith("mesh ply"):
                    kinds[".ply"] = "meshply"
                kind = kinds.get(ext_k)
                if ext_k in (".mtl",) or (ext_k == ".png" and name.endswith("obj")):
                    continue  # parts of an OBJ set: judged through the .obj below
                why = _complete(kind, disk / k) if kind else ""
                if kind is None or why:
                    problems.append(f"{k} changed but is not a complete file ({why or 'unknown kind'})")
            if ext == ".obj" and "out.obj" in changed:
                why = _complete("obj", target)
                if why:
                    problems.append(f"the .obj set is not complete: {why}")
            elif ext == ".obj" and any(k in changed for k in ("out.mtl", "out.png")):
                problems.append(f"part of the old .obj set changed: {changed}")
            extra = sorted(k for k in set(after) - set(before) if not (ext == ".obj" and "out.obj" in changed
                                                                       and k.endswith(".png")))
            if extra:
                problems.append(f"left behind: {extra}")
            if rc == 0 and not changed and name != "atomic_write_bytes":
                problems.append("reported success but wrote nothing")
            last = (err.strip().splitlines() or [""])[-1]
            if rc not in (0, None) and not re.search(re.escape(str(disk)) + r"/out[^ '\"]*" + r"[. ]", last + " "):
                problems.append(f"message does not name the target: {last[-160:]}")
            elif rc not in (0, None) and (".tmp" in last or "lgm-tmp" in last):
                problems.append(f"message names the temporary file: {last[-160:]}")
            res.add("fulldisk", f"{name} ({how})", not problems, "; ".join(problems))
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


# ------------------------------------------------------------------------------------ 5. ComfyUI
COMFY_CODE = r"""
import json, os, sys, threading, time
from pathlib import Path
repo, comfy_dir, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(repo))
from lgm_core.testing import make_standin_models
import comfy_harness as ch
paths = ch.comfy_paths()
links = work / "custom_nodes"
links.mkdir(parents=True)
os.symlink(repo, links / "comfyui-lgm")
paths = ch.ComfyPaths(paths.root, paths.comfyui, paths.venv_python, paths.site_packages, links)
make_standin_models(work / "models")
h = ch.ComfyHarness(paths, work / "comfy", work / "models")
import folder_paths
out = {}
def case(name, fn):
    try:
        ok, why = fn()
    except Exception as exc:
        ok, why = False, f"{type(exc).__name__}: {exc}"
    out[name] = [bool(ok), str(why)[:200]]
from lgm_core.mesh.synthetic import make_scene
from lgm_core.ply import save_ply
outside = work / "outside"; outside.mkdir()
save_ply(make_scene("sphere", n=400, seed=0), outside / "secret.ply")
(outside / "model_fp16_fixrot.safetensors").write_bytes(b"x" * 64)
for folder in (h.input_dir, h.output_dir):
    os.symlink(outside / "secret.ply", folder / "evil_link.ply")
    os.symlink(outside, folder / "evil_dir")
save_ply(make_scene("box", n=400, seed=1), h.input_dir / "inside.ply")
save_ply(make_scene("box", n=500, seed=2), h.output_dir / "made.ply")
N = h.node_classes
def graph(name):
    return {"1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": name}},
            "2": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["1", 0], "filename_prefix": "copied/x", "min_opacity": 0.0}}}
def refused_load(name):
    def fn():
        ok, err, _, node_errors = h.validate(graph(name))
        if ok:
            r = h.run(graph(name), check=False)
            copied = list((h.output_dir / "copied").glob("*")) if (h.output_dir / "copied").exists() else []
            return False, f"accepted; executed={r.success}; copied={len(copied)}"
        try:
            N["LGMLoadSplat"].execute(name)
            return False, "validation refused it but execute() reads it"
        except Exception as exc:
            return True, str(node_errors)[:120]
    return fn
for label, name in [("../../../x/secret.ply", "../../../x/secret.ply"), ("../outside/secret.ply", "../outside/secret.ply"),
                    ("absolute path", str(outside / "secret.ply")), ("symlinked file", "evil_link.ply"),
                    ("symlinked folder", "evil_dir/secret.ply"), ("sub/../../ escape", "sub/../../outside/secret.ply"),
                    ("[output] symlink", "evil_link.ply [output]"), ("NUL byte", "inside.ply\x00.png")]:
    case(f"LoadSplat refuses {label}", refused_load(name))
def fingerprint():
    probe = outside / "secret.ply"
    seen = []
    real = os.path.getmtime
    os.path.getmtime = lambda p: (seen.append(str(p)), real(p))[1]
    try:
        N["LGMLoadSplat"].fingerprint_inputs(str(probe))
    finally:
        os.path.getmtime = real
    return not any("secret" in s for s in seen), f"stat of {seen}"
case("LoadSplat fingerprint never stats outside", fingerprint)
case("LoadSplat accepts an input file", lambda: (h.run(graph("inside.ply"), check=False).success, ""))
case("LoadSplat accepts 'name [output]'", lambda: (N["LGMLoadSplat"].validate_inputs("made.ply [output]") is True
                                                 and h.run(graph("made.ply [output]"), check=False).success, ""))
g = make_scene("sphere", n=300, seed=3)
def refused_save(node, prefix):
    def fn():
        before = sorted(os.listdir(outside))
        try:
            if node == "LGMSaveSplat":
                N[node].execute(g, prefix, 0.0)
            else:
                import torch
                m = type("M", (), {"vertices": torch.rand(1, 4, 3), "faces": torch.tensor([[[0, 1, 2], [0, 2, 3]]])})()
                N[node].execute(m, prefix, "ply")
        except Exception as exc:
            return sorted(os.listdir(outside)) == before and ("outside" in str(exc) or "output folder" in str(exc)), str(exc)[:120]
        return False, f"saved; outside now {sorted(os.listdir(outside))}"
    return fn
for prefix in ["../escaped/x", "/tmp/escaped_abs/x", "evil_dir/x", "a/../../x"]:
    case(f"SaveSplat refuses prefix {prefix}", refused_save("LGMSaveSplat", prefix))
for prefix in ["../escaped/x", "evil_dir/x"]:
    case(f"SaveMesh refuses prefix {prefix}", refused_save("LGMSaveMesh", prefix))
lgm_root = folder_paths.get_folder_paths("lgm")[0]
os.symlink(outside / "model_fp16_fixrot.safetensors", os.path.join(lgm_root, "linked_out.safetensors"))
def refused_model(node, name):
    def fn():
        v = N[node].validate_inputs(name, "auto")
        try:
            N[node].execute(name, "auto", False)
            return False, "execute() loaded it"
        except Exception as exc:
            return ("outside" in str(exc) or "absolute" in str(exc)) and v is not True, str(exc)[:120]
    return fn
for label, name in [("../../outside/...", "../../outside/model_fp16_fixrot.safetensors"),
                    ("absolute path", str(outside / "model_fp16_fixrot.safetensors")),
                    ("symlink out of models/lgm", "linked_out.safetensors")]:
    case(f"ModelLoader refuses {label}", refused_model("LGMModelLoader", name))
for name in ["../lgm", "/etc"]:
    case(f"MultiViewLoader refuses {name}", refused_model("LGMMultiViewLoader", name))
def counter():
    r = N["LGMSaveSplat"].execute(g, "pair/p", 0.0, "ply+splat")
    ui = r.ui if isinstance(r.ui, dict) else r.ui.as_dict()
    stems = {x["filename"].rsplit(".", 1)[0] for x in ui["splats"]}
    return len(stems) == 1, str(ui["splats"])
case("ply+splat share one counter", counter)
import importlib
api = next(m for n, m in sys.modules.items() if n.endswith("nodes.files") and hasattr(m, "diffusers_model_names"))
root = folder_paths.get_folder_paths("diffusers")[0]
os.symlink(root, os.path.join(root, "loop"))
def loop():
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("names", api.diffusers_model_names()), daemon=True)
    t.start(); t.join(20)
    return not t.is_alive(), "hangs" if t.is_alive() else str(done["names"])
case("symlink loop in models/diffusers does not hang the list", loop)
print("RESULTS " + json.dumps(out), flush=True)
os._exit(0)
"""


def category_comfyui(res: Results, repo: Path, work: Path) -> None:
    comfy = HERE / ".comfyui"
    if not (comfy / ".ready").is_file():
        res.add("comfyui", "setup", False, f"no ComfyUI at {comfy}: run scripts/setup_comfyui.sh")
        return
    env = dict(os.environ, LGM_COMFYUI_DIR=str(comfy), PYTHONPATH=str(HERE / "tests"))
    try:
        p = subprocess.run([PY, "-c", COMFY_CODE, str(repo), str(comfy), str(work / "comfy")], capture_output=True,
                           text=True, timeout=300, env=env, cwd=str(HERE / "tests"))
        out = p.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULTS ")), None)
    if line is None:
        res.add("comfyui", "harness", False, f"no results: {out[-300:]}")
        return
    for name, (ok, why) in json.loads(line[8:]).items():
        res.add("comfyui", name, ok, why)


# ------------------------------------------------------------------------------------------ 6. CLI
def category_cli(res: Results, repo: Path, work: Path) -> None:
    src = work / "cli"
    src.mkdir()
    rc, out, err = run_py(repo, f"""
        import numpy as np, torch
        from PIL import Image
        sys.path.insert(0, {str(HERE / 'tests')!r})
        from fuzz_corpus import ply_file, safetensors_file, _set_value
        from lgm_core.mesh.synthetic import make_scene
        from lgm_core.ply import save_ply
        from lgm_core.testing import make_standin_lgm
        from lgm_core.image_io import write_image
        from safetensors.torch import load_file, save_file
        d = {str(src)!r}
        g = make_scene("sphere", n=3000, seed=0)
        save_ply(g, d + "/s.ply")
        h = g.clone(); h.positions[0, :3] = torch.tensor([1e30, 0.0, 0.0]); h.opacities[0, :3] = 0.9
        save_ply(h, d + "/strays.ply")
        open(d + "/nan.ply", "wb").write(_set_value(ply_file(n=200), 3, b"f_dc_0", float("nan")))
        open(d + "/huge_count.ply", "wb").write(ply_file(n=3).replace(b"element vertex 3", b"element vertex " + b"9" * 5000))
        open(d + "/trailing.ply", "wb").write(ply_file(n=50) + b"junk")
        open(d + "/comment.ply", "wb").write(ply_file(n=50).replace(b"format", b"comment end_header\\nformat", 1))
        open(d + "/sparse.ply", "wb").write(ply_file(n=1))
        with open(d + "/sparse.ply", "r+b") as f: f.truncate(8 << 30)
        open(d + "/empty.ply", "wb").write(b"")
        open(d + "/text.ply", "wb").write(b"hello")
        ckpt = make_standin_lgm(d + "/model_fp16_fixrot.safetensors")
        st = load_file(str(ckpt)); k = sorted(st)[2]; st[k] = torch.full_like(st[k], float("nan"))
        import os; os.makedirs(d + "/nanw", exist_ok=True); save_file(st, d + "/nanw/model_fp16_fixrot.safetensors")
        for name, header in [("shape", {{"a": {{"dtype": "F32", "shape": [10**30], "data_offsets": [0, 24]}}}}),
                             ("neg", {{"a": {{"dtype": "F32", "shape": [-6], "data_offsets": [0, 24]}}}}),
                             ("metalist", {{"__metadata__": ["x"], "a": {{"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}}}),
                             ("metastr", {{"__metadata__": "x", "a": {{"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}}})]:
            os.makedirs(d + "/" + name, exist_ok=True)
            open(d + "/" + name + "/model_fp16_fixrot.safetensors", "wb").write(safetensors_file(header, bytes(24)))
        data = open(ckpt, "rb").read()
        os.makedirs(d + "/trunc", exist_ok=True); open(d + "/trunc/model_fp16_fixrot.safetensors", "wb").write(data[:len(data) // 2])
        open(d + "/model.pt", "wb").write(b"\\x80\\x04" + bytes(100))
        for i in range(4):
            write_image(torch.rand(64, 64, 3), d + f"/v{{i}}.png")
            write_image(torch.rand(1, 1, 3), d + f"/tiny{{i}}.png")
        write_image(torch.rand(64, 48, 3), d + "/nonsquare.png")
        write_image(torch.rand(63, 63, 3), d + "/oddgrid.png")
        Image.fromarray((np.random.rand(64, 64) * 65535).astype(np.uint16)).save(d + "/g16.png")
        open(d + "/corrupt.png", "wb").write(open(d + "/v0.png", "rb").read()[:60])
        Image.fromarray((np.random.rand(64, 64) * 2**31).astype(np.int32), "I").save(d + "/i32.tif")
    """, timeout=180)
    if rc != 0:
        res.add("cli", "setup", False, err[-300:])
        return
    S = str(src)
    v4 = [f"{S}/v{i}.png" for i in range(4)]
    W = ["--weights", f"{S}/model_fp16_fixrot.safetensors"]
    bad = [
        # render
        ["render", f"{S}/s.ply", "--radius", "0", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--radius", "-1", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--radius", "nan", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--radius", "inf", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--elevation", "nan", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--elevation", "inf", "--turntable", "2", "-o", "{O}.mp4"],
        ["render", f"{S}/s.ply", "--fovy", "0", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--fovy", "180", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--fovy", "nan", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--fps", "0", "--turntable", "2", "-o", "{O}.mp4"],
        ["render", f"{S}/s.ply", "--fps", "nan", "--turntable", "2", "-o", "{O}.mp4"],
        ["render", f"{S}/s.ply", "--scale-modifier", "0", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--scale-modifier", "nan", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--size", "0", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--size", "100000", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--turntable", "0", "-o", "{O}.mp4"],
        ["render", f"{S}/s.ply", "--views", "nan", "-o", "{O}.png"],
        ["render", f"{S}/s.ply", "--turntable", "2", "-o", "{O}.txt"],
        ["render", f"{S}/s.ply", "--views", "0", "-o", "{O}.mp4"],
        ["render", f"{S}/s.ply", "--background", "2,0,0", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/missing.ply", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/empty.ply", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/text.ply", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/nan.ply", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/huge_count.ply", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/trailing.ply", "--views", "0", "-o", "{O}.png"],
        ["render", f"{S}/sparse.ply", "--views", "0", "-o", "{O}.png"],
        # mesh
        ["mesh", f"{S}/s.ply", "--texture-size", "-5", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--texture-size", "0", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--texture-size", "100000", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--level", "-1", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--level", "0", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--level", "nan", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--resolution", "0", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--resolution", "5000", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--target-faces", "0", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--min-opacity", "2", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--min-opacity", "nan", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--keep-components", "-1", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "--keep-components", "nan", "-o", "{O}.glb"],
        ["mesh", f"{S}/s.ply", "-o", "{O}.txt"],
        ["mesh", f"{S}/nan.ply", "-o", "{O}.glb"],
        ["mesh", f"{S}/missing.ply", "-o", "{O}.glb"],
        ["mesh", f"{S}/text.ply", "-o", "{O}.glb"],
        # reconstruct
        ["reconstruct", *v4, *W, "-o", "{O}.glb"],
        ["reconstruct", *v4, *W, "-o", "{O}.txt"],
        ["reconstruct", *[f"{S}/tiny{i}.png" for i in range(4)], *W, "-o", "{O}.ply"],
        ["reconstruct", *v4[:3], *W, "-o", "{O}.ply"],
        ["reconstruct", f"{S}/nonsquare.png", *v4[1:], *W, "-o", "{O}.ply"],
        ["reconstruct", f"{S}/oddgrid.png", *W, "-o", "{O}.ply"],
        ["reconstruct", f"{S}/missing.png", *v4[1:], *W, "-o", "{O}.ply"],
        ["reconstruct", f"{S}/corrupt.png", *v4[1:], *W, "-o", "{O}.ply"],
        ["reconstruct", f"{S}/i32.tif", *v4[1:], *W, "-o", "{O}.ply"],
        ["reconstruct", *v4, *W, "--elevation", "nan", "-o", "{O}.ply"],
        ["reconstruct", *v4, *W, "--elevation", "inf", "-o", "{O}.ply"],
        ["reconstruct", *v4, *W, "--min-opacity", "nan", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/shape", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/neg", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/metalist", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/metastr", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/nanw", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/trunc", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/model.pt", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/missing.safetensors", "-o", "{O}.ply"],
        ["reconstruct", *v4, "--weights", f"{S}/v0.png", "-o", "{O}.ply"],
    ]
    good = [
        (["render", f"{S}/s.ply", "--views", "0", "90", "--size", "64", "-o", "{O}.png"], "{O}_az000.png"),
        (["render", f"{S}/s.ply", "--turntable", "4", "--size", "64", "-o", "{O}.mp4"], "{O}.mp4"),
        (["render", f"{S}/comment.ply", "--views", "0", "--size", "32", "-o", "{O}.png"], "{O}.png"),
        (["mesh", f"{S}/s.ply", "--resolution", "32", "--texture-size", "64", "-o", "{O}.obj"], "{O}.obj"),
        (["mesh", f"{S}/strays.ply", "--resolution", "48", "--texture-size", "64", "-o", "{O}.glb"], "{O}.glb"),
        (["reconstruct", *v4, *W, "-o", "{O}.ply"], "{O}.ply"),
        (["reconstruct", f"{S}/g16.png", *v4[1:], *W, "-o", "{O}.ply"], "{O}.ply"),
    ]
    outdir = work / "cli_out"
    outdir.mkdir()

    def label(argv):
        text = " ".join(a.replace(S + "/", "").replace(str(outdir) + "/", "") for a in map(str, argv))
        return text.replace("--weights model_fp16_fixrot.safetensors ", "").replace("v0.png v1.png v2.png v3.png", "4 views")

    for k, argv in enumerate(bad):
        stem = str(outdir / f"bad{k}")
        argv = [str(a).replace("{O}", stem) for a in argv]
        t0 = time.time()
        rc, out, err = cli(repo, *argv, timeout=120)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        problems = []
        if rc == 0:
            problems.append("exit 0 (accepted)")
        elif rc is None:
            problems.append("hung")
        if "Traceback" in err:
            problems.append("traceback: " + (lines[-1][:100] if lines else ""))
        elif rc not in (0, None) and (len(errors) != 1 or not lines[-1].startswith("error:")):
            problems.append(f"not one error line: {lines[-1][:100] if lines else '(nothing)'}")
        made = [p.name for p in outdir.iterdir() if p.name.startswith(f"bad{k}")]
        if made:
            problems.append(f"wrote {made}")
        if time.time() - t0 > 60:
            problems.append(f"took {time.time() - t0:.0f} s")
        res.add("cli", label(argv), not problems, "; ".join(problems) + (f" | {errors[0][:120]}" if errors else ""))
    for k, (argv, produced) in enumerate(good):
        stem = str(outdir / f"good{k}")
        argv = [str(a).replace("{O}", stem) for a in argv]
        rc, out, err = cli(repo, *argv, timeout=300)
        ok = rc == 0 and Path(produced.replace("{O}", stem)).is_file()
        res.add("cli", "valid: " + label(argv), ok, f"rc={rc} {err.strip().splitlines()[-1][:150] if err.strip() else ''}")


# ---------------------------------------------------------------------------------- 7. concurrent
def category_concurrent(res: Results, repo: Path, work: Path) -> None:
    folder = work / "concurrent"
    folder.mkdir()
    rc, _, err = run_py(repo, f"""
        from lgm_core.mesh.synthetic import make_scene
        from lgm_core.ply import save_ply
        save_ply(make_scene("sphere", n=3000, seed=0), {str(folder / 's.ply')!r})
    """)
    # two CLI renders to one .mp4 at once
    target = folder / "spin.mp4"
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([PY, "-m", "lgm_core", "render", str(folder / "s.ply"), "--turntable", "8", "--size",
                               "96", "-o", str(target)], cwd=str(repo), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    codes = [p.wait() for p in procs]
    why = _complete("mp4", target)
    left = hidden_leftovers(folder)
    res.add("concurrent", "two CLI renders of one .mp4", codes == [0, 0] and not why and not left,
            f"codes={codes} {why} leftovers={left}")
    # .ply writers in a loop, a reader never sees a partial file
    code = f"""
        import itertools
        from lgm_core.mesh.synthetic import make_scene
        from lgm_core.ply import save_ply
        g = make_scene("sphere", n=50000, seed=int(sys.argv[1]))
        for _ in range(15):
            save_ply(g, {str(folder / 'shared.ply')!r})
    """
    prelude = f"import sys; sys.path.insert(0, {str(repo)!r})\n"
    procs = [subprocess.Popen([PY, "-c", prelude + textwrap.dedent(code), str(i)], cwd=str(repo)) for i in range(2)]
    bad, reads = [], 0
    from lgm_core.ply import load_ply

    while any(p.poll() is None for p in procs):
        try:
            n = load_ply(folder / "shared.ply").num_gaussians
            reads += 1
            if n != 50000:
                bad.append(n)
        except FileNotFoundError:
            continue
        except Exception as exc:
            bad.append(str(exc)[:80])
    res.add("concurrent", "two .ply writers and a reader", not bad and reads > 0, f"{reads} reads, bad: {bad[:3]}")
    # textured OBJ: two writers of different meshes, a reader checks geometry/texture pairing
    code = f"""
        import torch
        from lgm_core.mesh import Mesh
        def mesh(seed):
            gen = torch.Generator().manual_seed(seed)
            v = torch.rand(300, 3, generator=gen); f = torch.randint(0, 300, (400, 3), generator=gen)
            f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
            return Mesh(v, f, uvs=torch.rand(300, 2, generator=gen), texture=torch.rand(64, 64, 3, generator=gen))
        if sys.argv[1] == "ref":
            import os
            for s in range(4):
                d = sys.argv[2] + f"/ref{{s}}"; os.makedirs(d)
                mesh(s).export(d + "/m.obj")
        else:
            ms = [mesh(int(sys.argv[1]) * 2 + i) for i in range(2)]
            for k in range(20):
                ms[k % 2].export({str(folder / 'shared.obj')!r})
    """
    subprocess.run([PY, "-c", prelude + textwrap.dedent(code), "ref", str(folder)], cwd=str(repo), check=True)
    refs = {}
    for s in range(4):
        d = folder / f"ref{s}"
        obj = (d / "m.obj").read_text()
        mtl = (d / "m.mtl").read_text()
        png = (d / re.search(r"^map_Kd (\S+)", mtl, re.M).group(1)).read_bytes()
        refs[re.search(r"^v .*$", obj, re.M).group(0)] = png
    procs = [subprocess.Popen([PY, "-c", prelude + textwrap.dedent(code), str(i)], cwd=str(repo)) for i in range(2)]
    silent, visible, genuine = 0, 0, 0
    target = folder / "shared.obj"
    while any(p.poll() is None for p in procs):
        try:
            obj = target.read_text()
            mtl = target.with_suffix(".mtl").read_text()
            used = re.search(r"^usemtl (\S+)", obj, re.M).group(1)
            if re.search(r"^newmtl (\S+)", mtl, re.M).group(1) != used:
                visible += genuine + silent > 0
                continue
            png = (folder / re.search(r"^map_Kd (\S+)", mtl, re.M).group(1)).read_bytes()
        except (FileNotFoundError, AttributeError):
            visible += genuine + silent > 0  # before the first export there is nothing to read
            continue
        if refs.get(re.search(r"^v .*$", obj, re.M).group(0)) == png:
            genuine += 1
        else:
            silent += 1
    res.add("concurrent", "two textured .obj writers and a reader", silent == 0 and genuine > 0,
            f"{genuine} consistent reads, {silent} silent geometry/texture mismatches, {visible} visible (missing "
            "material or file)")


CATEGORIES = {"readers": category_readers, "degenerate": category_degenerate, "kill9": category_kill9,
              "fulldisk": category_fulldisk, "comfyui": category_comfyui, "cli": category_cli,
              "concurrent": category_concurrent}


def compare(a_path: str, b_path: str) -> None:
    a = json.loads(Path(a_path).read_text())
    b = json.loads(Path(b_path).read_text())
    cats = sorted({v["category"] for v in b.values()} | {v["category"] for v in a.values()})
    print(f"| category | cases | clean (pass on both) | fixed | still failing | regressed |\n|---|---|---|---|---|---|")
    tot = [0] * 5
    for cat in cats:
        keys = [k for k, v in b.items() if v["category"] == cat]
        clean = sum(1 for k in keys if b[k]["ok"] and a.get(k, {}).get("ok"))
        fixed = sum(1 for k in keys if b[k]["ok"] and not a.get(k, {}).get("ok", False))
        still = sum(1 for k in keys if not b[k]["ok"] and not a.get(k, {}).get("ok", False))
        regressed = sum(1 for k in keys if not b[k]["ok"] and a.get(k, {}).get("ok"))
        row = [len(keys), clean, fixed, still, regressed]
        tot = [x + y for x, y in zip(tot, row)]
        print(f"| {cat} | " + " | ".join(map(str, row)) + " |")
    print("| **all** | " + " | ".join(f"**{x}**" for x in tot) + " |")
    for k, v in b.items():
        if not v["ok"]:
            print(f"still failing: {k}: {v['detail']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, help="checkout under test")
    ap.add_argument("--out", type=Path, help="results JSON")
    ap.add_argument("--only", nargs="*", choices=sorted(CATEGORIES), help="run these categories only")
    ap.add_argument("--compare", nargs=2, metavar=("BASELINE", "RESULT"))
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return 0
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    sys.path.insert(1, str(HERE / "tests"))
    sys.path.insert(2, str(HERE / "benchmarks"))
    import lgm_core

    assert Path(lgm_core.__file__).resolve().is_relative_to(repo), lgm_core.__file__
    res = Results()
    with tempfile.TemporaryDirectory(prefix="campaign_") as tmp:
        for name, fn in CATEGORIES.items():
            if args.only and name not in args.only:
                continue
            t0 = time.time()
            print(f"== {name}", flush=True)
            work = Path(tmp) / name
            work.mkdir()
            fn(res, repo, work)
            print(f"   {name}: done in {time.time() - t0:.0f} s", flush=True)
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() and args.only else {}
        old.update(res.cases)
        args.out.write_text(json.dumps(old, indent=1))
    failed = [k for k, v in res.cases.items() if not v["ok"]]
    print(f"{len(res.cases)} cases, {len(failed)} failing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
