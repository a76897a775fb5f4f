"""The headless core must import without Qt or napari (CLI, cluster workers depend on it)."""

import subprocess
import sys

CORE = [
    "napari_msunet",
    "napari_msunet.cli",
    "napari_msunet.io.slide",
    "napari_msunet.io.annotations",
    "napari_msunet.io.writers",
    "napari_msunet.io.synthetic",
    "napari_msunet.models",
    "napari_msunet.training.losses",
    "napari_msunet.training.trainer",
    "napari_msunet.evaluation",
]


def test_core_imports_without_gui():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
