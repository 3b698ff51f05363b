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
from collections.abc import Sequence

from .._files import fsync_dir

ENV_VAR = "UNICORNN_DATA"
"""Environment variable that overrides the default data directory."""

DEFAULT_ROOT = pathlib.Path("~/.cache/unicornn")
"""Default data directory (``~`` expanded at call time)."""

_CHUNK = 1 << 20
_log = logging.getLogger(__name__)
_USER_AGENT = "unicornn-data-fetch/1"


class DataUnavailableError(RuntimeError):
    """A data file is missing and cannot be downloaded, or is present but corrupt.

    The message names the file, where to get it, and the directory to put it in; it is meant to be shown
    to the user as is (no traceback).
    """


class ChecksumError(DataUnavailableError):
    """A file's checksum differs from the expected one (the message gives both digests)."""


def raise_collected(errors: Sequence[DataUnavailableError]) -> None:
    """Raise one error for the files of ``errors`` (nothing if empty), all on one line.

    Its type is :class:`ChecksumError` if any file was corrupt, else :class:`DataUnavailableError`; each
    file's own message (which names the file, its URL, its checksum and the directory) is kept.
    """
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
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


def _describe(err: BaseException) -> str:
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
                failures.append(f"{url} ({_describe(err)})")
                _log.info("download of %s failed: %s", url, _describe(err))
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

    hint = ", ".join(f"{k} {v}" for k, v in expected.items())
    hint = f" (expected {hint})" if hint else ""
    if mismatches:
        raise ChecksumError(
            f"checksum mismatch downloading {dest.name}: " + "; ".join(mismatches) + ". Nothing was saved. "
            f"Download {dest.name} by hand from a trusted source{hint} and put it in {directory}."
        )
    raise DataUnavailableError(
        f"{dest.name} is not in {directory} and could not be downloaded: tried " + "; ".join(failures) + ". "
        f"Download it by hand from {urls[0]}{hint} and put it in {directory} "
        f"(or point {ENV_VAR} / the data-directory option at a directory that holds it)."
    )
