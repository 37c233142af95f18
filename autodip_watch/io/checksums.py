"""SHA-256 of files: what says that two versions of a raw file hold the same content.

The one implementation for jobs (the watcher's content key), outputs (the provenance
records each source file's hash), calibration (pair and sidecar identities) and the
nearest-image sidecar check. Files are read in chunks, so inputs larger than memory are
fine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

#: Bytes read at a time.
CHUNK_BYTES = 1 << 22


def sha256_file(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """SHA-256 of a file, read in chunks (inputs can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(paths: Sequence[Path], chunk: int = CHUNK_BYTES) -> tuple[str, list[dict]]:
    """One read of every file: the SHA-256 of all of them together (the job's content
    key) and each file's own ``{"file", "path", "size", "sha256"}`` (what an output's
    provenance records, so whether it is current can be told without reading again)."""
    combined = hashlib.sha256()
    each = []
    for path in paths:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                combined.update(block)
                digest.update(block)
                size += len(block)
        each.append({"file": path.name, "path": str(path), "size": size,
                     "sha256": digest.hexdigest()})
    return combined.hexdigest(), each
