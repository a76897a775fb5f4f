"""Synthetic whole-slide images with a known ground truth, for tests, benchmarks and demos.

A :class:`SyntheticSlideSpec` describes a slide analytically: a few large ellipses of tissue
and, inside them, smaller elliptical regions of two classes ("germinal centre" and "sinus").
Because the description is analytic, any region of any pyramid level can be rendered on its
own, so :func:`write_synthetic_slide` writes slides of any size (100,000 x 100,000 and more)
tile by tile, never holding a level in memory, and the ground-truth label mask of any region
is exact.

The files imitate the real formats closely enough for our reader and for tifffile's format
detection: an Aperio-style SVS (baseline, thumbnail, reduced levels, label and macro; JPEG
tiles; ``MPP =`` and ``AppMag =`` in the description), an OME-TIFF with a SubIFD pyramid, a
generic pyramidal TIFF (levels as pages, µm/px in the resolution tags) and an NDPI-like file
(Hamamatsu tags; note real NDPI stores levels as JPEG strips rather than tiles).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from napari_msunet._atomic import atomic_path, atomic_write_bytes

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "SyntheticSlideSpec",
    "write_synthetic_slide",
]

#: Label values of the ground truth: 0 is everything else (background and plain tissue).
CLASS_NAMES = {1: "Germinal centre", 2: "Sinus"}
CLASS_COLORS = {1: (0, 160, 0), 2: (0, 90, 200)}

_BACKGROUND = np.array([242, 242, 240], np.float32)
_STROMA = np.array([226, 160, 196], np.float32)  # eosin pink
_CLASS_RGB = {
    1: np.array([140, 80, 170], np.float32),  # dense haematoxylin purple
    2: np.array([236, 212, 226], np.float32),  # pale sinus
}
_PALETTE = np.stack([_BACKGROUND, _STROMA, _CLASS_RGB[1], _CLASS_RGB[2]]).astype(np.int16)
_BANK_SIZE = 8


@dataclass(frozen=True)
class _Ellipse:
    cy: float
    cx: float
    ry: float
    rx: float
    angle: float  # radians
    label: int

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        r = max(self.ry, self.rx)
        return self.cy - r, self.cx - r, self.cy + r, self.cx + r

    def contains(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        dy, dx = yy - self.cy, xx - self.cx
        u = (dx * c + dy * s) / self.rx
        v = (-dx * s + dy * c) / self.ry
        return u * u + v * v <= 1.0

    def polygon(self, n: int = 128) -> list[list[float]]:
        """Closed ring of ``n`` vertices in level-0 (x, y) coordinates."""
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = self.rx * np.cos(t), self.ry * np.sin(t)
        xs, ys = self.cx + u * c - v * s, self.cy + u * s + v * c
        ring = [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]
        return [*ring, ring[0]]


@dataclass(frozen=True)
class SyntheticSlideSpec:
    """An analytic H&E-like slide of ``height`` x ``width`` level-0 pixels.

    Parameters
    ----------
    height, width
        Level-0 size in pixels.
    seed
        Seeds the layout and the texture; the same spec always renders the same pixels.
    mpp
        µm per level-0 pixel written into the file (0.25 is a typical 40x scan).
    n_regions
        Number of labelled regions (half germinal centres, half sinuses).
    region_size
        Range of region radii as fractions of the slide's shorter side.
    """

    height: int
    width: int
    seed: int = 0
    mpp: float = 0.25
    n_regions: int = 24
    region_size: tuple[float, float] = (0.015, 0.045)
    _shapes: tuple[_Ellipse, ...] = field(init=False, repr=False, compare=False)
    _bank: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError("a synthetic slide must be at least 16 x 16 pixels")
        rng = np.random.default_rng(self.seed)
        h, w = self.height, self.width
        side = min(h, w)
        tissue = []
        for _ in range(3):
            tissue.append(
                _Ellipse(
                    cy=rng.uniform(0.3, 0.7) * h,
                    cx=rng.uniform(0.3, 0.7) * w,
                    ry=rng.uniform(0.22, 0.33) * h,
                    rx=rng.uniform(0.22, 0.33) * w,
                    angle=rng.uniform(0, np.pi),
                    label=-1,
                )
            )
        regions = []
        while len(regions) < self.n_regions:
            host = tissue[int(rng.integers(len(tissue)))]
            # a point well inside the host ellipse, so regions lie on tissue
            r, t = 0.7 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            c, s = math.cos(host.angle), math.sin(host.angle)
            u, v = host.rx * r * math.cos(t), host.ry * r * math.sin(t)
            label = 1 + len(regions) % 2
            size = rng.uniform(*self.region_size) * side
            regions.append(
                _Ellipse(
                    cy=host.cy + u * s + v * c,
                    cx=host.cx + u * c - v * s,
                    ry=size * rng.uniform(0.6, 1.0),
                    rx=size * rng.uniform(0.6, 1.0),
                    angle=rng.uniform(0, np.pi),
                    label=label,
                )
            )
        object.__setattr__(self, "_shapes", (*tissue, *regions))
        # A small bank of texture tiles (noise plus nucleus-like dark dots), chosen per tile
        # by a hash of its position: cheap to render and never visibly periodic.
        bank = rng.normal(0, 7, size=(_BANK_SIZE, 256, 256, 1))
        yy, xx = np.mgrid[0:256, 0:256]
        for b in range(_BANK_SIZE):
            for cy, cx in rng.uniform(0, 256, size=(60, 2)):
                d2 = (yy - cy) ** 2 + (xx - cx) ** 2
                bank[b, ..., 0] -= 60 * np.exp(-d2 / 8.0)
        object.__setattr__(self, "_bank", np.round(bank).astype(np.int16))

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def render(
        self, y0: int, x0: int, h: int, w: int, downsample: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Render RGB pixels and the ground-truth labels of a region of one level.

        Parameters
        ----------
        y0, x0, h, w
            The region in pixels *of the level* (not level 0).
        downsample
            Level-0 pixels per level pixel; a level pixel takes the value at its centre.

        Returns
        -------
        rgb : (h, w, 3) uint8
        labels : (h, w) uint8, 0 = no region, 1 and 2 per :data:`CLASS_NAMES`.
        """
        d = float(downsample)
        ys = (y0 + np.arange(h, dtype=np.float64) + 0.5) * d
        xs = (x0 + np.arange(w, dtype=np.float64) + 0.5) * d
        by0, bx0, by1, bx1 = ys[0], xs[0], ys[-1], xs[-1]
        yy, xx = ys[:, None], xs[None, :]
        # idx: 0 background, 1 plain tissue, 2 and 3 the two region classes
        idx = np.zeros((h, w), np.uint8)
        regions = []
        for e in self._shapes:
            ey0, ex0, ey1, ex1 = e.bbox
            if ey1 < by0 or ey0 > by1 or ex1 < bx0 or ex0 > bx1:
                continue
            if e.label < 0:
                idx[e.contains(yy, xx)] = 1
            else:
                regions.append(e)
        for e in regions:
            idx[e.contains(yy, xx) & (idx > 0)] = 1 + e.label
        labels = np.where(idx > 1, idx - 1, 0).astype(np.uint8)
        key = (int(y0) // 256 * 7919 + int(x0) // 256 * 104729 + int(d * 13)) % _BANK_SIZE
        noise = self._bank[key]
        if noise.shape[0] < h or noise.shape[1] < w:
            noise = np.tile(noise, (h // 256 + 1, w // 256 + 1, 1))
        rgb = _PALETTE[idx] + noise[:h, :w] * (idx > 0)[..., None]
        return np.clip(rgb, 0, 255).astype(np.uint8), labels

    def mask(self, downsample: float = 1.0) -> np.ndarray:
        """The whole ground-truth label mask of one level (for small slides and tests)."""
        h = math.ceil(self.height / downsample)
        w = math.ceil(self.width / downsample)
        return self.render(0, 0, h, w, downsample)[1]

    def image(self, downsample: float = 1.0) -> np.ndarray:
        """The whole RGB image of one level (for small slides and tests)."""
        h = math.ceil(self.height / downsample)
        w = math.ceil(self.width / downsample)
        return self.render(0, 0, h, w, downsample)[0]

    def geojson(self) -> dict:
        """The ground-truth regions as a QuPath-style GeoJSON FeatureCollection.

        The polygons approximate the ellipses with 128 vertices, in level-0 pixel coordinates.
        Parts of a region outside the tissue are not cut away (they are rare and tiny).
        """
        features = []
        for i, e in enumerate(s for s in self._shapes if s.label > 0):
            features.append(
                {
                    "type": "Feature",
                    "id": f"synthetic-{i}",
                    "geometry": {"type": "Polygon", "coordinates": [e.polygon()]},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {
                            "name": CLASS_NAMES[e.label],
                            "color": list(CLASS_COLORS[e.label]),
                        },
                    },
                }
            )
        return {"type": "FeatureCollection", "features": features}

    def write_geojson(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write :meth:`geojson` to ``path`` atomically.

        Raises
        ------
        WriterError
            ``path`` exists and ``overwrite`` is false (a user's annotation is never replaced
            by accident), or it cannot be written.
        """
        return atomic_write_bytes(path, json.dumps(self.geojson()).encode(), overwrite=overwrite)


def _level_shapes(height: int, width: int, factor: int, tile: int) -> list[tuple[int, int, float]]:
    """(height, width, downsample) of each pyramid level, down to about one tile."""
    levels = [(height, width, 1.0)]
    d = 1
    while max(levels[-1][:2]) > 2 * tile:
        d *= factor
        levels.append((math.ceil(height / d), math.ceil(width / d), float(d)))
    return levels


def _tiles(spec: SyntheticSlideSpec, h: int, w: int, d: float, tile: int) -> Iterator[np.ndarray]:
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            yield spec.render(ty, tx, tile, tile, d)[0]


def _whole(spec: SyntheticSlideSpec, max_side: int) -> np.ndarray:
    d = max(spec.height, spec.width) / max_side
    return spec.image(d)


def _label_image() -> np.ndarray:
    img = np.full((300, 300, 3), 255, np.uint8)
    img[40:260:20, 30:270] = 0  # a barcode-like pattern
    return img


def write_synthetic_slide(
    path: str | Path,
    spec: SyntheticSlideSpec,
    fmt: str = "svs",
    *,
    tile: int = 256,
    quality: int = 80,
    compression: str = "jpeg",
    workers: int | None = None,
) -> Path:
    """Write ``spec`` as a pyramidal tiled slide file, tile by tile.

    Parameters
    ----------
    path
        Output file; written under a temporary name and renamed when complete.
    spec
        What to draw.
    fmt
        ``"svs"`` (Aperio-like, levels /4), ``"ome-tiff"`` (SubIFD pyramid, levels /2),
        ``"tiff"`` (generic pyramid of pages, µm/px in resolution tags, levels /2) or
        ``"ndpi"`` (Hamamatsu tags, levels /2, tiled rather than striped).
    tile
        Tile side in pixels (a multiple of 16).
    quality, compression
        JPEG quality, or another tifffile compression such as ``"zlib"`` for lossless tests.
    workers
        Threads that compress tiles (tifffile's ``maxworkers``).
    """
    path = Path(path)
    if fmt not in ("svs", "ome-tiff", "tiff", "ndpi"):
        raise ValueError(f"unknown synthetic slide format {fmt!r}")
    factor = 4 if fmt == "svs" else 2
    levels = _level_shapes(spec.height, spec.width, factor, tile)
    common = {
        "tile": (tile, tile),
        "compression": compression,
        "compressionargs": {"level": quality} if compression == "jpeg" else None,
        "photometric": "rgb",
        "maxworkers": workers,
    }
    res_cm = 1e4 / spec.mpp  # pixels per centimetre
    with (
        atomic_path(path, overwrite=True) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=True, ome=(fmt == "ome-tiff")) as tif,
    ):
        if fmt == "svs":
            _write_svs(tif, spec, levels, tile, quality, common)
        elif fmt == "ome-tiff":
            h, w, _ = levels[0]
            meta = {
                "axes": "YXS",
                "Name": "synthetic",
                "PhysicalSizeX": spec.mpp,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeY": spec.mpp,
                "PhysicalSizeYUnit": "µm",
            }
            tif.write(
                _tiles(spec, h, w, 1.0, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                subifds=len(levels) - 1,
                metadata=meta,
                **common,
            )
            for h, w, d in levels[1:]:
                tif.write(
                    _tiles(spec, h, w, d, tile),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    subfiletype=1,
                    metadata=None,
                    **common,
                )
            tif.write(
                _whole(spec, 512), photometric="rgb", metadata={"axes": "YXS", "Name": "macro"}
            )
        else:  # "tiff" or "ndpi"
            extra = []
            if fmt == "ndpi":
                extra = [
                    (271, "s", 0, "Hamamatsu", True),
                    (65420, "I", 1, 1, True),
                    (65421, "f", 1, 40.0, True),
                ]
            for i, (h, w, d) in enumerate(levels):
                tif.write(
                    _tiles(spec, h, w, d, tile),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    resolution=(res_cm / d, res_cm / d),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if i else 0,
                    metadata=None,
                    extratags=extra,
                    software="Hamamatsu synthetic" if fmt == "ndpi" else "napari-msunet",
                    **common,
                )
            if fmt == "ndpi":
                macro = _whole(spec, 512)
                tif.write(
                    macro,
                    photometric="rgb",
                    compression="jpeg",
                    metadata=None,
                    extratags=[
                        (271, "s", 0, "Hamamatsu", True),
                        (65420, "I", 1, 1, True),
                        (65421, "f", 1, -1.0, True),
                    ],
                )
    return path


def _write_svs(tif, spec, levels, tile, quality, common) -> None:
    h0, w0, _ = levels[0]

    def desc(h: int, w: int) -> str:
        return (
            f"Aperio Image Library v12.0.15 \n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) "
            f"JPEG/RGB Q={quality}|AppMag = 40|StripeWidth = 2040|ScanScope ID = SYNTH"
            f"|Filename = synthetic|MPP = {spec.mpp:.4f}|Width = {w}|Height = {h}"
        )

    tif.write(
        _tiles(spec, h0, w0, 1.0, tile),
        shape=(h0, w0, 3),
        dtype=np.uint8,
        description=desc(h0, w0),
        metadata=None,
        **common,
    )
    # associated images as Aperio writes them (JPEG thumbnail and macro, LZW label), unless a
    # lossless/codec-free slide was asked for: then every page uses that compression
    if common["compression"] == "jpeg":
        assoc = {"compression": "jpeg", "compressionargs": {"level": 90}}
        label_assoc = {"compression": "lzw"}
    else:
        assoc = label_assoc = {"compression": common["compression"]}
    thumb = _whole(spec, 768)
    tif.write(
        thumb,
        photometric="rgb",
        **assoc,
        description=(
            f"Aperio Image Library v12.0.15 \n{w0}x{h0} -> {thumb.shape[1]}x{thumb.shape[0]}"
        ),
        metadata=None,
    )
    for h, w, d in levels[1:]:
        tif.write(
            _tiles(spec, h, w, d, tile),
            shape=(h, w, 3),
            dtype=np.uint8,
            description=desc(h, w),
            metadata=None,
            **common,
        )
    label = _label_image()
    tif.write(
        label,
        photometric="rgb",
        **label_assoc,
        subfiletype=1,
        description=f"Aperio Image Library v12.0.15\nlabel {label.shape[1]}x{label.shape[0]}",
        metadata=None,
    )
    macro = _whole(spec, 1024)
    tif.write(
        macro,
        photometric="rgb",
        **assoc,
        subfiletype=9,
        description=f"Aperio Image Library v12.0.15\nmacro {macro.shape[1]}x{macro.shape[0]}",
        metadata=None,
    )
