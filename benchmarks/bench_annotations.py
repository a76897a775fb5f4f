"""Benchmark: rasterising annotations and exporting label masks (QuPath GeoJSON).

Run: .venv/bin/python benchmarks/bench_annotations.py   (prints a table; ratios vs baselines
measured in the same process)
"""

import os
import platform
import tempfile
import time

import numpy as np
import shapely

from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import read_geojson, write_geojson
from napari_msunet.io.rasterise import Rasteriser, rasterise, rasterise_array
from napari_msunet.io.vectorise import _iter_mask_runs, vectorise


def best(f, n=5):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts)


rng = np.random.default_rng(0)


def blob(cx, cy, r, n):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = r * (1 + 0.2 * np.sin(3 * a + rng.uniform(0, 6)))
    return shapely.Polygon(np.c_[cx + rad * np.cos(a), cy + rad * np.sin(a)])


rows = []
# --- one 1024 x 1024 chunk: 3 big polygons (2000 vertices) + 2000 small ones, overlapping
big = [
    blob(300, 400, 350, 2000),
    blob(700, 600, 300, 2000),
    blob(500, 200, 250, 1000).difference(blob(500, 200, 80, 200)),
]
anns = [Annotation(g, c) for g, c in zip(big, ["Tissue", "Tumor", "Stroma"], strict=True)]
anns += [
    Annotation(blob(*rng.uniform(0, 1024, 2), rng.uniform(3, 12), 16), "Cell") for _ in range(2000)
]
s = AnnotationSet.from_annotations(anns)
lab = s.class_to_label
r = Rasteriser(s, (1024, 1024))


def contains_xy_baseline():
    out = np.zeros((1024, 1024), np.uint8)
    for a in s:
        x0, y0, x1, y1 = a.geometry.bounds
        c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(1024, int(np.ceil(x1 - 0.5)))
        r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(1024, int(np.ceil(y1 - 0.5)))
        if c1 > c0 and r1 > r0:
            yy, xx = np.mgrid[r0:r1, c0:c1]
            shapely.prepare(a.geometry)
            out[r0:r1, c0:c1][shapely.contains_xy(a.geometry, xx + 0.5, yy + 0.5)] = lab[
                a.class_name
            ]
    return out


assert (contains_xy_baseline() == r.region(0, 0, 1024, 1024)).all()
t_scan = best(lambda: r.region(0, 0, 1024, 1024))
t_cxy = best(contains_xy_baseline, 3)
rows.append(
    (
        "rasterise 1 chunk 1024^2 (3 big + 2000 small polys)",
        t_scan,
        f"contains_xy on bbox grid {t_cxy:.3f} s ({t_cxy / t_scan:.1f}x slower)",
    )
)

# --- 4096 x 4096 level from ~1350 regions, and its export
H = W = 4096
rr, cc = np.mgrid[0:H, 0:W]
mask = np.zeros((H, W), np.uint8)
for _ in range(2000):
    rad = rng.integers(5, 60)
    cy, cx = rng.integers(0, H, 2)
    y0, y1, x0, x1 = max(0, cy - rad), min(H, cy + rad), max(0, cx - rad), min(W, cx + rad)
    sub = (rr[y0:y1, x0:x1] - cy) ** 2 + (cc[y0:y1, x0:x1] - cx) ** 2 < rad * rad
    mask[y0:y1, x0:x1][sub] = rng.integers(1, 4)
mask[500:3500, 500:1500] = 1
classes = {"a": 1, "b": 2, "c": 3}
t_vec = best(lambda: vectorise(mask, classes), 3)
v = vectorise(mask, classes)


def _mask_runs(mask, bh, bw):  # the boundary runs of all blocks, as vectorise collects them
    return np.concatenate(list(_iter_mask_runs(mask, bh, bw)))


runs = _mask_runs(mask, 4096, 4096)


def polygonize_baseline():  # same boundary runs, assembled by GEOS polygonize instead
    lines = shapely.linestrings(runs[:, :4].astype(float).reshape(-1, 2, 2))
    return shapely.get_parts(shapely.polygonize(lines))


t_poly = best(lambda: (_mask_runs(mask, 4096, 4096), polygonize_baseline()), 2)
rows.append(
    (
        f"vectorise 4096^2 mask, {len(v)} regions",
        t_vec,
        f"runs + shapely.polygonize {t_poly:.3f} s ({t_poly / t_vec:.1f}x slower)",
    )
)
d = tempfile.mkdtemp()
p = os.path.join(d, "x.geojson")
t_w = best(lambda: write_geojson(v, p, overwrite=True), 3)
rows.append((f"write GeoJSON ({os.path.getsize(p) / 1e6:.1f} MB)", t_w, ""))
t_r = best(lambda: read_geojson(p), 3)
rows.append(("read GeoJSON", t_r, ""))
back = read_geojson(p)
t_e = best(lambda: rasterise_array(back, (H, W), labels=classes), 3)
assert (rasterise_array(back, (H, W), labels=classes) == mask).all()
rows.append(("rasterise 4096^2 eager (exported regions)", t_e, "round trip exact"))
t_d = best(lambda: rasterise(back, (H, W), labels=classes, chunks=1024).compute(), 3)
rows.append(("rasterise 4096^2 dask, 16 chunks, threads", t_d, ""))
t_l = best(lambda: rasterise(back, (100_000, 100_000)), 3)
rows.append(("build lazy 100k x 100k mask (9604 chunks)", t_l, ""))

print(
    f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
    f"python {platform.python_version()}, shapely {shapely.__version__}, "
    f"GEOS {shapely.geos_version_string}"
)
print(f"{'what':58s} {'best s':>8s}  notes")
for name, t, note in rows:
    print(f"{name:58s} {t:8.3f}  {note}")
