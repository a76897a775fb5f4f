"""Run as a second program: a prediction into ``argv[3]``, held open or killed part-way.

``argv``: slide, model file, output folder, mode. Modes:

``hold``
    Start the prediction (the folder's lock is taken before the first record), print
    ``holding``, wait for a line on stdin, then close the generator (releasing the lock).
``kill-pyramid``
    Run it with the exports and SIGKILL this process while publishing, after the labels
    store is published and before the probabilities are.
``kill-exports``
    Run it with the exports and SIGKILL this process at the first ``vectorise`` record: the
    stores and ``tissue.png`` are published, the GeoJSON, the PNG and the manifest are not.
"""

import os
import signal
import sys

from napari_msunet.inference import InferenceConfig, iter_predict_slide
from napari_msunet.io.ome_zarr import OmeZarrWriter
from napari_msunet.io.slide import open_slide
from napari_msunet.models.checkpoint import load_model

CONFIG = InferenceConfig(target_mpp=4.0, device="cpu", tile=64, chunk=64)


def main(slide_path: str, model_path: str, out: str, mode: str) -> None:
    model, header = load_model(model_path)
    if mode == "kill-pyramid":
        finalize, calls = OmeZarrWriter.finalize, []

        def dying_finalize(self, *args, **kwargs):
            calls.append(self.path.name)
            if len(calls) == 2:  # the labels are published, the probabilities not yet
                os.kill(os.getpid(), signal.SIGKILL)
            return finalize(self, *args, **kwargs)

        OmeZarrWriter.finalize = dying_finalize
    with open_slide(slide_path) as slide:
        gen = iter_predict_slide(slide, model, header, CONFIG, out, exports=mode != "hold")
        for record in gen:
            if mode == "hold":
                print("holding", flush=True)
                sys.stdin.readline()
                gen.close()
                return
            if mode == "kill-exports" and record.stage == "vectorise":
                os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit("the run was not killed")


if __name__ == "__main__":
    main(*sys.argv[1:5])
