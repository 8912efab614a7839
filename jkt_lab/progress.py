"""Progress bars, one policy for the whole package.

On a terminal (and in a notebook) a run shows one bar; in a log file, a pipe or CI (stderr not
a TTY, or ``CI=true``) bars are off and each run prints one line when it ends (:func:`done`).
``set_enabled(False)`` (the command line's ``--no-progress``) silences every bar and line,
decoding bars included. Standard library and tqdm only (``data`` and ``train`` import it).
"""
from __future__ import annotations

import os
import sys

__all__ = ["bar", "done", "set_enabled", "enabled", "in_ci", "duration", "SLOW_FACTOR", "slow_advice"]

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


def duration(seconds: float) -> str:
    """``"about 40 s"`` under two minutes, else ``"about 12.5 min"`` (or hours past 2 h)."""
    seconds = max(float(seconds), 0.0)
    if seconds < 120:
        return f"about {seconds:.0f} s"
    if seconds < 7200:
        return f"about {seconds / 60:.1f} min"
    return f"about {seconds / 3600:.1f} h"


#: A run this many times slower than its reference is "far slower": the time-left lines say why.
SLOW_FACTOR = 3.0


def slow_advice(measured: float, reference: float, where: str = "the committed runs on 2 idle cores") -> str:
    """Empty when ``measured`` (seconds, a step or a run) is within :data:`SLOW_FACTOR` of
    ``reference`` (the same work on ``where``); else one sentence that says how much slower and
    what to do about it (other jobs compete for the cores)."""
    if not reference or reference <= 0 or measured <= SLOW_FACTOR * reference:
        return ""
    return (f"{measured / reference:.0f}x slower than {where} ({measured:.2g} s against {reference:.2g} s): other "
            "jobs are probably using this machine's cores. Run one job per machine, or give each job fewer threads "
            "(OMP_NUM_THREADS=1 before starting Python) when several must share it.")
