"""Model versions made by fine-tuning: where a new one goes and which ones exist.

Fine-tuning never overwrites a model: each run writes ``<stem>-ftN.safetensors`` with the
first free ``N`` (:func:`napari_msunet.training.finetune.next_version_path`). A version goes
next to its parent when that folder is the user's and writable; the bundled default model
lives inside the installed package (site-packages, or the source tree in a development
install), so versions of it, and of any model in a read-only folder, go to the slide's
workspace (``<slide>.msunet/models/``) instead.

The history of a model is its *family*: the root model (the stem without ``-ftN``) and every
``<root>-ftN`` found in the folders involved (the parent's folder, the workspace's
``models/``, the folders of the ancestors named in the headers). Each entry shows what its
header says about it: the training steps, the parent, and whether the run was stopped early.
The header stores no date, so the file's modification time stands in for it. A version
made since held-out scoring also shows its held-out Dice against its parent's
(:class:`~napari_msunet.training.held_out_scores.HeldOutVerdict`), flagged when it got worse.

Plain Python (no Qt): the widget calls these on the GUI thread; they only read small headers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import napari_msunet
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.errors import MsunetError
from napari_msunet.models.checkpoint import read_header
from napari_msunet.training.finetune import next_version_path
from napari_msunet.training.held_out_scores import HELD_OUT, LEARNT, HeldOutVerdict

__all__ = [
    "ModelVersion",
    "family_root",
    "is_bundled",
    "latest_version",
    "model_history",
    "version_target",
]

_VERSION = re.compile(r"^(?P<root>.+)-ft(?P<n>\d+)\.safetensors$")


@dataclass(frozen=True)
class ModelVersion:
    """One model file of a family, as its header describes it."""

    path: Path
    number: int  # 0 for the root model, N for ``-ftN``
    time: datetime  # file modification time: the header stores no date
    steps: int | None  # training steps the header records (None: not recorded)
    planned: int | None  # steps the fine-tune was asked for (None: not a fine-tune)
    parent: Path | None
    held_out: HeldOutVerdict | None = None  # parent vs version on held-out regions
    corrected: HeldOutVerdict | None = None  # ... on the corrected regions it learnt from
    trained: bool = False  # made by a training from slides (not a fine-tune, not bundled)

    @property
    def got_worse(self) -> bool:
        """Whether it scores worse than its parent on the held-out regions (the core's rule)."""
        return self.held_out is not None and self.held_out.got_worse

    @property
    def stopped_early(self) -> bool:
        return self.planned is not None and self.steps is not None and self.steps < self.planned

    def label(self) -> str:
        """Two lines for the history list: name and steps; date and parent."""
        first = self.path.name
        if self.number == 0 and self.trained and self.steps is not None:
            first += f" · trained, {self.steps} steps"
        elif self.number == 0:
            first += " · original"
        elif self.steps is not None:
            first += f" · {self.steps} steps"
            if self.stopped_early:
                first += f" of {self.planned} (stopped)"
        second = self.time.strftime("%Y-%m-%d %H:%M")
        if self.parent is not None:
            second += f" · from {self.parent.name}"
        if self.held_out is None:  # the root, or a version made before held-out scoring
            return f"{first}\n{second}"
        mark = "⚠ " if self.got_worse else ""
        lines = [first, second, f"{mark}{self.held_out.summary(HELD_OUT)}"]
        if self.corrected is not None:
            lines.append(self.corrected.summary(LEARNT))
        return "\n".join(lines)


def is_bundled(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` lies inside the installed package (the bundled default model)."""
    package = Path(napari_msunet.__file__).resolve().parent
    return Path(model).resolve().is_relative_to(package)


def family_root(model: str | os.PathLike[str]) -> str:
    """The stem a model's versions share: ``model-ft3.safetensors`` -> ``model``."""
    name = Path(model).name
    m = _VERSION.match(name)
    return m["root"] if m else name.removesuffix(".safetensors")


def version_target(parent: str | os.PathLike[str], slide: str | os.PathLike[str]) -> Path:
    """Where the next fine-tuned version of ``parent`` goes (see the module docstring).

    Next to the parent when its folder is writable and not part of the installed package,
    otherwise in ``workspace_dir(slide)/models/``; ``-ftN`` numbering either way, with an ``N``
    free in both folders so that the history never shows two versions of the same name.
    """
    parent = Path(parent)
    if not is_bundled(parent) and os.access(parent.parent, os.W_OK):
        return next_version_path(parent)
    models = workspace_dir(slide) / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = next_version_path(models / parent.name)
    beside = next_version_path(parent)  # versions that may already sit next to the parent
    n = max(_number(target), _number(beside))
    return models / f"{family_root(parent)}-ft{n}.safetensors"


def _number(path: Path) -> int:
    m = _VERSION.match(path.name)
    return int(m["n"]) if m else 0


def _describe(path: Path) -> ModelVersion | None:
    try:
        header = read_header(path)
        mtime = path.stat().st_mtime
    except (MsunetError, OSError):
        return None  # not a model file (or gone): leave it out of the history
    training = header.training if isinstance(header.training, dict) else {}
    parent = training.get("parent")
    parent_path = Path(parent["path"]) if isinstance(parent, dict) and parent.get("path") else None
    steps = training.get("steps")
    planned = None
    if training.get("kind") == "fine-tune":
        config = training.get("config") or {}
        per_epoch, epochs = config.get("steps_per_epoch"), config.get("epochs")
        if isinstance(per_epoch, int) and isinstance(epochs, int):
            planned = per_epoch * epochs
    return ModelVersion(
        path=path,
        number=_number(path),
        time=datetime.fromtimestamp(mtime),
        steps=int(steps) if isinstance(steps, int) else None,
        planned=planned,
        parent=parent_path,
        held_out=HeldOutVerdict.from_header(header),
        corrected=HeldOutVerdict.from_header(header, "corrected"),
        trained=training.get("kind") == "train-slides",
    )


def model_history(
    model: str | os.PathLike[str], folders: Iterable[str | os.PathLike[str]] = ()
) -> list[ModelVersion]:
    """The family of ``model``: its root and all its ``-ftN`` versions, oldest number first.

    Parameters
    ----------
    model
        Any member of the family (the root, or a fine-tuned version).
    folders
        Extra folders to look in besides the model's own and its ancestors' (the slide
        workspace's ``models/``).
    """
    model = Path(model)
    root = family_root(model)
    search = [model.parent, *(Path(f) for f in folders)]
    members: dict[Path, ModelVersion] = {}
    # walk up the parents named in the headers: the root may live in another folder
    todo, seen = [model], set()
    while todo:
        path = todo.pop()
        key = path.resolve()
        if key in seen or not path.is_file():
            continue
        seen.add(key)
        version = _describe(path)
        if version is None:
            continue
        members[key] = version
        if path.parent not in search:
            search.append(path.parent)
        if version.parent is not None and family_root(version.parent) == root:
            todo.append(version.parent)
    for folder in search:
        candidates = [folder / f"{root}.safetensors", *folder.glob(f"{root}-ft*.safetensors")]
        for path in candidates:
            key = path.resolve()
            if key in members or not path.is_file() or family_root(path) != root:
                continue
            version = _describe(path)
            if version is not None:
                members[key] = version
    return sorted(members.values(), key=lambda v: (v.number, v.time, str(v.path)))


def latest_version(
    model: str | os.PathLike[str], folders: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """The newest fine-tuned version of ``model``'s family that did not get worse, else
    ``model`` itself.

    What Fine-tune starts from by default: in a new napari session the slide's prediction is
    still the one the bundled model made, and a second fine-tune started from it would have
    been trained from the original while its name ("-ft2") suggested a chain (issue 15).
    Versions are found as :func:`model_history` finds them (headers, the workspace's
    ``models/``); the highest ``-ftN`` wins, a version flagged worse than its parent (on the
    held-out regions) is skipped, as a rollback left it.
    """
    model = Path(model)
    versions = [v for v in model_history(model, folders) if v.number > 0 and not v.got_worse]
    if not versions:
        return model
    return max(versions, key=lambda v: (v.number, v.time)).path
