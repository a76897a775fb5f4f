"""Run as a second program: open the annotation store ``argv[1]``, say so, wait for a line.

Tests of the store's edit lock start it with :func:`subprocess.Popen`, read ``holding`` from
its stdout, and end it by writing a line to its stdin (or kill it).
"""

import sys

from napari_msunet.io.annotation_store import AnnotationStore

if __name__ == "__main__":
    store = AnnotationStore.open(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.readline()
