"""File digests: the sha256 that checks downloaded data and every file of a bundle.

Shared by ``model_store.data`` (the MovieLens files) and ``model_store.bundle`` (manifest
hashes), so it sits below both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in chunks (bundles hold large weight files)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
