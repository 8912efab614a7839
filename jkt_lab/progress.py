"""Progress bars, one policy for the whole package.

On a terminal (and in a notebook) a run shows one bar; in a log file, a pipe or CI (stderr not
a TTY, or ``CI=true``) bars are off and each run prints one line when it ends (:func:`done`).
``set_enabled(False)`` (the command line's ``--no-progress``) silences every bar and line,
decoding bars included. Standard library and tqdm only (``data`` and ``train`` import it).
"""
from __future__ import annotations

import os
import sys

__all__ = ["bar", "done", "set_enabled", "enabled", "in_ci"]

_enabled = True


def set_enabled(flag: bool) -> None:
    """Switch every progress bar and end-of-run line of the package on or off (``--no-progress``)."""
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f"flag must be True or False, got {type(flag).__name__}")
    _enabled = flag


def enabled(progress: bool = True) -> bool:
    """True when a caller asking for ``progress`` gets bars and lines (not switched off globally)."""
    return bool(progress) and _enabled


def in_ci() -> bool:
    """``CI`` set to true/1/yes (GitHub Actions, GitLab CI and most others set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def bar(*, total: int, desc: str, unit: str, progress: bool = True, initial: int = 0, leave: bool = False):
    """A tqdm bar (the notebook widget under Jupyter) that is off unless stderr is a terminal or
    a notebook (tqdm's ``disable=None``), off in CI, and off when ``progress`` is False or bars
    are switched off (:func:`set_enabled`)."""
    from tqdm.auto import tqdm
    disable = True if not enabled(progress) or in_ci() else None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, leave=leave,
                dynamic_ncols=True)


def done(progress_bar, line: str, *, progress: bool = True) -> None:
    """End of a run: close ``progress_bar`` and print ``line`` to stderr, where the bar was (a
    terminal sees one line per run in place of its bar; a log file gets one line per run). In
    a notebook the bar widget is the record and no line is printed."""
    # tqdm.auto's class in a notebook is tqdm.auto.tqdm, a subclass of tqdm.notebook's
    notebook = any(c.__module__ == "tqdm.notebook" for c in type(progress_bar).__mro__)
    progress_bar.close()
    if enabled(progress) and not notebook:
        print(line, file=sys.stderr, flush=True)
