"""Path containment (lgm_core.paths), without ComfyUI: '../', absolute paths, symlinks, NUL bytes,
ComfyUI's '[output]' annotations, loop-safe walks."""

from __future__ import annotations

import os
import threading

import pytest

from lgm_core.paths import UnsafePathError, contained_path, first_contained, split_annotated_name, walk_contained


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "input"
    (root / "sub").mkdir(parents=True)
    (root / "a.ply").write_bytes(b"a")
    (root / "sub" / "b.ply").write_bytes(b"b")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "secret.ply").write_bytes(b"secret")
    return root, outside


def test_names_inside_are_resolved(tree):
    root, _ = tree
    assert contained_path(root, "a.ply") == (root / "a.ply").resolve()
    assert contained_path(root, "sub/b.ply", must_exist=True) == (root / "sub" / "b.ply").resolve()
    assert contained_path(root, "sub/../a.ply") == (root / "a.ply").resolve()  # stays inside: fine
    assert contained_path(root, ".") == root.resolve()


@pytest.mark.parametrize("name", ["../secret/secret.ply", "../../../../../etc/passwd", "sub/../../secret/secret.ply",
                                  "..", "sub/../.."])
def test_dotdot_is_refused(tree, name):
    root, _ = tree
    with pytest.raises(UnsafePathError, match="outside the input folder"):
        contained_path(root, name, what="input folder")


def test_absolute_and_odd_names_are_refused(tree):
    root, outside = tree
    for name in [str(outside / "secret.ply"), "/etc/passwd", "\\\\server\\share\\x.ply", "C:\\x.ply", "C:x.ply"]:
        with pytest.raises(UnsafePathError, match="absolute"):
            contained_path(root, name)
    for name in ["", "   ", "a.ply\x00.png"]:
        with pytest.raises(UnsafePathError):
            contained_path(root, name)
    with pytest.raises(UnsafePathError, match="string"):
        contained_path(root, 3)
    with pytest.raises(FileNotFoundError):
        contained_path(root, "missing.ply", must_exist=True)


def test_symlinks_are_checked_after_resolution(tree):
    root, outside = tree
    os.symlink(outside / "secret.ply", root / "link.ply")  # a file link pointing out
    os.symlink(outside, root / "linkdir")  # a folder link pointing out
    os.symlink(root / "a.ply", root / "inner.ply")  # a link that stays inside
    for name in ["link.ply", "linkdir/secret.ply", "linkdir"]:
        with pytest.raises(UnsafePathError, match="symlinks"):
            contained_path(root, name)
    assert contained_path(root, "inner.ply") == (root / "a.ply").resolve()
    # a root that is itself a symlink is resolved first: names inside it stay fine
    os.symlink(root, root.parent / "input_link")
    assert contained_path(root.parent / "input_link", "a.ply") == (root / "a.ply").resolve()


def test_first_contained_checks_every_root(tree, tmp_path):
    root, outside = tree
    other = tmp_path / "models2"
    other.mkdir()
    (other / "m.safetensors").write_bytes(b"x")
    assert first_contained([root, other], "m.safetensors") == (other / "m.safetensors").resolve()
    assert first_contained([root, other], "none.safetensors") is None
    assert first_contained([root, other], "sub", kind="dir") == (root / "sub").resolve()
    with pytest.raises(UnsafePathError):
        first_contained([root, other], "../secret/secret.ply")


def test_split_annotated_name():
    assert split_annotated_name("a.ply") == ("a.ply", "input")
    assert split_annotated_name("sub/a.ply [output]") == ("sub/a.ply", "output")
    assert split_annotated_name("a.ply[temp]") == ("a.ply", "temp")
    assert split_annotated_name("a.ply [input]", default="output") == ("a.ply", "input")
    assert split_annotated_name("a [other].ply") == ("a [other].ply", "input")


def test_walk_ends_on_symlink_loops_and_stays_inside(tree):
    root, outside = tree
    os.symlink(root, root / "sub" / "loop")  # sub/loop -> root: a cycle
    os.symlink(root / "sub", root / "sub" / "self")  # sub/self -> sub
    os.symlink(outside, root / "out")  # leaves the root: not walked
    seen = []
    done = threading.Event()

    def walk():
        for dirpath, _dirs, files in walk_contained(root):
            seen.append((os.path.relpath(dirpath, root), sorted(files)))
        done.set()

    t = threading.Thread(target=walk, daemon=True)
    t.start()
    assert done.wait(10), "walk_contained did not end on a symlink loop"
    dirs = [d for d, _ in seen]
    assert dirs.count(".") == 1 and dirs.count("sub") == 1 and len(dirs) == 2, seen
    assert not any("secret.ply" in files for _, files in seen)


def test_walk_depth_is_bounded(tmp_path):
    d = tmp_path
    for i in range(12):
        d = d / f"d{i}"
    d.mkdir(parents=True)
    depths = [os.path.relpath(p, tmp_path).count(os.sep) for p, _, _ in walk_contained(tmp_path, max_depth=3)]
    assert max(depths) <= 3
