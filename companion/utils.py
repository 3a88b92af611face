"""Small utilities every layer of the package uses: a model's mode for a block, and the one atomic write.

Nothing here imports another module of the package, so that model code (attention, summaries,
SimCLR) can use :func:`eval_mode` without depending on the metrics of :mod:`companion.evaluation`,
and the data, checkpoint and benchmark code share one :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from torch import nn

__all__ = ["atomic_write", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in ``eval()`` mode for the block and restore its previous mode after it.

    The previous mode comes back also when the block raises.

    Examples:
        >>> model = nn.Dropout(0.5)
        >>> with eval_mode(model):
        ...     model.training
        False
        >>> model.training
        True
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _usual_permissions() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", suffix: str = ".tmp") -> Iterator[IO]:
    """Write ``path`` all at once: a hidden temporary file beside it, renamed over it when the block succeeds.

    Readers of ``path`` see the old file or the complete new one, never a half-written one. If the
    block raises (an interrupted download, a checksum that does not match, a full disk), the
    temporary file is removed and ``path`` is left as it was. The new file gets the permissions
    ``open()`` would give it (``0o666`` less the umask, usually ``0o644``), not the ``0o600`` of a
    temporary file, so that other users of a shared folder (a data root, a results folder) can read it.
    The folder is created if missing.

    Args:
        path: the file to write.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).
        suffix: the temporary file's suffix (``".part"`` for downloads, say).

    Yields:
        The open temporary file.

    Raises:
        ValueError: ``mode`` is not ``"wb"`` or ``"w"``.

    Examples:
        >>> import json, tempfile
        >>> target = Path(tempfile.mkdtemp()) / "record.json"
        >>> with atomic_write(target, "w") as out:
        ...     json.dump({"accuracy": 0.99}, out)
        >>> json.loads(target.read_text())
        {'accuracy': 0.99}
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(handle, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as out:
            yield out
        os.chmod(tmp, _usual_permissions())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
