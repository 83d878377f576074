"""Walk an archive: a folder, a ``.zip``, a ``.tar(.gz|.bz2|.xz)`` or an fsspec URL.

Files are yielded one at a time with their bytes, in a deterministic order, so ingestion streams:
memory holds one file at a time, however large the archive. Tar archives are read as streams (no
seeking), which also works for compressed tars on object stores.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass
class SourceFile:
    """One file of the archive: its path inside the archive (POSIX), size and bytes."""

    relpath: str
    size: int
    read: Callable[[], bytes]


class SourceError(ValueError):
    """The archive itself cannot be opened; the message names it and the fix."""


def _is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def _iter_zip(fileobj, label: str, want: Callable[[str], bool]) -> Iterator[SourceFile]:
    try:
        zf = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{label}: not a readable zip archive ({exc}); check the download") from exc
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or not want(info.filename):
                continue
            yield SourceFile(info.filename, info.file_size, lambda info=info: zf.read(info))


def _iter_tar(fileobj, label: str, want: Callable[[str], bool]) -> Iterator[SourceFile]:
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|*")
    except tarfile.TarError as exc:
        raise SourceError(f"{label}: not a readable tar archive ({exc}); check the download") from exc
    with tf:
        try:
            for member in tf:
                if not member.isfile() or not want(member.name):
                    continue
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                yield SourceFile(member.name.lstrip("./") or member.name, member.size, lambda data=data: data)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise SourceError(f"{label}: tar archive is truncated or corrupt ({exc}); files before the damage "
                              "were read, re-create the archive to read the rest") from exc


def _walk_sorted(folder: str, prefix: str) -> Iterator[tuple[str, str]]:
    """``(relative path, full path)`` of every file under ``folder`` in sorted relative-path order, one
    directory listing at a time (memory bounded by the widest folder, not by the archive). Among the entries
    of one folder a subfolder sorts as its name + "/", which is where every path below it sorts."""
    with os.scandir(folder) as it:
        # a link to a folder is not followed (as os.walk does not), so a link loop cannot trap the walk
        entries = sorted((e.name + "/" if e.is_dir() else e.name, e.path) for e in it
                         if not (e.is_symlink() and e.is_dir()))
    for key, full in entries:
        if key.endswith("/"):
            yield from _walk_sorted(full, prefix + key)
        else:
            yield prefix + key, full


def iter_source(source: str | os.PathLike, want: Callable[[str], bool] = lambda _n: True) -> Iterator[SourceFile]:
    """Yield every file of ``source`` whose relative path passes ``want``.

    Folders and zips are walked in sorted path order; tars in member order (streaming).
    """
    src = str(source)
    if "://" in src and not src.startswith("file://"):
        fs, root = fsspec.core.url_to_fs(src)
        if fs.isdir(root):
            for path in sorted(fs.find(root)):
                rel = str(PurePosixPath(path).relative_to(PurePosixPath(root)))
                if want(rel):
                    yield SourceFile(rel, int(fs.size(path) or 0), lambda path=path: fs.cat_file(path))
            return
        if not fs.exists(root):
            raise SourceError(f"{src}: no such archive; check the URL")
        with fs.open(root, "rb") as fh:
            data = io.BytesIO(fh.read()) if not _is_tar(root) else fh
            if root.lower().endswith(".zip"):
                yield from _iter_zip(data, src, want)
            elif _is_tar(root):
                yield from _iter_tar(fh, src, want)
            else:
                raise SourceError(f"{src}: expected a folder, a .zip or a .tar(.gz) archive")
        return
    path = Path(src[len("file://"):] if src.startswith("file://") else src)
    if not path.exists():
        raise SourceError(f"{path}: no such folder or archive; check the path")
    if path.is_dir():
        for rel, full in _walk_sorted(str(path), ""):
            if want(rel):
                yield SourceFile(rel, os.stat(full).st_size, lambda full=full: Path(full).read_bytes())
        return
    if path.suffix.lower() == ".zip":
        with open(path, "rb") as fh:
            yield from _iter_zip(fh, str(path), want)
        return
    if _is_tar(path.name):
        with open(path, "rb") as fh:
            yield from _iter_tar(fh, str(path), want)
        return
    raise SourceError(f"{path}: expected a folder, a .zip or a .tar(.gz) archive, or an fsspec URL")
