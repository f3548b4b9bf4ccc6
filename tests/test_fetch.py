"""Tests of the COCO fetcher (capmodel.datasets.fetch) against local HTTP servers on 127.0.0.1."""

import hashlib
import http.server
import io
import socket
import threading
import zipfile

import pytest

from capmodel.app.cli import main
from capmodel.datasets import fetch
from capmodel.datasets import format as fmt


def _zip_of(src, top="coco_captioning", extra=None, skip=()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in fmt.required_files():
            if name not in skip:
                z.write(src / name, f"{top}/{name}")
        for arcname, data in (extra or {}).items():
            z.writestr(arcname, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(shapes_dir):
    return _zip_of(shapes_dir)


class Server:
    """A stdlib HTTP server on 127.0.0.1 serving one payload, with Range support and faults."""

    def __init__(self, payload):
        self.payload = payload
        self.drop_after = None  # send this many body bytes, then cut the connection (once)
        self.status = 200
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if server.status != 200:
                    self.send_error(server.status)
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    self.wfile.write(body[: server.drop_after])
                    self.wfile.flush()
                    server.drop_after = None
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/coco_captioning.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(archive):
    s = Server(archive)
    yield s
    s.close()


def _same_data(a, b):
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in fmt.required_files())


def test_fetch_extract_validate_then_nothing_to_do(server, shapes_dir, tmp_path):
    out = tmp_path / "coco"
    assert fetch.fetch(out, url=server.url, progress=False) == "fetched"
    assert fmt.problems(out) == [] and _same_data(out, shapes_dir)
    assert list(tmp_path.iterdir()) == [out]  # no archive, .part or temp dirs left
    assert fetch.fetch(out, url=server.url, progress=False) == "present"
    assert len(server.requests) == 1


def test_interrupted_download_resumes_byte_identical(server, archive, shapes_dir, tmp_path):
    out = tmp_path / "coco"
    server.drop_after = len(archive) // 2
    with pytest.raises(fetch.FetchError, match="interrupted after .* run the same command again to resume"):
        fetch.fetch(out, url=server.url, progress=False)
    part = tmp_path / "coco.zip.part"
    assert part.exists() and 0 < part.stat().st_size < len(archive)
    assert not out.exists()
    half = part.stat().st_size
    assert fetch.fetch(out, url=server.url, progress=False) == "fetched"
    assert server.requests == [None, f"bytes={half}-"]
    assert _same_data(out, shapes_dir)


def test_checksum_verified_and_mismatch_removes_download(server, archive, tmp_path):
    good = hashlib.sha256(archive).hexdigest()
    assert fetch.fetch(tmp_path / "ok", url=server.url, sha256=good, progress=False) == "fetched"
    with pytest.raises(fetch.FetchError, match="checksum mismatch .* the bad download was removed"):
        fetch.fetch(tmp_path / "bad", url=server.url, sha256="0" * 64, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]


def test_corrupt_archive_is_refused_and_removed(server, archive, tmp_path):
    broken = bytearray(archive)
    mid = len(broken) // 2
    broken[mid : mid + 64] = bytes(64)
    server.payload = bytes(broken)
    with pytest.raises(fetch.FetchError, match="corrupt|not a valid zip|invalid"):
        fetch.fetch(tmp_path / "coco", url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_archive_missing_files(server, shapes_dir, tmp_path):
    server.payload = _zip_of(shapes_dir, skip=("val2014_urls.txt",))
    with pytest.raises(fetch.FetchError, match="val2014_urls.txt: missing file"):
        fetch.fetch(tmp_path / "coco", url=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs/evil.txt", "coco_captioning/../../evil.txt"])
def test_unsafe_entries_are_refused(server, shapes_dir, tmp_path, entry):
    server.payload = _zip_of(shapes_dir, extra={entry: "x"})
    with pytest.raises(fetch.FetchError, match="refusing unsafe entry"):
        fetch.fetch(tmp_path / "sub" / "coco", url=server.url, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "coco").exists()


def test_http_error_status(server, tmp_path):
    server.status = 404
    with pytest.raises(fetch.FetchError, match=r"HTTP error 404 .* from http://127\.0\.0\.1"):
        fetch.fetch(tmp_path / "coco", url=server.url, progress=False)


def test_unreachable_host_says_how_to_place_the_zip(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/coco_captioning.zip"
    with pytest.raises(fetch.FetchError, match=f"cannot reach {url} .* place it at .*/coco.zip"):
        fetch.fetch(tmp_path / "coco", url=url, progress=False, timeout=5)


def test_file_url_and_zip_placed_by_hand(archive, shapes_dir, tmp_path):
    src = tmp_path / "mirror.zip"
    src.write_bytes(archive)
    assert fetch.fetch(tmp_path / "a", url=src.as_uri(), progress=False) == "fetched"
    (tmp_path / "b.zip").write_bytes(archive)  # placed by hand: no download
    assert fetch.fetch(tmp_path / "b", url="http://127.0.0.1:9/never.zip", progress=False) == "fetched"
    assert _same_data(tmp_path / "b", shapes_dir)


def test_cli_exit_codes(server, shapes_dir, tmp_path, capsys):
    import shutil

    assert main(["data", "fetch", str(tmp_path / "c"), "--url", server.url, "--no-progress"]) == 0
    # This archive's urls name pictures inside the data set (COCO's are http URLs), which it lacks.
    assert main(["data", "check", str(tmp_path / "c")]) == 1
    assert "pictures do not exist" in capsys.readouterr().err
    shutil.copytree(shapes_dir / "images", tmp_path / "c" / "images")
    assert main(["data", "check", str(tmp_path / "c")]) == 0
    server.status = 500
    assert main(["data", "fetch", str(tmp_path / "d"), "--url", server.url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "capmodel data fetch: error: HTTP error 500" in err
