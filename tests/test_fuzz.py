"""The seeded fuzz corpus (tests/fuzz_corpus.py) against every reader: PLY, .splat, safetensors
headers, images. None may crash with an unexpected exception type, hang, allocate more than a
small multiple of the file size, or load damaged data silently. ``LGM_FUZZ_SEEDS=0,1,2`` runs
more seeds (CI runs seed 0: a few hundred cases in a few seconds)."""

from __future__ import annotations

import os
import time

import pytest

from fuzz_corpus import make_corpus, run_case

SEEDS = [int(s) for s in os.environ.get("LGM_FUZZ_SEEDS", "0").split(",") if s.strip()]


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_corpus(tmp_path, seed, single_thread):
    cases = make_corpus(seed)
    kinds = {c.kind for c in cases}
    assert kinds == {"ply", "splat", "safetensors", "image"} and len(cases) >= 300
    t0 = time.perf_counter()
    failures = []
    for case in cases:
        problem = run_case(case, tmp_path)
        if problem:
            failures.append(f"{case.kind} / {case.name} (expected {case.expect}): {problem}")
    elapsed = time.perf_counter() - t0
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    assert elapsed < 60, f"the corpus took {elapsed:.0f} s"


def test_corpus_is_deterministic():
    a, b = make_corpus(3), make_corpus(3)
    assert [(c.name, c.data) for c in a] == [(c.name, c.data) for c in b]


def test_runner_catches_bad_readers(tmp_path, monkeypatch):
    """The runner itself flags garbage loads, wrong exception types and hangs."""
    import fuzz_corpus

    from lgm_core.ply import PlyError

    case = fuzz_corpus.Case("ply", "trailing", fuzz_corpus.ply_file() + b"\0" * 8, "error")
    real = fuzz_corpus.readers()

    def with_reader(fn):
        table = dict(real)
        table["ply"] = (fn, PlyError, real["ply"][2])
        monkeypatch.setattr(fuzz_corpus, "readers", lambda: table)

    from lgm_core.mesh.synthetic import make_scene

    with_reader(lambda p: make_scene("sphere", n=16, seed=0))  # a reader that ignores damage
    assert "silently" in run_case(case, tmp_path)
    with_reader(lambda p: (_ for _ in ()).throw(IndexError("boom")))
    assert "unexpected IndexError" in run_case(case, tmp_path)

    def hang(p):
        while True:
            pass

    with_reader(hang)
    assert "hang" in run_case(case, tmp_path, time_limit_s=0.2)

    def hog(p):
        return bytearray(64 << 20) and make_scene("sphere", n=16, seed=0)

    with_reader(hog)
    assert "allocated" in run_case(fuzz_corpus.Case("ply", "v", fuzz_corpus.ply_file(), "load"), tmp_path)
