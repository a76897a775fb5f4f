"""The layers of GUIDE.md: imports point downwards only, and only the GUI layer touches Qt.

```
_napari/      widgets, reader/writer hooks, sample data   (the only place that imports napari/Qt)
cli/          `msunet` commands
demo          the demo pipeline (build, predict, evaluate) shared by the CLI and the GUI
distributed   cohorts on dask.distributed: one task per slide (DDP training: training/ddp)
inference/    tiling, engine, outputs
training/     datasets, augmentation, losses, trainer
evaluation/   IoU/Dice, TP/FP/FN maps, suspected missing annotations
models/       networks, registry, checkpoint format, device choice
io/           slides, working image, tissue, masks, GeoJSON, writers, annotation store
(foundation)  errors, progress (the long-work contract), _atomic, palette
```

The check reads every module's source (imports inside functions included), so a lazy import
cannot hide a wrong direction; and it imports the core in a fresh interpreter to show that no
GUI toolkit is loaded on the way (the CLI and cluster workers depend on that).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_msunet"

# rank of each layer: a module may import only from layers of its own rank or lower
LAYERS = {
    "_napari": 9,
    "cli": 8,
    "demo": 7,
    "distributed": 6,
    "inference": 5,
    "training": 4,
    "evaluation": 3,
    "models": 2,
    "io": 1,
    "errors": 0,
    "palette": 0,
    "progress": 0,
    "_atomic": 0,
    "__init__": 0,
}

# (importer, imported) pairs allowed to point upwards, with the reason
ALLOWED_UPWARDS = {
    # `msunet demo` opens napari when there is a display: the CLI starts the GUI, lazily,
    # inside that one command (the core still imports without Qt: see the subprocess test)
    ("napari_msunet.cli.model_commands", "napari_msunet._napari._demo"),
}

GUI_PACKAGES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    """Absolute names of every module imported anywhere in ``path`` (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.append(mod)
            # `from napari_msunet import progress` imports a module, not a name
            if mod == "napari_msunet":
                names += [
                    f"napari_msunet.{alias.name}"
                    for alias in node.names
                    if (SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").is_file()
                ]
    return names


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer():
    found = {_layer(_module_name(p)) for p in MODULES}
    assert found <= set(LAYERS), f"modules outside the known layers: {found - set(LAYERS)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downwards(path):
    me = _module_name(path)
    rank = LAYERS[_layer(me)]
    wrong = []
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "napari_msunet":
            if name == "napari_msunet":
                continue
            theirs = LAYERS[_layer(name)]
            if theirs > rank and (me, name) not in ALLOWED_UPWARDS:
                wrong.append(f"{name} (layer {_layer(name)})")
        elif top in GUI_PACKAGES and _layer(me) != "_napari":
            wrong.append(f"{name} (GUI toolkit outside _napari)")
    assert not wrong, f"{me} (layer {_layer(me)}) imports upwards: {', '.join(wrong)}"


def test_core_imports_without_gui():
    core = sorted(
        _module_name(p)
        for p in MODULES
        if _layer(_module_name(p)) != "_napari" and p.name != "__main__.py"
    )
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in core)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        + repr(GUI_PACKAGES)
        + ")\nprint(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
