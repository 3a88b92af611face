"""The package's layout: one concept per module, imports running one way (the README's "Layout")."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "companion"

#: Rows of the package, top to bottom: a module imports only from its own row or the rows above it.
LAYERS = [
    ["device", "utils", "history"],  # utilities
    ["distributed", "checkpoint"],  # plumbing
    ["data", "augment", "boxes", "scenes"],  # data and box geometry
    ["concepts", "cnn", "norm", "blocks", "rnn", "attention"],  # from-scratch building blocks
    ["modern_cnn", "pretrained", "detection", "segmentation"],  # networks
    ["evaluation", "summary", "detection_metrics", "interpret"],  # measuring
    ["train", "recipes", "finetune", "simclr"],  # training
    ["plots", "diagrams", "notebook"],  # showing
    ["cli"],  # entry points
]


def _imports(module: str) -> set[str]:
    source = (PACKAGE / f"{module}.py").read_text(encoding="utf-8")
    return set(re.findall(r"^\s*from \.(\w+) import", source, re.M)) | set(re.findall(r"^\s*from \. import (\w+)", source, re.M))


def test_every_module_has_a_row():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    placed = [m for row in LAYERS for m in row]
    assert sorted(placed) == sorted(modules), f"unplaced: {modules - set(placed)}, gone: {set(placed) - modules}"


def test_imports_run_one_way_without_a_circle():
    rank = {m: i for i, row in enumerate(LAYERS) for m in row}
    upward = [(m, i) for m in rank for i in _imports(m) if rank[i] > rank[m]]
    assert not upward, f"modules importing from a lower row: {upward}"
    graph = {m: _imports(m) for m in rank}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:  # depth-first search: a grey node met again closes a circle
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import circle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in rank:
        if m not in state:
            visit(m, [])
