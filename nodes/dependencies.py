"""The pack's Python requirements inside ComfyUI: checked once at load, reported in one message.

``requirements.txt`` beside this pack is the single source of truth (it is what the user installs into
ComfyUI's Python). At start-up ``report()`` reads it and compares each requirement with the installed
distribution's metadata (nothing heavy is imported: diffusers/transformers would cost seconds);
``LGMExtension`` logs the result once, and ``guard_node`` makes every node that needs a missing or
too-old package fail with the same message (naming the packages and the exact ``pip install -r`` line)
instead of a bare ``ModuleNotFoundError`` halfway through a run. No ComfyUI import here.

Version specifiers: ``name>=X`` and ``name==X`` are compared on their numeric release part; any
other specifier only checks that the package is installed.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIREMENTS_FILE = os.path.join(PACK_DIR, "requirements.txt")

BASE = ("numpy",)
"""Needed by every node (cameras, .ply files, renders)."""
_MESH = ("scikit-image", "scipy", "fast-simplification", "xatlas", "trimesh", "pillow")
NODE_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "LGMModelLoader": ("safetensors", "huggingface_hub"),
    "LGMMultiViewLoader": ("safetensors", "huggingface_hub", "diffusers", "transformers", "pillow"),
    "LGMTextToMultiView": ("diffusers", "transformers", "pillow"),
    "LGMImageToMultiView": ("diffusers", "transformers", "pillow"),
    "LGMPrepareImage": (),
    "LGMExampleViews": ("pillow",),
    "LGMReconstruct": (),
    "LGMOrbitCameras": (),
    "LGMRenderSplat": (),
    "LGMSaveSplat": (),
    "LGMLoadSplat": (),
    "LGMSplatToMesh": _MESH,
    "LGMSaveMesh": _MESH,
}
"""Distributions (besides ``BASE``) each node's code imports; a node not listed needs all of them."""

_REQ_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*(?:;.*)?$")


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` become ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in numbers.group(1).split(".")) if numbers else ()


def _pad(a: tuple[int, ...], n: int) -> tuple[int, ...]:
    return a + (0,) * (n - len(a))


@dataclass(frozen=True)
class Requirement:
    name: str       # as written in requirements.txt
    spec: str       # e.g. ">=0.27" ("" = any version)

    def accepts(self, version: str) -> bool:
        spec = self.spec.replace(" ", "")
        for op in (">=", "=="):
            if spec.startswith(op) and "," not in spec:
                want, have = _release(spec[len(op):]), _release(version)
                n = max(len(want), len(have))
                return _pad(have, n) >= _pad(want, n) if op == ">=" else _pad(have, n) == _pad(want, n)
        return True


def read_requirements(path: str = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements in a requirements.txt (comments, blank lines and options skipped)."""
    reqs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            m = _REQ_LINE.match(line)
            if m:
                reqs.append(Requirement(m.group(1), m.group(2)))
    return reqs


@dataclass(frozen=True)
class Problem:
    requirement: Requirement
    installed: str | None  # None: not installed (or installed without importable files)

    def describe(self) -> str:
        r = self.requirement
        if self.installed is None:
            return f"{r.name} (missing)"
        return f"{r.name} {self.installed} (too old: {r.spec} needed)"


@dataclass
class DependencyReport:
    """The outcome of checking requirements.txt against the running Python."""

    problems: dict[str, Problem] = field(default_factory=dict)  # canonical name -> problem
    python: str = sys.executable
    requirements_file: str = REQUIREMENTS_FILE

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def pip_command(self) -> str:
        def quote(s: str) -> str:
            return f'"{s}"' if " " in s else s

        return f"{quote(self.python)} -m pip install -r {quote(self.requirements_file)}"

    def problems_for(self, needed) -> list[Problem]:
        """The problems among the distributions in ``needed`` (None: all of them)."""
        if needed is None:
            return list(self.problems.values())
        wanted = {canonical(n) for n in needed}
        return [p for name, p in self.problems.items() if name in wanted]

    def message(self, problems: list[Problem] | None = None) -> str:
        problems = list(self.problems.values()) if problems is None else problems
        listed = ", ".join(p.describe() for p in problems)
        return (f"ComfyUI-LGM needs Python packages that are missing or too old in ComfyUI's Python: {listed}. "
                f"Install them into the Python that runs ComfyUI, then restart ComfyUI: {self.pip_command}")


def _top_level_modules(dist) -> list[str]:
    """Importable top-level names of a distribution: its top_level.txt, else the packages and modules
    its RECORD lists (wheels built without setuptools, e.g. scikit-image, have no top_level.txt)."""
    tops = (dist.read_text("top_level.txt") or "").split()
    if not tops:
        for f in dist.files or ():
            parts = f.parts
            if len(parts) == 2 and parts[1] == "__init__.py":
                tops.append(parts[0])
            elif len(parts) == 1 and parts[0].endswith((".py", ".so", ".pyd")):
                tops.append(parts[0].split(".", 1)[0])  # module.py, module.cpython-311-x86_64-linux-gnu.so
    return sorted({t for t in tops if not t.startswith("_") and ".dist-info" not in t})


def _installed_version(name: str) -> str | None:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    modules = _top_level_modules(dist) or [canonical(name).replace("-", "_")]
    # metadata without the package (a half-removed install) counts as missing
    try:
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            return None
    except (ImportError, ValueError):
        return None
    return dist.version


def check(requirements: list[Requirement], version_of=_installed_version) -> DependencyReport:
    """Compare ``requirements`` with what is installed (``version_of(name)`` -> version or None)."""
    report = DependencyReport()
    for req in requirements:
        have = version_of(req.name)
        if have is None or not req.accepts(have):
            report.problems[canonical(req.name)] = Problem(req, have)
    return report


@functools.lru_cache(maxsize=1)
def report() -> DependencyReport:
    """The check of this pack's requirements.txt against the running Python (computed once)."""
    if not os.path.isfile(REQUIREMENTS_FILE):
        return DependencyReport()
    return check(read_requirements())


class MissingDependencies(RuntimeError):
    """A node cannot run because packages of requirements.txt are missing or too old."""


def needed_by(node_id: str) -> tuple[str, ...] | None:
    """Distributions a node needs (None: every requirement)."""
    extra = NODE_REQUIREMENTS.get(node_id)
    return None if extra is None else BASE + extra


def guard_node(cls, node_id: str):
    """Wrap ``cls.execute`` so that the node fails first thing with the report's message when one of
    the packages it needs is missing (checked on every run; cheap: ``report()`` is computed once)."""
    original = cls.__dict__["execute"].__func__
    if getattr(original, "__lgm_guarded__", False):
        return cls
    needed = needed_by(node_id)

    def check_first():
        rep = report()  # looked up at call time (tests replace it)
        problems = rep.problems_for(needed)
        if problems:
            raise MissingDependencies(rep.message(problems))

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def execute(klass, *args, **kwargs):
            check_first()
            return await original(klass, *args, **kwargs)
    else:
        @functools.wraps(original)
        def execute(klass, *args, **kwargs):
            check_first()
            return original(klass, *args, **kwargs)

    execute.__lgm_guarded__ = True
    cls.execute = classmethod(execute)
    return cls
