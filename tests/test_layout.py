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
    ["train", "recipes", "finetune", "lora", "simclr", "mae", "large_models"],  # training
    ["distillation", "quantization", "export"],  # shipping
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


def _public_signatures():
    """(qualified name, signature) of every public function, method and class of every module."""
    import importlib
    import inspect

    for module_name in [m for row in LAYERS for m in row]:
        module = importlib.import_module(f"companion.{module_name}")
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not callable(obj) or getattr(obj, "__module__", None) != module.__name__:
                continue
            members = [(name, obj)]
            if inspect.isclass(obj):
                members += [(f"{name}.{m}", f) for m, f in vars(obj).items()
                            if inspect.isfunction(f) and (not m.startswith("_") or m == "__call__")]  # fmt: skip
            for qualified, function in members:
                try:
                    yield f"{module_name}.{qualified}", inspect.signature(function)
                except (TypeError, ValueError):  # a builtin without a signature
                    continue


def test_one_device_and_one_randomness_convention():
    """The package docstring's conventions: ``device`` required or None; ``generator`` required or None;
    ``seed`` an int defaulting to 0 (``seed_everything`` excepted: seeding is what it is for)."""
    import inspect

    signatures = list(_public_signatures())
    assert len(signatures) > 100  # the walk found the package's API
    wrong = []
    for name, signature in signatures:
        for parameter in signature.parameters.values():
            default = parameter.default
            if parameter.name in ("device", "generator") and default not in (inspect.Parameter.empty, None):
                wrong.append(f"{name}({parameter.name}={default!r})")
            if parameter.name == "seed" and name != "device.seed_everything" and default != 0:
                wrong.append(f"{name}(seed={default!r})")
    assert not wrong, f"against the package's conventions: {wrong}"


def test_the_top_level_names_are_those_the_book_uses():
    import types

    import companion

    root = PACKAGE.parent
    text = "\n".join(p.read_text(encoding="utf-8") for p in [*sorted((root / "chapters").glob("*.md")),
                                                             root / "setup.md", root / "README.md"])  # fmt: skip
    names = [n for n in companion.__all__ if not isinstance(getattr(companion, n), types.ModuleType)]
    unused = [n for n in names if not re.search(rf"companion\.{n}\b|from companion import[^\n]*\b{n}\b|`{n}`", text)]
    assert not unused, f"exported at the top level but used by no chapter, README or setup page: {unused}"
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "cli"}
    assert modules <= set(companion.__all__), modules - set(companion.__all__)
