"""The evaluation package is part of the headless core: no Qt, no napari."""

import subprocess
import sys


def test_evaluation_imports_without_gui():
    code = (
        "import sys\n"
        "import napari_msunet.evaluation\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy', "
        "'matplotlib'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
