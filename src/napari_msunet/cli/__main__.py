"""``python -m napari_msunet.cli``: the same as the ``msunet`` command."""

import sys

from napari_msunet.cli import main

sys.exit(main())
