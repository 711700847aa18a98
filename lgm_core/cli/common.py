"""Options and helpers shared by the command-line tools: device/precision flags, the help formatter,
CPU-sized defaults, progress lines with an ETA, and one-line errors for model files that cannot be had.

Conventions: progress goes to stderr (stdout stays clean for piping); every user-fixable problem is a
:class:`~lgm_core.cli.CLIError` with one line naming the flag or file.
"""

from __future__ import annotations

import argparse
import sys
import time

DTYPES = {"auto": None, "fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
"""--dtype choices -> torch dtype names (auto: fp16 on CUDA, fp32 elsewhere)."""

DEMO_HINT = "or try the pack without downloads: python -m lgm_core demo"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help text does not already state its default and the
    default says something (not None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


# ---------------------------------------------------------------------------------------- devices
def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="torch device: cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")


def resolve_device(name: str | None):
    """``--device`` value -> ``torch.device``; None picks CUDA when available. A device this torch
    cannot use is a one-line :class:`CLIError` (not a traceback from deep inside torch)."""
    import torch

    from . import CLIError

    if name is None or str(name).strip() == "":
        from ..runtime import default_device

        return default_device()
    try:
        device = torch.device(str(name).strip())
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name}: not a torch device (use cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise CLIError(f"--device {name}: this torch ({torch.__version__}) is built without CUDA; "
                           "use --device cpu, or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: no CUDA GPU is available (driver missing or "
                           "CUDA_VISIBLE_DEVICES empty); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise CLIError(f"--device {name}: there {'is' if count == 1 else 'are'} only {count} CUDA device(s) "
                           f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CLIError(f"--device {name}: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise CLIError(f"--device {name}: unsupported device type {device.type!r} (use cpu, cuda, cuda:N or mps)")
    return device


def add_dtype_argument(parser: argparse.ArgumentParser, what: str = "precision") -> None:
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                        help=f"{what} (auto: fp16 on CUDA, fp32 on CPU)")


def resolve_dtype(choice: str, device):
    """``--dtype`` value -> ``torch.dtype``; auto follows the runtime policy (:mod:`lgm_core.runtime`)."""
    import torch

    from ..runtime import default_dtype

    name = DTYPES[choice]
    return getattr(torch, name) if name else default_dtype(device)


def device_default(device, cuda_value, cpu_value):
    """A default sized for the device: the GPU value on CUDA, a bounded one elsewhere (CPU, MPS)."""
    return cuda_value if device.type == "cuda" else cpu_value


# --------------------------------------------------------------------------------------- progress
def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StageProgress:
    """Progress of one long stage on stderr: ``label 12/30 steps  40%  0:14 elapsed, ETA 0:21``
    (``unit="%"`` with ``total=100`` shows only the percentage).

    On a terminal the line is rewritten in place; in logs a line is printed at most every
    ``every`` seconds (and at the end), so piping to a file stays short.
    """

    def __init__(self, label: str, total: int, unit: str = "", stream=None, every: float = 5.0):
        self.label, self.total, self.unit = label, max(int(total), 1), unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.start = time.perf_counter()
        self._last_print = -1e9
        self._last_note = ""
        self.done = 0

    def line(self, done: int, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        count = f"{done}/{self.total}{self.unit} " if self.unit != "%" else ""
        text = f"{self.label} {count}{100 * done / self.total:3.0f}%  {_clock(elapsed)} elapsed"
        if 0 < done < self.total:
            text += f", ETA {_clock(elapsed / done * (self.total - done))}"
        return f"{text}  {note}" if note else text

    def update(self, done: int, note: str = "") -> None:
        """Report ``done`` of ``total`` (``note``: what runs now, e.g. a stage name)."""
        self.done = min(int(done), self.total)
        now = time.perf_counter()
        final = self.done >= self.total
        if self.tty:
            end = "\n" if final else ""
            print("\r" + self.line(self.done, note).ljust(79), end=end, file=self.stream, flush=True)
        elif final or now - self._last_print >= self.every or self.done == 1 or note != self._last_note:
            print(self.line(self.done, note), file=self.stream, flush=True)
            self._last_print = now
        self._last_note = note

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)


# ----------------------------------------------------------------------------- missing model files
def unavailable_models_error(problems) -> "CLIError":
    """One line for model sources that are neither local nor downloadable now.

    ``problems``: (flag, :class:`lgm_core.hub.HubUnavailable`) pairs, e.g. ("--lgm-weights", exc)."""
    from . import CLIError

    parts = [f"{exc.what} {exc.repo_id} [{exc.files_text}] from {exc.url}: download it and pass its folder "
             f"with {flag} FOLDER" for flag, exc in problems]
    first = problems[0][1]
    return CLIError(f"cannot get the model files ({first.reason}) and they are not in the Hugging Face cache "
                    f"({first.cache_dir}): " + "; ".join(parts) + f"; {DEMO_HINT}")
