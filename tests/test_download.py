"""Downloader: local HTTP server on 127.0.0.1 and monkeypatching only; never the real network."""

import hashlib
import http.server
import pathlib
import socket
import threading

import pytest
from helpers import assert_missing_data_message

from unicornn.tasks import download
from unicornn.tasks.download import ChecksumError, DataUnavailableError, data_root, fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several read chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: dict  # set per server

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path.startswith("/ok/"):
            body, declared = PAYLOAD, len(PAYLOAD)
        elif self.path.startswith("/corrupt/"):
            body = bytearray(PAYLOAD)
            body[1000] ^= 0xFF
            body, declared = bytes(body), len(PAYLOAD)
        elif self.path.startswith("/short/"):  # closes mid-body: fewer bytes than Content-Length
            body, declared = PAYLOAD[: len(PAYLOAD) // 3], len(PAYLOAD)
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Local requests must not go through a proxy configured in the environment."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    """Base URL of a local HTTP server and its per-path hit counter."""
    hits: dict = {}
    handler = type("Handler", (_Handler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    """URL of a local port nobody listens on (connection refused: offline)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def listing(directory: pathlib.Path):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("UNICORNN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == tmp_path / "home" / ".cache" / "unicornn"
    monkeypatch.setenv("UNICORNN_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_root(str(tmp_path / "s")) == tmp_path / "s"
    with pytest.raises(TypeError, match="data_dir"):
        data_root(3)


def test_success_then_cached(server, tmp_path):
    base, hits = server
    dest = tmp_path / "cache" / "file.bin"
    assert fetch(f"{base}/ok/file.bin", dest, sha256=SHA, md5=MD5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert listing(dest.parent) == ["file.bin"]
    assert hits == {"/ok/file.bin": 1}
    # present with the right checksum: not downloaded again
    fetch(f"{base}/ok/file.bin", dest, sha256=SHA)
    assert hits == {"/ok/file.bin": 1}


def test_mirrors_tried_in_order(server, tmp_path, closed_port_url):
    base, hits = server
    dest = tmp_path / "file.bin"
    urls = [closed_port_url, f"{base}/missing/file.bin", f"{base}/short/file.bin", f"{base}/ok/file.bin"]
    fetch(urls, dest, md5=MD5)
    assert dest.read_bytes() == PAYLOAD
    assert hits == {"/missing/file.bin": 1, "/short/file.bin": 1, "/ok/file.bin": 1}
    assert listing(tmp_path) == ["file.bin"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(ChecksumError) as info:
        fetch(f"{base}/corrupt/file.bin", dest, sha256=SHA)
    msg = str(info.value)
    assert "file.bin" in msg and SHA in msg and str(dest.parent) in msg
    bad = bytearray(PAYLOAD)
    bad[1000] ^= 0xFF
    assert hashlib.sha256(bad).hexdigest() in msg
    assert listing(dest.parent) == []
    assert isinstance(info.value, DataUnavailableError)  # shown to the user like a missing file


def test_interrupted_download_leaves_nothing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "file.bin"
    with pytest.raises(DataUnavailableError, match="interrupted: received 349525 of 1048576 bytes"):
        fetch(f"{base}/short/file.bin", dest, sha256=SHA)
    assert listing(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(monkeypatch, tmp_path):
    class Response:
        headers = {"Content-Length": str(len(PAYLOAD))}
        calls = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            Response.calls += 1
            if Response.calls > 1:
                raise KeyboardInterrupt
            return PAYLOAD[:n]

    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(KeyboardInterrupt):
        fetch("http://example.invalid/file.bin", tmp_path / "file.bin", sha256=SHA)
    assert Response.calls == 2
    assert listing(tmp_path) == []


def test_offline_message(tmp_path, closed_port_url):
    dest = tmp_path / "cache" / "file.bin"
    urls = [closed_port_url, closed_port_url.replace("file.bin", "mirror2/file.bin")]
    with pytest.raises(DataUnavailableError) as info:
        fetch(urls, dest, sha256=SHA, timeout=5)
    assert not isinstance(info.value, ChecksumError)
    msg = str(info.value)
    assert "file.bin" in msg and str(dest.parent) in msg and SHA in msg and urls[0] in msg
    assert info.value.missing[0].url == urls[0] and info.value.missing[0].directory == dest.parent
    assert_missing_data_message(msg, [("file.bin", urls[0], f"sha256 {SHA}")], dest.parent)
    assert not dest.parent.exists()  # the folder it created for the download is removed again


def test_present_file_with_wrong_checksum_is_an_error(server, tmp_path):
    base, hits = server
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"not the file")
    with pytest.raises(ChecksumError, match="checksum mismatch for file.bin") as info:
        fetch(f"{base}/ok/file.bin", dest, md5=MD5)
    assert MD5 in str(info.value) and hashlib.md5(b"not the file").hexdigest() in str(info.value)
    assert dest.read_bytes() == b"not the file"  # not silently replaced or deleted
    assert hits == {}


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="urls"):
        fetch([], tmp_path / "x")
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        fetch("http://127.0.0.1:1/x", tmp_path / "x", sha256="abc")
    with pytest.raises(TypeError, match="dest"):
        fetch("http://127.0.0.1:1/x", 5)
