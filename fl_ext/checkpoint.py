"""Signed, atomic per-round checkpoints of a federated run.

A checkpoint directory holds one sub-directory per completed round, ``round-000003/``:

- ``model.npz``: the global model's named arrays (``np.savez``, loaded without pickle);
- ``state.npz``: array-valued strategy state (a centered-clipping center, ...);
- ``state.json``: everything else (round, selector history, RNG states, metrics, ledger copy);
- ``manifest.json``: format, round, fl-ext version, model schema hash, the SHA-256 of every
  file above;
- ``manifest.sig``: the Ed25519 signature of ``manifest.json`` (hex).

A round is written into a temporary directory, every file fsynced, then renamed into place:
a crash leaves either the whole round or nothing. Loading verifies the signature first, then
every file's hash, and refuses anything missing, unsigned, tampered or signed by another key
(:class:`CheckpointError`, naming the file and the check that failed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fl_ext import __version__
from fl_ext.compat import schema_hash
from fl_ext.security.signing import SignatureError, sign_bytes, verify_bytes

FORMAT = "fl-ext-checkpoint/1"
_ROUND_DIR = re.compile(r"^round-(\d{6})$")
_FILES = ("model.npz", "state.npz", "state.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, unsigned, tampered or incompatible."""


@dataclass(frozen=True)
class Checkpoint:
    """One verified round."""

    server_round: int
    arrays: OrderedDict[str, np.ndarray]
    state: dict[str, Any]
    tensors: dict[str, np.ndarray]
    path: Path
    signature: str  # hex of manifest.sig: names exactly this checkpoint


class CheckpointStore:
    """Write and read the signed checkpoints of one run in ``directory``.

    ``signing_key`` is needed to save; ``verify_key`` (by default the signing key's public
    half) to load. ``keep_last`` prunes older rounds after each save, never ``protect``-ed ones
    (the best round, say).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        verify_key: Ed25519PublicKey | None = None,
        keep_last: int | None = None,
    ) -> None:
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise ValueError(f"checkpoint.keep_last must be an integer >= 1 or null: {keep_last}")
        if verify_key is None and signing_key is None:
            raise ValueError("a checkpoint store needs a signing key or a verify key")
        self.directory = Path(directory)
        self.signing_key = signing_key
        self.verify_key = verify_key or (signing_key.public_key() if signing_key else None)
        self.keep_last = keep_last

    # ------------------------------------------------------------------ write
    def save(
        self,
        server_round: int,
        arrays: dict[str, np.ndarray],
        state: dict[str, Any],
        tensors: dict[str, np.ndarray] | None = None,
        *,
        protect: frozenset[int] = frozenset(),
    ) -> Checkpoint:
        """Write round ``server_round`` atomically and sign it; prune old rounds."""
        if self.signing_key is None:
            raise CheckpointError("this checkpoint store has no signing key: it cannot save")
        if not isinstance(server_round, int) or server_round < 0:
            raise ValueError(f"server_round must be an integer >= 0, got {server_round!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        blobs = {
            "model.npz": _npz(arrays),
            "state.npz": _npz(tensors or {}),
            "state.json": json.dumps(state, sort_keys=True, allow_nan=True).encode(),
        }
        manifest = {
            "format": FORMAT,
            "round": server_round,
            "fl_ext_version": __version__,
            "schema_hash": schema_hash(arrays),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()},
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, indent=1).encode()
        signature = sign_bytes(self.signing_key, manifest_bytes).hex()
        blobs["manifest.json"] = manifest_bytes
        blobs["manifest.sig"] = signature.encode()
        final = self.directory / f"round-{server_round:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".round-{server_round:06d}-", dir=self.directory))
        try:
            for name, data in blobs.items():
                _write_synced(tmp / name, data)
            if final.exists():  # the same round again (a resumed run redoing it): replace
                shutil.rmtree(final)
            tmp.rename(final)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(protect | {server_round})
        return Checkpoint(
            server_round,
            OrderedDict((k, np.asarray(v)) for k, v in arrays.items()),
            state,
            dict(tensors or {}),
            final,
            signature,
        )

    def _prune(self, protect: frozenset[int]) -> None:
        if self.keep_last is None:
            return
        rounds = self.rounds()
        for r in rounds[: max(len(rounds) - self.keep_last, 0)]:
            if r not in protect:
                shutil.rmtree(self.directory / f"round-{r:06d}", ignore_errors=True)

    # ------------------------------------------------------------------- read
    def rounds(self) -> list[int]:
        """Completed rounds on disk, ascending (temporary directories are ignored)."""
        if not self.directory.is_dir():
            return []
        found = (_ROUND_DIR.match(p.name) for p in self.directory.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> int | None:
        """The last completed round, or None for an empty directory."""
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    def load(self, server_round: int | None = None) -> Checkpoint:
        """Verify and read ``server_round`` (default: the latest)."""
        if self.verify_key is None:  # pragma: no cover - the constructor guarantees one
            raise CheckpointError("no verify key")
        if server_round is None:
            server_round = self.latest()
            if server_round is None:
                raise CheckpointError(f"no checkpoint in {self.directory}")
        path = self.directory / f"round-{server_round:06d}"
        if not path.is_dir():
            raise CheckpointError(
                f"no checkpoint for round {server_round} in {self.directory} "
                f"(rounds present: {self.rounds() or 'none'})"
            )
        manifest_bytes = _read(path / "manifest.json")
        sig_file = path / "manifest.sig"
        if not sig_file.exists():
            raise CheckpointError(f"{path} is unsigned (manifest.sig missing): refused")
        try:
            signature = bytes.fromhex(sig_file.read_text().strip())
            verify_bytes(self.verify_key, manifest_bytes, signature)
        except (ValueError, SignatureError) as err:
            raise CheckpointError(f"{path}: bad signature, refused ({err})") from err
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != FORMAT or manifest.get("round") != server_round:
            raise CheckpointError(
                f"{path}: manifest says format {manifest.get('format')!r} round "
                f"{manifest.get('round')!r}, expected {FORMAT!r} round {server_round}"
            )
        blobs = {}
        for name in _FILES:
            data = _read(path / name)
            if hashlib.sha256(data).hexdigest() != manifest["files"].get(name):
                raise CheckpointError(f"{path / name} does not match its signed hash: tampered")
            blobs[name] = data
        arrays = _load_npz(blobs["model.npz"])
        if schema_hash(arrays) != manifest["schema_hash"]:  # pragma: no cover - hash-covered
            raise CheckpointError(f"{path}: model schema differs from the manifest")
        return Checkpoint(
            server_round,
            arrays,
            json.loads(blobs["state.json"]),
            dict(_load_npz(blobs["state.npz"])),
            path,
            signature.hex(),
        )


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    named: dict[str, Any] = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    np.savez(buffer, **named)
    return buffer.getvalue()


def _load_npz(data: bytes) -> OrderedDict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return OrderedDict((k, npz[k]) for k in npz.files)


def _read(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    return path.read_bytes()


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
