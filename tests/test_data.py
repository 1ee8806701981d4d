"""Upstream data files: the pinned table, local copies, checksums, offline errors, verified downloads."""

import hashlib
import http.server
import shutil
import subprocess
import threading
from dataclasses import replace

import pytest

from evalsuite import data
from evalsuite.data_files import DATA_FILES, DataFile


def test_every_pinned_sha256_matches_the_shared_copy(data_dir):
    # files whose license forbids redistribution (TIIF-Bench) are not in the shared copy: download-only
    local = [f for f in DATA_FILES if f.sha256 and "not redistributable" not in f.license]
    assert len(local) >= 49
    for spec in local:
        assert data.resolve(spec.key, data_dir) == data_dir / spec.key
    assert all(f.url or f.note for f in DATA_FILES) and all(f.license for f in DATA_FILES)


def test_good_local_copy_via_env(data_dir, monkeypatch):
    monkeypatch.setenv("EVALSUITE_DATA_DIR", str(data_dir))
    path = data.resolve("geneval/evaluation_metadata.jsonl")
    assert path.read_text().count("\n") == 553


def test_checksum_mismatch_is_an_error(data_dir, tmp_path):
    key = "geneval/object_names.txt"
    (tmp_path / "geneval").mkdir()
    copy = tmp_path / key
    shutil.copy(data_dir / key, copy)
    copy.write_bytes(copy.read_bytes().replace(b"person", b"persom"))
    with pytest.raises(data.ChecksumError, match="sha256") as info:
        data.resolve(key, tmp_path)
    assert str(copy) in str(info.value) and "raw.githubusercontent.com/djghosh13/geneval" in str(info.value)


def test_missing_offline_names_file_url_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataFileNotFoundError) as info:
        data.resolve("t2i_compbench/color_val.txt", tmp_path)
    msg = str(info.value)
    assert "t2i_compbench/color_val.txt" in msg and "--data-dir" in msg and "EVALSUITE_DATA_DIR" in msg
    assert "https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/" in msg and "offline" in msg.lower()


def test_file_without_upstream_url_explains_its_origin(tmp_path):
    with pytest.raises(data.DataFileNotFoundError, match="assembled from ELLA"):
        data.resolve("dpg_bench/prompts.jsonl", tmp_path, download=True)


def test_git_blob_verification_matches_git(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"item_id,text\n1,a cat\n")
    blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    spec = DataFile("x/f.csv", None, "MIT", git_blob=blob.stdout.strip())
    assert data.verify(path, spec) == path
    with pytest.raises(data.ChecksumError, match="git blob"):
        data.verify(path, replace(spec, git_blob="0" * 40))


@pytest.fixture
def loopback_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_is_verified_then_cached(loopback_server, tmp_path, monkeypatch):
    root, base = loopback_server
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    content = b"a photo of a cat\n"
    (root / "good.txt").write_bytes(content)
    spec = DataFile("demo/good.txt", f"{base}/good.txt", "MIT", sha256=hashlib.sha256(content).hexdigest())
    monkeypatch.setitem(data.BY_KEY, spec.key, spec)
    path = data.resolve(spec.key)
    assert path.read_bytes() == content and path.parent.name == "demo"
    (root / "good.txt").unlink()  # second call is served from the cache
    assert data.resolve(spec.key) == path


def test_download_with_wrong_checksum_leaves_nothing(loopback_server, monkeypatch):
    root, base = loopback_server
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (root / "bad.txt").write_bytes(b"tampered")
    spec = DataFile("demo/bad.txt", f"{base}/bad.txt", "MIT", sha256="0" * 64)
    monkeypatch.setitem(data.BY_KEY, spec.key, spec)
    with pytest.raises(data.ChecksumError):
        data.resolve(spec.key)
    assert not any((data.cache_dir() / "demo").iterdir())
    spec404 = replace(spec, key="demo/absent.txt", url=f"{base}/absent.txt")
    monkeypatch.setitem(data.BY_KEY, spec404.key, spec404)
    with pytest.raises(data.DataFileNotFoundError, match="download from .* failed"):
        data.resolve(spec404.key)


def test_status_table(data_dir, tmp_path):
    rows = data.status(data_dir)
    by_file = {r["file"]: r for r in rows}
    assert by_file["geneval/evaluation_metadata.jsonl"]["status"] == "ok"
    assert by_file["dpg_bench/dpg_bench.csv"]["status"] == "missing"
