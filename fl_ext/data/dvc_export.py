"""Publish a built-in dataset as a DVC-versioned ``.npz`` file, and publish changed versions.

This is how a user (or a test) gets a DVC repository to point :class:`DvcDataset` at without
any network: ``init_repo`` makes a git + DVC repo, writes a built-in dataset as
``data/<name>.npz``, ``dvc add``s it, pushes it to a local directory remote and commits;
``update_repo`` applies a transform (drop a class, subsample) to the current version and
publishes the result as a new commit. Each step returns the commit and DVC's md5, which is
what :meth:`DvcDataset.version` reports when the data is read back.

DVC is driven through its Python API (``dvc.repo.Repo``: no 0.7 s CLI start per step); git
through ``subprocess`` with an explicit identity, so no global git config is needed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fl_ext.data.datasets import DatasetSource, Digits, Mnist5k
from fl_ext.data.dvc_source import DvcDataset, prepare_dvc_env, validate_arrays

BUILTIN: dict[str, type[DatasetSource]] = {"digits": Digits, "mnist5k": Mnist5k}
REMOTE_NAME = "local"
_GIT_IDENTITY = (
    "-c",
    "user.name=fl-ext",
    "-c",
    "user.email=fl-ext@localhost",
    "-c",
    "commit.gpgsign=false",
)


@dataclass(frozen=True)
class Published:
    """One published version: the commit that records it and DVC's md5 of the file."""

    repo: Path
    path: str  # relative to the repo root, e.g. "data/digits.npz"
    commit: str
    md5: str
    num_examples: int
    remote: str


def git(repo: Path, *args: str) -> str:
    """Run ``git`` in ``repo`` with a fixed identity; its stdout, stripped."""
    try:
        done = subprocess.run(
            ["git", *_GIT_IDENTITY, *args],
            cwd=repo,
            check=False,
            capture_output=True,
            text=True,
        )
    except FileNotFoundError as err:
        raise RuntimeError("git is not installed: DVC versions data in a git repo") from err
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in dataset as the arrays :class:`DvcDataset` reads back identically.

    Pixels are stored as uint8 ``[N, H, W]`` when the dataset's [0, 1] images are exactly
    ``k / 255`` (MNIST), else as float32 ``[N, C, H, W]`` (digits' 0-16 scale), so
    ``DvcDataset(...).load().train.x`` equals ``<builtin>().load().train.x`` bit for bit.
    """
    if name not in BUILTIN:
        raise ValueError(f"dataset {name!r} is not built in; choose one of {sorted(BUILTIN)}")
    source = BUILTIN[name]()
    x_raw, y_raw, _ = source.load_raw()
    x = source.normalise(x_raw)
    pixels = np.rint(x * 255.0).astype(np.uint8)
    y = y_raw.astype(np.int64)
    if np.array_equal(pixels.astype(np.float32) / 255.0, x):
        return (pixels[:, 0] if pixels.shape[1] == 1 else pixels), y
    return x, y


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` and ``y`` (byte-deterministic) by replacing ``path``, never writing into it.

    DVC may link the workspace file to its cache (``cache.type`` hardlink/symlink); writing
    into it would change the cached version in place, so a new file replaces the link.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fobj:
            np.savez(fobj, x=x, y=y)  # zip entries carry a fixed 1980 date: same arrays, same md5
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def npz_md5(x: np.ndarray, y: np.ndarray) -> str:
    """The md5 DVC will record for :func:`write_npz` of these arrays (md5 of the bytes)."""
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return hashlib.md5(buffer.getvalue(), usedforsecurity=False).hexdigest()


def drop_class(x: np.ndarray, y: np.ndarray, arg: str) -> tuple[np.ndarray, np.ndarray]:
    """Remove every example of class ``arg``."""
    label = _int_arg("drop-class", arg)
    if label not in set(np.unique(y).tolist()):
        raise ValueError(f"drop-class={label}: no example has that label")
    keep = y != label
    return x[keep], y[keep]


def subsample(x: np.ndarray, y: np.ndarray, arg: str) -> tuple[np.ndarray, np.ndarray]:
    """Keep a fraction ``arg`` of every class (deterministic, original order kept)."""
    fraction = _float_arg(arg)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"subsample={arg}: the fraction must be in (0, 1)")
    rng = np.random.default_rng(0)
    keep: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        keep.append(rng.choice(idx, size=max(1, round(fraction * idx.size)), replace=False))
    order = np.sort(np.concatenate(keep))
    return x[order], y[order]


def brightness(x: np.ndarray, y: np.ndarray, arg: str) -> tuple[np.ndarray, np.ndarray]:
    """Add ``arg`` times the full scale to every pixel, clipped (a feature shift: a new sensor)."""
    shift = _float_arg(arg)
    if not -1.0 < shift < 1.0:
        raise ValueError(f"brightness={arg}: the shift must be in (-1, 1) of the full scale")
    top = 255.0 if x.dtype == np.uint8 else 1.0
    shifted = np.clip(x.astype(np.float64) + shift * top, 0.0, top)
    return shifted.round().astype(np.uint8) if x.dtype == np.uint8 else shifted.astype(x.dtype), y


TRANSFORMS: dict[str, Callable[[np.ndarray, np.ndarray, str], tuple[np.ndarray, np.ndarray]]] = {
    "drop-class": drop_class,
    "subsample": subsample,
    "brightness": brightness,
}


def apply_transform(x: np.ndarray, y: np.ndarray, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``name=arg`` (``drop-class=3``, ``subsample=0.5``) to a copy of the arrays."""
    name, sep, arg = spec.partition("=")
    if not sep or name not in TRANSFORMS:
        raise ValueError(
            f"transform {spec!r} is not one of {', '.join(f'{k}=...' for k in TRANSFORMS)}"
        )
    return TRANSFORMS[name](x, y, arg)


def init_repo(repo: Path, *, dataset: str = "digits", remote: Path | None = None) -> Published:
    """Make ``repo`` a git + DVC repo holding ``data/<dataset>.npz`` pushed to ``remote``.

    ``remote`` defaults to the repo's DVC remote if it has one, else
    ``<repo>/../<dataset>-dvc-remote``; it is recorded as an absolute path so that a clone of
    the repo (``DvcDataset(repo="file://...")``) finds it too. Running it again changes
    nothing (and pushes again); it refuses if the repo already holds another version of the
    file, which ``update`` made and ``init`` would silently revert.
    """
    x, y = builtin_arrays(dataset)  # before touching the disk: an unknown name fails first
    repo = repo.resolve()
    rel = f"data/{dataset}.npz"
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / ".git").exists():
        git(repo, "-c", "init.defaultBranch=main", "init", "-q")
    prepare_dvc_env()
    from dvc.repo import Repo

    setup = [".dvc/config", ".dvc/.gitignore", ".dvcignore"]
    if not (repo / ".dvc").is_dir():
        dvc_log = logging.getLogger("dvc")  # DVC logs "You can now commit": we do, below
        level = dvc_log.level
        dvc_log.setLevel(logging.WARNING)
        try:
            Repo.init(str(repo)).close()
        finally:
            dvc_log.setLevel(level)
    with Repo(str(repo)) as dvc_repo:
        recorded = _recorded_md5(dvc_repo, repo / rel)
        wanted = npz_md5(x, y)
        if recorded is not None and recorded != wanted:
            raise ValueError(
                f"{repo} already tracks another version of {rel} (md5 {recorded}, the built-in "
                f"{dataset} is {wanted}): publish changes with `update`, or init a new --repo"
            )
        current = dvc_repo.config["core"].get("remote")
        if remote is not None or not current:
            remote_dir = (remote or repo.parent / f"{dataset}-dvc-remote").resolve()
            remote_dir.mkdir(parents=True, exist_ok=True)
            with dvc_repo.config.edit() as conf:
                conf["remote"][REMOTE_NAME] = {"url": str(remote_dir)}
                conf["core"]["remote"] = REMOTE_NAME
    write_npz(repo / rel, x, y)
    setup = [p for p in setup if (repo / p).exists()]
    return _publish(repo, rel, setup, f"data: {dataset}", num_examples=int(y.shape[0]))


def update_repo(repo: Path, *, transform: str, path: str | None = None) -> Published:
    """Publish ``transform`` of the current version of ``path`` as a new commit.

    ``path`` defaults to the only ``data/*.npz`` DVC tracks in ``repo``. The current version
    is read through :class:`DvcDataset` (so it is checked against its DVC record first).
    """
    repo = repo.resolve()
    rel = path or _only_tracked_npz(repo)
    x, y, _ = DvcDataset(repo=str(repo), path=rel).load_raw()
    new_x, new_y = apply_transform(x, y, transform)
    validate_arrays(new_x, new_y, where=f"{rel} after {transform}")
    write_npz(repo / rel, new_x, new_y)
    message = f"data: {transform} on {rel}"
    return _publish(repo, rel, [], message, num_examples=int(new_y.shape[0]), require_change=True)


def _publish(
    repo: Path,
    rel: str,
    extra: Sequence[str],
    message: str,
    *,
    num_examples: int,
    require_change: bool = False,
) -> Published:
    """``dvc add`` + ``dvc push`` the file, then commit its ``.dvc`` file (and ``extra``)."""
    prepare_dvc_env()
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        dvc_repo.scm_context.quiet = True  # no "To track the changes with git, run": we do
        (stage,) = dvc_repo.add(str(repo / rel))  # a relative target is taken from the cwd
        md5 = str(stage.outs[0].hash_info.value)  # what the .dvc file now records
        dvc_repo.push()
        remote = str(dvc_repo.config["remote"][dvc_repo.config["core"]["remote"]]["url"])
    record = f"{rel}.dvc"
    ignore = str(Path(rel).parent / ".gitignore")
    paths = [*extra, record, *([ignore] if (repo / ignore).exists() else [])]
    git(repo, "add", "--", *paths)
    if git(repo, "status", "--porcelain", "--", *paths):
        git(repo, "commit", "-q", "-m", message, "--", *paths)
    elif require_change:
        raise ValueError(f"{message}: the data did not change, nothing to publish")
    return Published(repo, rel, git(repo, "rev-parse", "HEAD"), md5, num_examples, remote)


def _recorded_md5(dvc_repo: Any, path: Path) -> str | None:
    """The md5 the repo's ``.dvc`` file records for ``path``; None if DVC does not track it."""
    from dvc.exceptions import OutputNotFoundError

    try:
        outs = dvc_repo.find_outs_by_path(str(path))
    except OutputNotFoundError:
        return None
    value = outs[0].hash_info.value
    return str(value) if value else None


def _only_tracked_npz(repo: Path) -> str:
    records = repo.glob("data/*.npz.dvc")
    found = sorted(p.relative_to(repo).as_posix().removesuffix(".dvc") for p in records)
    if len(found) != 1:
        raise ValueError(f"{repo} tracks {found or 'no'} data/*.npz files: name one with path=")
    return found[0]


def _float_arg(arg: str) -> float:
    """``arg`` as a float; NaN (which every range check refuses) if it is not a number."""
    try:
        return float(arg)
    except ValueError:
        return float("nan")


def _int_arg(name: str, arg: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise ValueError(f"{name}={arg}: expected an integer") from None


__all__ = [
    "BUILTIN",
    "TRANSFORMS",
    "Published",
    "apply_transform",
    "builtin_arrays",
    "git",
    "init_repo",
    "npz_md5",
    "update_repo",
    "write_npz",
]
