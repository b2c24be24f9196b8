"""A dataset versioned with DVC: an ``.npz`` file at a git revision of a DVC repository.

The built-in sources (:mod:`fl_ext.data.datasets`) are fixed releases inside installed
packages. A real federation's data changes (relabelled examples, a class removed, more
devices), and a result is only reproducible if the run records *which* version it trained on.
DVC keeps the bytes in a cache/remote and their md5 in git, so ``(repo, rev, path)`` names one
version exactly; :class:`DvcDataset` loads it, checks the bytes against DVC's record and
exposes the resolved identity as :class:`DatasetVersion` for MLflow.

DVC is imported lazily (about 0.3-0.5 s): constructing the source, as every client does from
the spec in its config, costs nothing until the data is read.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from fl_ext.data.datasets import DatasetSource

_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class DatasetVersion:
    """The exact data a :class:`DvcDataset` read: where from, which commit, which bytes.

    ``rev`` is what was asked for (a branch moves), ``commit`` what it resolved to (``None``
    when the DVC repo is not a git repo, or has no commit yet); with ``rev=None`` on a local
    repo the data is the working tree's and ``commit`` is its ``HEAD``. ``md5`` is DVC's
    recorded md5 of the file, which the bytes read were checked against.
    """

    repo: str
    rev: str | None
    commit: str | None
    path: str
    md5: str
    size_bytes: int
    num_examples: int

    def as_tags(self, prefix: str = "dataset.dvc.") -> dict[str, str]:
        """String tags for MLflow (``None`` fields left out)."""
        fields = {
            "repo": self.repo,
            "rev": self.rev,
            "commit": self.commit,
            "path": self.path,
            "md5": self.md5,
            "size_bytes": self.size_bytes,
            "num_examples": self.num_examples,
        }
        return {f"{prefix}{k}": str(v) for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class _Record:
    """What DVC's metadata (``.dvc`` file / ``dvc.lock``) says about the file at a rev."""

    commit: str | None
    md5: str
    size: int | None


class DvcDataset(DatasetSource):
    """Images and labels from a DVC-tracked ``.npz`` file (arrays ``x`` and ``y``).

    Parameters
    ----------
    repo:
        A local path or git URL of a DVC repository.
    rev:
        A git revision (branch, tag, sha); ``None`` reads the working tree of a local repo
        (the default branch's tip for a URL).
    path:
        The ``.npz`` file, relative to the repository root, tracked by DVC (``dvc add``).
        ``x`` is uint8 ``[N, H, W]`` / ``[N, C, H, W]`` or float in [0, 1]; ``y`` integer labels.
    num_classes:
        Number of classes; by default the largest label + 1. Give it when a version may
        lack the highest class, so that the model's output size does not change with the data.

    """

    name = "dvc"

    def __init__(
        self,
        *,
        repo: str,
        path: str,
        rev: str | None = None,
        num_classes: int | None = None,
        test_fraction: float = 0.2,
        seed: int = 0,
        root_size: int = 0,
    ) -> None:
        super().__init__(test_fraction=test_fraction, seed=seed, root_size=root_size)
        for key, value in (("repo", repo), ("path", path)):
            if value == "???":  # conf/dataset/dvc.yaml leaves both to the user
                raise ValueError(f"{key} is not set: give dataset.{key}=... (it is required)")
        if not isinstance(repo, str) or not repo:
            raise ValueError(f"repo must be a non-empty path or git URL, got {repo!r}")
        if rev is not None and (not isinstance(rev, str) or not rev):
            raise ValueError(f"rev must be a git revision or None, got {rev!r}")
        if not isinstance(path, str) or not path.endswith(".npz"):
            raise ValueError(f"path must name an .npz file inside the repo, got {path!r}")
        pure = PurePosixPath(path.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"path must be relative to the repo root, got {path!r}")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be an integer >= 2 or None, got {num_classes!r}")
        self.repo = repo
        self.rev = rev
        self.path = str(pure)
        self.num_classes = num_classes
        self.name = f"dvc:{pure.stem}"
        self._version: DatasetVersion | None = None

    @property
    def where(self) -> str:
        """``path@rev`` as error messages name the data."""
        return f"{self.path}@{self.rev or 'workspace'} of {self.repo}"

    def version(self) -> DatasetVersion:
        """The version last loaded (loading it now if nothing was loaded yet)."""
        if self._version is None:
            self.load_raw()
        assert self._version is not None  # set by load_raw
        return self._version

    def load_raw(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Read the file through DVC, check it against DVC's md5, validate the arrays."""
        record = _resolve_record(self.repo, self.rev, self.path)
        # Read the commit the record came from, so a branch that moves between the two
        # opens cannot pair one version's record with another's bytes; the working tree of a
        # local repo (rev None) has no commit of its own and is read as such.
        local_workspace = self.rev is None and os.path.isdir(self.repo)
        read_rev = None if local_workspace else (record.commit or self.rev)
        data = _read_bytes(self.repo, read_rev, self.path)
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if actual != record.md5:
            raise ValueError(
                f"the data at {self.path}@{self.rev or 'workspace'} does not match its DVC "
                f"record: read md5 {actual} ({len(data)} bytes), DVC records {record.md5} "
                f"({record.size} bytes) in {self.repo}; the cache or working-tree file was "
                "tampered with or is stale (run `dvc status`, then `dvc checkout` or delete "
                "the cache entry to refetch it from the remote)"
            )
        x, y, num_classes = parse_npz(data, where=self.where, num_classes=self.num_classes)
        self._version = DatasetVersion(
            repo=self.repo,
            rev=self.rev,
            commit=record.commit,
            path=self.path,
            md5=record.md5,
            size_bytes=len(data),
            num_examples=int(y.shape[0]),
        )
        return x, y, num_classes

    def provenance(self, digest: str) -> dict[str, str]:
        """DVC's identity of what :meth:`load` read, for the split's record (MLflow inputs).

        ``version`` is ``md5:<md5>@<commit>`` (12 hex digits each): the md5 names the bytes
        even for a working-tree version, the commit where to find them again.
        """
        v = self.version()
        label = f"md5:{v.md5[:12]}" + (f"@{v.commit[:12]}" if v.commit else "")
        fields = v.as_tags(prefix="dvc_")
        return {"source": f"dvc:{v.repo}:{v.path}", "version": label, **fields}

    def normalise(self, x_raw: np.ndarray) -> np.ndarray:
        """Float32 ``[N, C, H, W]`` in [0, 1]: uint8 divided by 255, floats kept."""
        x = x_raw.astype(np.float32) / 255.0 if x_raw.dtype == np.uint8 else x_raw
        x = np.asarray(x, dtype=np.float32)
        return x[:, None] if x.ndim == 3 else x


def parse_npz(
    data: bytes, *, where: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``x``, ``y`` and the number of classes from ``.npz`` bytes, each checked.

    Pickled (object) arrays are refused: the file may come from anyone who can push to the
    repo, and unpickling runs code.
    """
    if not data.startswith(_ZIP_MAGIC):
        raise ValueError(f"{where} is not an .npz archive (no zip header)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            keys = sorted(archive.files)
            missing = [k for k in ("x", "y") if k not in keys]
            if missing:
                raise ValueError(f"{where} has no array {missing[0]!r}; its arrays are {keys}")
            x, y = archive["x"], archive["y"]
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{where} is not a readable .npz archive: {err}") from err
    except ValueError as err:
        if "pickle" in str(err):
            raise ValueError(f"{where} holds object (pickled) arrays, refused: {err}") from err
        raise
    return validate_arrays(x, y, where=where, num_classes=num_classes)


def validate_arrays(
    x: np.ndarray, y: np.ndarray, *, where: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Check shapes, dtypes, pixel range and labels; return ``x``, ``y``, ``num_classes``."""
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{where}: x must be [N, H, W] or [N, C, H, W] images, got shape {x.shape}"
        )
    if y.ndim != 1:
        raise ValueError(f"{where}: y must be a 1-D label vector, got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: x has {x.shape[0]} examples but y has {y.shape[0]} labels")
    if y.shape[0] == 0:
        raise ValueError(f"{where}: the file holds no examples")
    if not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
        raise ValueError(f"{where}: y must hold integer labels, got dtype {y.dtype}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{where}: x must be uint8 pixels or floats in [0, 1], got {x.dtype}")
        if not np.isfinite(x).all():
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise ValueError(f"{where}: x holds {bad} non-finite values (NaN or inf)")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{where}: float x must lie in [0, 1], got values in [{lo}, {hi}]; "
                "store uint8 pixels or scale them"
            )
    lo_label, hi_label = int(y.min()), int(y.max())
    classes = hi_label + 1 if num_classes is None else num_classes
    if lo_label < 0 or hi_label >= classes:
        raise ValueError(
            f"{where}: labels must lie in [0, {classes}), got labels in [{lo_label}, {hi_label}]"
            + ("" if num_classes is None else f" with num_classes={num_classes}")
        )
    if classes < 2:
        raise ValueError(f"{where}: needs at least 2 classes, the labels give {classes}")
    return x, y, classes


def prepare_dvc_env() -> None:
    """Keep DVC from phoning home before it is first imported (it reads the env at import)."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _resolve_record(repo: str, rev: str | None, path: str) -> _Record:
    """The commit ``rev`` resolves to and DVC's recorded md5/size of ``path`` there."""
    prepare_dvc_env()
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import CloneError, RevError, SCMError
    from scmrepo.git import Git

    where = f"{path}@{rev or 'workspace'}"
    try:
        with Repo.open(repo, rev=rev, subrepos=True, uninitialized=True) as dvc_repo:
            commit: str | None = None
            if isinstance(dvc_repo.scm, Git):
                try:
                    commit = str(dvc_repo.get_rev())
                except SCMError:  # a git repo with no commit yet
                    commit = None
            info: dict[str, Any] = dvc_repo.dvcfs.info(path)
    except CloneError as err:
        raise ValueError(
            f"cannot open DVC repo {repo!r}: it is not a local directory and git could not "
            f"clone it ({err})"
        ) from err
    except RevError as err:
        raise ValueError(f"rev {rev!r} is not a revision of {repo}: {err}") from err
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where} does not exist in {repo}") from err
    except SCMError as err:
        raise ValueError(f"cannot read {where} from {repo}: {err}") from err
    except DvcException as err:
        raise ValueError(f"cannot read {where} from {repo}: {err}") from err
    dvc_info = info.get("dvc_info") or {}
    if info.get("type") == "directory":
        raise ValueError(f"{where} in {repo} is a directory, not an .npz file")
    # DVC 3 records "md5" (the md5 of the bytes); DVC 2 records "md5-dos2unix", which for a
    # binary file like an .npz is the same md5 (dos2unix applies to text files only).
    md5 = dvc_info.get("md5") or dvc_info.get("md5-dos2unix")
    if not dvc_info or not md5:
        raise ValueError(
            f"{where} in {repo} is not tracked by DVC (no .dvc file or dvc.lock entry for it "
            "at that rev): `dvc add` it, commit the .dvc file and `dvc push`"
        )
    size = dvc_info.get("size")
    return _Record(commit=commit, md5=str(md5), size=int(size) if size is not None else None)


def _read_bytes(repo: str, rev: str | None, path: str) -> bytes:
    """The file's bytes via ``dvc.api.open``: cache if there, else streamed from the remote."""
    prepare_dvc_env()
    import dvc.api
    from dvc.exceptions import DvcException, FileMissingError, PathMissingError

    where = f"{path}@{rev or 'workspace'}"
    try:
        with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as fobj:
            data = fobj.read()
    except (FileNotFoundError, FileMissingError, PathMissingError) as err:
        raise FileNotFoundError(
            f"{where} of {repo} is in neither the DVC cache nor the remote: `dvc push` it "
            f"from the repo that has it ({err})"
        ) from err
    except DvcException as err:
        raise ValueError(f"cannot read {where} from {repo}: {err}") from err
    if not isinstance(data, bytes):
        raise TypeError(f"dvc.api.open returned {type(data).__name__}, expected bytes")
    return data


__all__ = ["DatasetVersion", "DvcDataset", "parse_npz", "prepare_dvc_env", "validate_arrays"]
