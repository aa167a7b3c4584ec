"""Opening dataset files: plain or compressed (gzip, bz2, xz, zstd), with one-line reasons.

``compression: auto`` (the registry default) reads the file name's extension (``.gz``/``.gzip``,
``.bz2``, ``.xz``/``.lzma``, ``.zst``/``.zstd``) and, when it names none, the file's first bytes
(each of those formats starts with a fixed magic number that no text file starts with).
``none`` reads the bytes as they are. gzip, bz2 and xz use the standard library; zstd the
``zstandard`` package (``pip install 'mdp-streaming[zstd]'``). Multi-member files
(``cat a.gz b.gz``, ``pzstd``) are read whole.

Everything that makes a file unreadable -- missing, not permitted, a corrupt or truncated
compressed stream, a compressed file that is not what its extension says, text that is not
UTF-8, an archive (zip) -- is one :class:`~market_data_core.errors.ConfigError` naming the file
and why (the CLI prints it as one line and exits 2).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

from market_data_core.errors import ConfigError

__all__ = [
    "COMPRESSIONS",
    "Compression",
    "compression_of",
    "open_binary",
    "unreadable",
]

Compression = Literal["auto", "none", "gzip", "bz2", "xz", "zstd"]
COMPRESSIONS: tuple[str, ...] = ("gzip", "bz2", "xz", "zstd")

_EXTENSIONS = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".bz2": "bz2",
    ".xz": "xz",
    ".lzma": "xz",
    ".zst": "zstd",
    ".zstd": "zstd",
}
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_NOT_READ = ((b"PK\x03\x04", "a zip archive (unzip it first)"),)
_CHUNK = 1 << 16


def _magic(head: bytes) -> str | None:
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def compression_of(path: Path, declared: Compression = "auto") -> str:
    """``gzip``, ``bz2``, ``xz``, ``zstd`` or ``none`` for ``path`` (see module doc).

    Raises ``ConfigError`` when the file cannot be opened or is an archive mdp does not read.
    """
    if declared != "auto":
        return declared
    by_name = _EXTENSIONS.get(path.suffix.lower())
    if by_name is not None:
        return by_name
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise unreadable(path, exc) from None
    for magic, what in _NOT_READ:
        if head.startswith(magic):
            raise ConfigError(f"cannot read dataset file {path}: it is {what}")
    return _magic(head) or "none"


class _ZstdReader(io.RawIOBase):
    """A zstd stream as a raw binary file; a truncated stream raises ``EOFError`` at its end
    (``zstandard``'s own stream reader ends quietly there)."""

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._pending = b""
        self._pos = 0
        self._started = False  # inside a frame: the file must not end here

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._pos >= len(self._pending):
            chunk = self._raw.read(_CHUNK)
            if not chunk:
                if self._started and not self._obj.eof:
                    raise EOFError(
                        "compressed file ended before the end-of-stream marker was reached"
                    )
                return 0
            self._started = True
            out = self._obj.decompress(chunk)
            while self._obj.eof and self._obj.unused_data:  # a multi-frame file: next frame
                rest = self._obj.unused_data
                self._obj = self._new()
                out += self._obj.decompress(rest)
            if self._obj.eof:
                self._obj, self._started = self._new(), False
            self._pending, self._pos = out, 0
        n = min(len(view), len(self._pending) - self._pos)
        view[:n] = self._pending[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _zstd(path: Path) -> io.BufferedIOBase:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"cannot read dataset file {path}: reading zstd needs zstandard: "
            "pip install 'mdp-streaming[zstd]'"
        ) from None
    return io.BufferedReader(_ZstdReader(path.open("rb")), _CHUNK)


def _plain(path: Path) -> io.BufferedIOBase:
    return path.open("rb")


_OPENERS: dict[str, Callable[[Path], io.BufferedIOBase]] = {
    "gzip": lambda path: gzip.GzipFile(path, "rb"),
    "bz2": lambda path: bz2.BZ2File(path, "rb"),
    "xz": lambda path: lzma.LZMAFile(path, "rb"),  # noqa: SIM115 - closed by open_binary
    "zstd": _zstd,
}


def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, lzma.LZMAError]
    with contextlib.suppress(ImportError):
        import zstandard

        errors.append(zstandard.ZstdError)
    return tuple(errors)


def unreadable(path: Path, exc: BaseException, compression: str = "none") -> ConfigError:
    """The one-line ``ConfigError`` for a file that failed while being opened or read."""
    if isinstance(exc, FileNotFoundError):
        why = "no such file"
    elif isinstance(exc, PermissionError):
        why = "permission denied"
    elif isinstance(exc, IsADirectoryError):
        why = "it is a directory"
    elif isinstance(exc, UnicodeDecodeError):
        why = f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start} of a line)"
    elif compression != "none":
        text = str(exc) or type(exc).__name__
        why = f"not a readable {compression} stream ({text})"
    else:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return ConfigError(f"cannot read dataset file {path}: {why}")


@contextlib.contextmanager
def open_binary(path: Path, declared: Compression = "auto") -> Iterator[io.BufferedIOBase]:
    """The file's decompressed bytes, a binary file object that iterates by line.

    Raises ``ConfigError`` (one line naming the file and why) if it cannot be opened, and,
    from inside the ``with`` block, if its compressed stream turns out corrupt or truncated.
    """
    compression = compression_of(path, declared)
    opener = _OPENERS.get(compression, _plain)
    try:
        f = opener(path)
    except OSError as exc:
        raise unreadable(path, exc) from None
    try:
        with f:
            yield f
    except _decompression_errors() as exc:
        raise unreadable(path, exc, compression) from None
