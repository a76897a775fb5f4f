"""The per-slide workspace folder: beside the slide, or in the cache when that is read-only."""

from __future__ import annotations

from napari_msunet._napari._workspace import workspace_dir


def test_workspace_is_beside_the_slide(tmp_path):
    slide = tmp_path / "case01.svs"
    slide.write_bytes(b"x")
    ws = workspace_dir(slide)
    assert ws == tmp_path / "case01.svs.msunet"
    assert ws.is_dir()
    assert slide.read_bytes() == b"x"


def test_unusable_folder_falls_back_to_the_cache(tmp_path, monkeypatch):
    # a file where the workspace folder would go: the user's file is kept, the cache is used
    slide = tmp_path / "case01.svs"
    slide.write_bytes(b"x")
    (tmp_path / "case01.svs.msunet").write_text("mine")
    monkeypatch.setenv("NAPARI_MSUNET_CACHE", str(tmp_path / "cache"))
    ws = workspace_dir(slide)
    assert ws.parent == tmp_path / "cache" / "napari-msunet"
    assert ws.name.startswith("case01.svs-")
    assert ws.is_dir()
    assert (tmp_path / "case01.svs.msunet").read_text() == "mine"
