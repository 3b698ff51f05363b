"""Data cache and checksum-verified, atomic downloads (standard library only).

Where data live (:func:`data_root`): an explicit ``data_dir`` wins, then the ``UNICORNN_DATA`` environment
variable, then ``~/.cache/unicornn``. A file is fetched by :func:`fetch`: it is streamed into a temporary
``<dest>.part-<random>`` beside the destination, flushed to disk, verified, and only then renamed onto the
destination with :func:`os.replace`, so the destination is either absent or complete and verified. Whatever
goes wrong (network error, short body, bad checksum, Ctrl-C), the temporary file is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pathlib
import secrets
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .._files import fsync_dir

ENV_VAR = "UNICORNN_DATA"
"""Environment variable that overrides the default data directory."""

DEFAULT_ROOT = pathlib.Path("~/.cache/unicornn")
"""Default data directory (``~`` expanded at call time)."""

_CHUNK = 1 << 20
_log = logging.getLogger(__name__)
_USER_AGENT = "unicornn-data-fetch/1"


@dataclass(frozen=True)
class MissingFile:
    """A data file that is absent and could not be downloaded: where to get it by hand and how to check it."""

    name: str
    url: str
    checksum: str  # e.g. "md5 0123...", or where the checksum is published
    directory: pathlib.Path
    reason: str  # why the download failed (the last mirror's error)

    def line(self) -> str:
        return f"  {self.name}  {self.url}  {self.checksum}"


def missing_text(missing: Sequence[MissingFile]) -> str:
    """The message for files that are absent and could not be downloaded: a header, one short line per file
    (name, URL, checksum), and one line saying where to put them (the folder, ``--data-dir``, ``UNICORNN_DATA``)."""
    them = "it" if len(missing) == 1 else "them"
    folders = ", ".join(dict.fromkeys(str(m.directory) for m in missing))
    return "\n".join([
        f"{len(missing)} data file{'s' * (len(missing) > 1)} missing ({missing[-1].reason}); get {them} by hand:",
        *(m.line() for m in missing),
        f"put {them} in {folders}, or point --data-dir (data_dir=) or {ENV_VAR} at a data folder that holds {them}",
    ])  # fmt: skip


#: What reading a damaged zip archive raises: a bad header, truncated or corrupt deflate data, flag bits zipfile
#: does not support (encryption, patched data), or text that does not decode.
DAMAGED_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError,
                      UnicodeDecodeError)  # fmt: skip


class DataUnavailableError(RuntimeError):
    """A data file is missing and cannot be downloaded, or is present but corrupt.

    The message names the file, where to get it, and the directory to put it in; it is meant to be shown
    to the user as is (no traceback). ``missing``: the absent files (:class:`MissingFile`), whose message
    :func:`missing_text` writes when no other message is given.
    """

    def __init__(self, message: str = "", missing: Sequence[MissingFile] = ()) -> None:
        self.missing = tuple(missing)
        super().__init__(message or missing_text(self.missing))


class ChecksumError(DataUnavailableError):
    """A file's checksum differs from the expected one (the message gives both digests)."""


def raise_collected(errors: Sequence[DataUnavailableError]) -> None:
    """Raise one error for the files of ``errors`` (nothing if empty).

    Absent files only: one :class:`DataUnavailableError` listing them all (:func:`missing_text`). Otherwise
    its type is :class:`ChecksumError` if any file was corrupt, else :class:`DataUnavailableError`, and each
    file's own message is kept, on one line.
    """
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    if all(e.missing and type(e) is DataUnavailableError for e in errors):
        raise DataUnavailableError(missing=[m for e in errors for m in e.missing])
    kind = ChecksumError if any(isinstance(e, ChecksumError) for e in errors) else DataUnavailableError
    raise kind(" ".join(" ".join(str(e).split("\n")) for e in errors))


def data_root(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Directory holding downloaded data: ``data_dir``, else ``$UNICORNN_DATA``, else ``~/.cache/unicornn``.

    The directory is not created here.
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path or None, got {type(data_dir).__name__}")
        return pathlib.Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return pathlib.Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of the file at ``path`` with ``algorithm`` (``"sha256"`` or ``"md5"``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    out = {}
    for name, value, length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a hex string or None, got {type(value).__name__}")
        value = value.strip().lower()
        if len(value) != length or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"{name} must be {length} hex digits, got {value!r}")
        out[name] = value
    return out


def _mismatch(path: pathlib.Path, expected: dict[str, str]) -> str | None:
    """None if ``path`` matches every expected digest, else a sentence describing the first mismatch."""
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want:
            return f"{algorithm} {got}, expected {want}"
    return None


def verify(path: str | os.PathLike, sha256: str | None = None, md5: str | None = None) -> None:
    """Raise :class:`ChecksumError` if the file at ``path`` does not match the given digests."""
    path = pathlib.Path(path)
    problem = _mismatch(path, _expected(sha256, md5))
    if problem is not None:
        raise ChecksumError(
            f"checksum mismatch for {path.name} in {path.parent}: {problem}. The file is corrupt or not the "
            f"expected one; delete {path} and run again (or replace it with a verified copy)."
        )


def _download(url: str, part: pathlib.Path, timeout: float) -> None:
    """Stream ``url`` into ``part``; raise OSError on any network failure or short body."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected_length = int(length) if length is not None and length.isdigit() else None
            received = 0
            with open(part, "wb") as f:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                f.flush()
                os.fsync(f.fileno())
    except http.client.HTTPException as err:  # e.g. IncompleteRead, RemoteDisconnected is an OSError already
        raise OSError(f"{type(err).__name__}: {err}") from err
    if expected_length is not None and received != expected_length:
        raise OSError(f"download interrupted: received {received} of {expected_length} bytes")


def describe_error(err: BaseException) -> str:
    """A network error in a few words (``HTTP 404 Not Found``, the reason of a URLError, ...)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def fetch(
    urls: str | Sequence[str],
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Make sure ``dest`` exists with the given checksum(s), downloading it from ``urls`` (mirrors, in order).

    A ``dest`` already present is verified and used without any download; a present file with a wrong
    checksum raises :class:`ChecksumError` (it is never silently used nor deleted). A download is written
    to ``<dest>.part-<random>``, fsynced, verified, then renamed onto ``dest``. A mirror that fails
    (network error, interrupted body, wrong checksum) is skipped for the next one. Raises
    :class:`ChecksumError` if some mirror delivered a file with the wrong checksum and none a correct one,
    :class:`DataUnavailableError` if no mirror could be reached. Returns ``dest`` as a :class:`pathlib.Path`.
    """
    if isinstance(urls, str):
        urls = [urls]
    urls = list(urls)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise ValueError(f"urls must be a non-empty URL string or list of URL strings, got {urls!r}")
    if not isinstance(dest, (str, os.PathLike)):
        raise TypeError(f"dest must be a path, got {type(dest).__name__}")
    dest = pathlib.Path(dest).expanduser()
    expected = _expected(sha256, md5)

    if dest.is_file():
        verify(dest, sha256, md5)
        return dest

    directory = dest.parent
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # removed again on failure
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataUnavailableError(
            f"cannot create the data directory {directory} for {dest.name}: {err}. Choose another directory "
            f"(set {ENV_VAR} or pass a data directory)."
        ) from err

    failures: list[str] = []
    mismatches: list[str] = []
    for url in urls:
        part = directory / f"{dest.name}.part-{secrets.token_hex(6)}"
        try:
            _log.info("downloading %s to %s", url, dest)
            try:
                _download(url, part, timeout)
            except OSError as err:  # URLError and HTTPError are OSErrors
                failures.append(f"{url} ({describe_error(err)})")
                _log.info("download of %s failed: %s", url, describe_error(err))
                continue
            problem = _mismatch(part, expected)
            if problem is not None:
                mismatches.append(f"{url} gave {problem}")
                _log.warning("checksum mismatch for %s from %s: %s", dest.name, url, problem)
                continue
            os.replace(part, dest)
            fsync_dir(directory)
            return dest
        finally:
            part.unlink(missing_ok=True)

    for d in created:  # no empty data folder is left behind (deepest first; stop at one that holds something)
        try:
            d.rmdir()
        except OSError:
            break
    hint = ", ".join(f"{k} {v}" for k, v in expected.items())
    hint = f" (expected {hint})" if hint else ""
    if mismatches:
        raise ChecksumError(
            f"checksum mismatch downloading {dest.name}: " + "; ".join(mismatches) + ". Nothing was saved. "
            f"Download {dest.name} by hand from a trusted source{hint} and put it in {directory}."
        )
    _log.info("could not download %s: tried %s", dest.name, "; ".join(failures))
    checksum = f"md5 {expected['md5']}" if "md5" in expected else " ".join(next(iter(expected.items()), ()))
    reason = failures[-1].split(" (", 1)[1][:-1] if failures else "no mirror"
    raise DataUnavailableError(
        missing=[MissingFile(dest.name, urls[0], checksum or "no checksum", directory, reason)]
    )
