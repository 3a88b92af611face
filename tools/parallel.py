"""Two notebooks at a time on two cores: the order of the work and the lock that keeps timed chapters alone.

Used by the root ``conftest.py`` (the README's test command runs under pytest-xdist, two workers) and
by ``benchmarks/book_time.py --jobs 2``. Three pieces:

- :data:`TIMED_ALONE`: the notebooks whose cells compare speeds; they run with the CPU to themselves
  and the default number of threads. Every other notebook runs beside another one, on one thread.
- :func:`longest_first`: the order of the work, timed notebooks first (they run one at a time anyway),
  then the rest longest first from recorded durations, so that the last pieces are short and both
  workers finish together.
- :class:`CpuLock`: a readers-writer lock between processes; a file of work holds it shared, a timed
  notebook exclusively.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Notebooks (file stems) whose cells compare speeds: executed alone, with the default threads.
TIMED_ALONE = frozenset({"mnist_in_practice", "modern_cnns", "pretrained_models", "shipping", "trends", "environment"})
#: Set to "1" in the kernels and subprocesses of work that shares the CPU with other work
#: (read by :func:`companion.device.timing_conditions`).
from companion.device import SHARED_CPU_ENV as SHARED_ENV  # noqa: E402
from companion.utils import atomic_write  # noqa: E402


def timed_alone(path: str | Path) -> bool:
    """Whether ``path`` is a notebook of :data:`TIMED_ALONE`."""
    path = Path(path)
    return path.suffix == ".ipynb" and path.stem in TIMED_ALONE


def longest_first(keys: Iterable[str], durations: Mapping[str, float]) -> list[str]:
    """Order files of work: timed notebooks first, then by recorded seconds, longest first.

    A file without a recorded duration counts as long as the longest one (a new chapter starts early,
    where it cannot become the last straggler). Ties are broken by name, so the order is reproducible.
    """
    unknown = max(durations.values(), default=0.0)
    return sorted(keys, key=lambda key: (not timed_alone(key), -durations.get(key, unknown), key))


def read_durations(*paths: Path) -> dict[str, float]:
    """Seconds per file from the JSON records ``{"seconds": {file: seconds}}``; later paths override."""
    durations: dict[str, float] = {}
    for path in paths:
        try:
            durations.update(json.loads(Path(path).read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return durations


def write_durations(path: Path, seconds: Mapping[str, float]) -> None:
    """Merge ``seconds`` into the record at ``path``, atomically (:func:`companion.utils.atomic_write`)."""
    path = Path(path)
    durations = read_durations(path)
    durations.update({key: round(value, 1) for key, value in seconds.items()})
    with atomic_write(path, "w") as out:
        out.write(json.dumps({"seconds": dict(sorted(durations.items()))}, indent=1) + "\n")


class CpuLock:
    """A readers-writer lock between processes, on two files (POSIX ``flock``).

    ``acquire(exclusive=False)`` waits while an exclusive holder runs; ``acquire(exclusive=True)``
    waits until nobody holds the lock, and meanwhile keeps new shared holders out (a turnstile), so
    that a stream of short files cannot starve a timed notebook. One holder per instance: release
    before acquiring again. Where ``fcntl`` is missing (Windows) the lock does nothing.

    Args:
        path: the lock file; ``path`` with the suffix ``.turnstile`` is the second one. Both are
            created if missing and never deleted by the lock.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.held: str | None = None
        self._files = None

    def acquire(self, exclusive: bool) -> None:
        if self.held:
            raise RuntimeError(f"CpuLock({self.path}) is already held ({self.held}): release it first")
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            self.held = "exclusive" if exclusive else "shared"
            return
        if self._files is None:
            self._files = open(self.path, "a+"), open(self.path.with_suffix(".turnstile"), "a+")
        main, turnstile = self._files
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        self.held = "exclusive" if exclusive else "shared"

    def release(self) -> None:
        if not self.held:
            return
        if self._files is not None:
            import fcntl

            fcntl.flock(self._files[0], fcntl.LOCK_UN)
        self.held = None

    def close(self) -> None:
        self.release()
        if self._files is not None:
            for handle in self._files:
                handle.close()
            self._files = None
