"""Thumbnails of indexed files for the search page: made on demand, kept in a memory LRU.

Only files that the catalog holds as indexed *and* that lie inside the daemon's roots, by their path
as indexed and by their real path (symlinks resolved), are ever opened; the file actually opened is
checked again through ``/proc/self/fd``, so a symlink swapped in between the check and the open is
caught too. Everything else is refused before a byte is read.

Why memory and not the data dir: a thumbnail costs ~10 KB and 10-30 ms to make, a bounded LRU
(32 MiB: ~3,000 thumbnails) needs no clean-up, never outlives the file it shows, and leaves no
copies of private pictures on disk.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from imgwatch.report import display_path, thumbnail_jpeg
from imgwatch.services.abc import Catalog, FileRecord, FileState

#: Default bound of the cache, in bytes of JPEG data.
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024


class ThumbnailNotFoundError(Exception):
    """Not an indexed file, or gone from disk (HTTP 404)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not an indexed file")


class ThumbnailForbiddenError(Exception):
    """A path outside every root (HTTP 403)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{display_path(path)} is outside the watched roots")


class ThumbnailUnavailableError(Exception):
    """An indexed file that cannot be shown now: unreadable, changed, not decodable (HTTP 404)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"no thumbnail: {reason}")


class ThumbnailCache:
    """A thread-safe LRU of thumbnails, bounded by the bytes it holds."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, str | None], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: tuple[int, str | None]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[int, str | None], data: bytes) -> None:
        if len(data) > self._max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self._max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)


def _inside(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return directory in (path, "/") or path.startswith(directory + "/")


class Thumbnails:
    """Thumbnails by catalog id or by path, never of a file outside ``roots``."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        roots: Sequence[str],
        max_file_bytes: int,
        cache: ThumbnailCache | None = None,
    ) -> None:
        # A callable, not a catalog: the daemon's serving context may be swapped by a reindex.
        self._catalog = catalog
        self._roots = [(os.path.normpath(r), os.path.realpath(r)) for r in roots]
        self._max_file_bytes = max_file_bytes
        self.cache = cache or ThumbnailCache()

    def by_id(self, file_id: int) -> bytes:
        record = self._catalog().get_many([file_id]).get(file_id)
        if record is None or record.state is not FileState.INDEXED:
            raise ThumbnailNotFoundError(f"id {file_id}")
        self._check_inside(record.path)
        return self._thumbnail(record)

    def by_path(self, path: str) -> bytes:
        """``path`` must be absolute; ``..`` is resolved lexically first and then checked like any path."""
        if "\0" in path or not path.startswith("/"):
            raise ThumbnailForbiddenError(path)
        normal = os.path.normpath(path)
        # The roots first: a path outside them is refused without telling whether it is indexed.
        self._check_inside(normal)
        record = self._catalog().get(normal)
        if record is None or record.state is not FileState.INDEXED:
            raise ThumbnailNotFoundError(repr(normal))
        return self._thumbnail(record)

    def _check_inside(self, path: str) -> None:
        real = os.path.realpath(path)
        if not any(_inside(path, lexical) and _inside(real, resolved) for lexical, resolved in self._roots):
            raise ThumbnailForbiddenError(path)

    def _thumbnail(self, record: FileRecord) -> bytes:
        key = (record.id, record.content_hash)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        data = self._read(record.path)
        try:
            jpeg = thumbnail_jpeg(data)
        except Exception as e:  # noqa: BLE001 - hostile files make Pillow raise anything
            raise ThumbnailUnavailableError(f"cannot decode the image ({type(e).__name__})") from None
        self.cache.put(key, jpeg)
        return jpeg

    def _read(self, path: str) -> bytes:
        real = os.path.realpath(path)
        try:
            # O_NOFOLLOW on the resolved path: a symlink put there since realpath() is not followed.
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ThumbnailUnavailableError(e.strerror or type(e).__name__) from None
        try:
            opened = _opened_path(fd)
            if opened is not None and not any(_inside(opened, resolved) for _, resolved in self._roots):
                # A directory on the way was swapped for a symlink between the check and the open.
                raise ThumbnailForbiddenError(path)
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ThumbnailUnavailableError("not a regular file")
            if info.st_size > self._max_file_bytes:
                raise ThumbnailUnavailableError("file is over max_file_bytes")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(self._max_file_bytes)
        except OSError as e:
            raise ThumbnailUnavailableError(e.strerror or type(e).__name__) from None
        finally:
            os.close(fd)


def _opened_path(fd: int) -> str | None:
    """The real path of the file open as ``fd`` (Linux), or None where /proc cannot tell."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("/") else None
