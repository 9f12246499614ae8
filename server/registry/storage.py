"""Artifacts on disk: staged uploads (content-addressed) and one immutable folder per version.

Layout under the data folder::

    uploads/<sha256>.safetensors          weights received (kept: any number of versions may
                                          publish the same upload, concurrently)
    models/<version>/model.safetensors    published weights (a hard link to the upload, or a
                                          copy where links are not possible)

The signed manifest and its signature have one home, the database (see ``publish``);
:meth:`ArtifactStore.check_version` is the start-up check that the files agree with it.
Every file is written to a temporary name and renamed into place, and a version folder is
assembled under a temporary name and renamed whole, so a crash never leaves a half version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from safetensors import SafetensorError, safe_open

from semiofed.shared.errors import SemioFedError
from semiofed.shared.manifest import SHA256_RE, VERSION_RE
from semiofed.shared.model_folder import WEIGHTS_FILE as WEIGHTS


class UploadTooLarge(SemioFedError):
    """An upload exceeded the configured size limit."""


class NotSafetensors(SemioFedError):
    """Uploaded bytes are not a readable safetensors file."""


def check_safetensors(path: Path) -> int:
    """Number of tensors in a safetensors file; :class:`NotSafetensors` if unreadable."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return len(list(fh.keys()))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NotSafetensors(f"{path.name}: not a valid safetensors file ({exc})") from None


class ArtifactStore:
    """The registry's files under ``root``."""

    def __init__(self, root: str | Path, max_upload_bytes: int = 4 << 30) -> None:
        self.root = Path(root)
        self.max_upload_bytes = max_upload_bytes
        self.uploads = self.root / "uploads"
        self.models = self.root / "models"
        for folder in (self.uploads, self.models):
            folder.mkdir(parents=True, exist_ok=True)

    def staged(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise SemioFedError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.uploads / f"{sha256}.safetensors"

    def new_upload(self) -> Path:
        """A fresh temporary file for an incoming upload (pass it to :meth:`adopt`)."""
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=self.uploads)
        os.close(fd)
        return Path(tmp)

    def check_size(self, size: int) -> None:
        if size > self.max_upload_bytes:
            raise UploadTooLarge(
                f"upload exceeds the registry's limit of {self.max_upload_bytes} bytes"
            )

    def adopt(self, tmp: Path) -> tuple[str, int]:
        """Validate a finished upload and stage it under its SHA-256; return (sha256, size)."""
        try:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            check_safetensors(tmp)
            sha = hashlib.sha256()
            with open(tmp, "rb") as fh:
                while block := fh.read(1 << 20):
                    sha.update(block)
            size = tmp.stat().st_size
            os.replace(tmp, self.staged(sha.hexdigest()))
            return sha.hexdigest(), size
        finally:
            tmp.unlink(missing_ok=True)

    def stage(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Store uploaded weights; return their SHA-256 and size. Rejects non-safetensors."""
        tmp, size = self.new_upload(), 0
        try:
            with open(tmp, "wb") as fh:
                for chunk in chunks:
                    size += len(chunk)
                    self.check_size(size)
                    fh.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.adopt(tmp)

    def version_dir(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise SemioFedError(f"invalid version name {version!r}")
        return self.models / version

    def weights(self, version: str) -> Path:
        return self.version_dir(version) / WEIGHTS

    def install(self, version: str, weights_sha256: str) -> Path:
        """Link the staged weights into ``models/<version>/``; the upload stays staged."""
        final = self.version_dir(version)
        if final.exists():  # orphan of an interrupted publication: the database has no such version
            shutil.rmtree(final)
        staged = self.staged(weights_sha256)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.models))
        try:
            try:
                os.link(staged, tmp / WEIGHTS)
            except FileNotFoundError:
                raise SemioFedError(f"no uploaded weights with SHA-256 {weights_sha256}") from None
            except OSError:  # a file system without hard links
                shutil.copyfile(staged, tmp / WEIGHTS)
                with open(tmp / WEIGHTS, "rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return final

    def check_version(self, version: str, size: int) -> str | None:
        """What is wrong with ``version``'s files for a database row of ``size`` bytes, or None."""
        path = self.weights(version)
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != size:
            return f"{path}: {path.stat().st_size} bytes, the database says {size}"
        return None
