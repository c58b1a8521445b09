"""Downloads that survive: sources tried in order, transfers resumed with Range, sha256 checks,
and the weights source url. Everything is served by a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from advdissect.data import download
from advdissect.data.download import download_broden, download_file, install_zip
from advdissect.errors import ConfigError, DatasetError, ModelError
from advdissect.nets.models import download_url_weights, load_model
from advdissect.specs import ModelSpec
from advdissect.store import sha256_record

from helpers import robustness_checkpoint

FAST = dict(retries=2, wait=0.0, timeout=5.0)


class Served:
    """What the test server holds: files by path, and how it misbehaves."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path -> bytes sent before the next answer is cut off
        self.ranges = True  # False: ignore Range requests and send the whole file
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)


def _handler(served: Served):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            wanted = self.headers.get("Range")
            served.requests.append((self.path, wanted))
            data = served.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start = int(re.match(r"bytes=(\d+)-", wanted).group(1)) if wanted and served.ranges else 0
            if start >= len(data) and start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if self.path in served.cut:
                body = body[: served.cut.pop(self.path)]
                self.close_connection = True
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    served = Served()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield served
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    # A port that was free a moment ago: connecting to it is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/broden1_224.zip"


@pytest.fixture(scope="module")
def broden_zip(tmp_path_factory, request) -> bytes:
    tiny = request.getfixturevalue("tiny_broden")
    path = tmp_path_factory.mktemp("zip") / "broden1_224.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for file in sorted(tiny.rglob("*")):
            if file.is_file():
                zf.write(file, f"broden1_224/{file.relative_to(tiny)}")
    return path.read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- sources, resume, checksums


def test_a_dead_source_and_a_missing_file_then_a_good_mirror(server, dead_url, broden_zip, tmp_path, monkeypatch):
    server.files["/mirror/broden1_224.zip"] = broden_zip
    monkeypatch.setitem(download.BRODEN_SOURCES, "broden1_224", (dead_url, f"{server.url}/gone.zip"))
    dest = tmp_path / "broden" / "broden1_224"
    download_broden("broden1_224", dest, mirrors=[f"{server.url}/mirror/broden1_224.zip"], **FAST)
    assert (dest / "index.csv").is_file() and (dest / "images").is_dir()
    record = sha256_record(dest.with_name("broden1_224.zip"))
    assert record.read_text() == f"{_sha(broden_zip)}  broden1_224.zip\n"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["broden1_224", "broden1_224.zip.sha256"]
    # The 404 is not retried; the mirror is asked once.
    assert [path for path, _ in server.requests] == ["/gone.zip", "/mirror/broden1_224.zip"]


def test_a_cut_transfer_is_resumed_with_range(server, tmp_path):
    data = bytes(range(256)) * 4096  # 1 MiB
    server.files["/w.bin"] = data
    server.cut["/w.bin"] = 300_000
    digest = download_file([f"{server.url}/w.bin"], tmp_path / "w.bin", **FAST)
    assert (tmp_path / "w.bin").read_bytes() == data and digest == _sha(data)
    assert server.requests == [("/w.bin", None), ("/w.bin", "bytes=300000-")]
    assert list(tmp_path.iterdir()) == [tmp_path / "w.bin"]  # no .part left


def test_a_part_left_by_a_failed_run_is_continued_by_the_next(server, tmp_path):
    data = b"0123456789" * 50_000
    server.files["/w.bin"] = data
    server.cut["/w.bin"] = 123_456
    with pytest.raises(DatasetError, match=r"1 attempt\(s\) failed, the last with: "):
        download_file([f"{server.url}/w.bin"], tmp_path / "w.bin", retries=1, wait=0.0)
    (part,) = tmp_path.glob(".w.bin.*.part")
    assert part.stat().st_size == 123_456
    download_file([f"{server.url}/w.bin"], tmp_path / "w.bin", **FAST)
    assert (tmp_path / "w.bin").read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("/w.bin", "bytes=123456-")


def test_a_server_without_ranges_restarts_and_a_whole_part_is_kept(server, tmp_path):
    data = b"abc" * 100_000
    server.files["/w.bin"] = data
    part = download._part_path(tmp_path / "w.bin", f"{server.url}/w.bin")
    part.write_bytes(b"stale bytes")
    server.ranges = False  # answers 200 with the whole file: the stale start must not be kept
    download_file([f"{server.url}/w.bin"], tmp_path / "w.bin", **FAST)
    assert (tmp_path / "w.bin").read_bytes() == data
    server.ranges = True
    # A complete part (a run killed while checking it): the server answers 416, nothing is re-sent.
    download._part_path(tmp_path / "again.bin", f"{server.url}/w.bin").write_bytes(data)
    download_file([f"{server.url}/w.bin"], tmp_path / "again.bin", **FAST)
    assert (tmp_path / "again.bin").read_bytes() == data
    assert server.requests[-1] == ("/w.bin", f"bytes={len(data)}-")


def test_a_wrong_checksum_is_refused_kept_aside_and_the_next_source_used(server, tmp_path):
    good, bad = b"good bytes" * 1000, b"evil bytes" * 1000
    server.files.update({"/a/w.bin": bad, "/b/w.bin": good})
    urls = [f"{server.url}/a/w.bin", f"{server.url}/b/w.bin"]
    download_file(urls, tmp_path / "w.bin", sha256=_sha(good).upper(), **FAST)
    assert (tmp_path / "w.bin").read_bytes() == good
    assert (tmp_path / f"w.bin.refused-{_sha(bad)[:12]}").read_bytes() == bad
    # A record beside the file is checked like a pin; every source failing names each reason.
    (tmp_path / "w.bin.sha256").write_text(f"{_sha(bad)}  w.bin\n")
    with pytest.raises(DatasetError) as err:
        download_file(urls[1:], tmp_path / "w.bin", **FAST)
    assert f"{urls[1]} (its sha256 is {_sha(good)}, not what w.bin.sha256 records ({_sha(bad)})" in str(err.value)
    assert "delete w.bin.sha256" in str(err.value)
    assert (tmp_path / f"w.bin.refused-{_sha(good)[:12]}").read_bytes() == good


def test_all_sources_dead_names_each_url_and_source_local(server, dead_url, tmp_path, monkeypatch):
    monkeypatch.setitem(download.BRODEN_SOURCES, "broden1_224", (dead_url,))
    with pytest.raises(DatasetError) as err:
        download_broden("broden1_224", tmp_path / "d", mirrors=[f"{server.url}/none.zip"], **FAST)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("cannot download d.zip from any of its 2 source(s): ")
    assert f"{dead_url} (2 attempt(s) failed, the last with: [Errno 111] Connection refused)" in message
    assert f"{server.url}/none.zip (HTTP 404 Not Found)" in message
    for words in ("`source: local`", "index.csv, label.csv, category.csv, the c_*.csv files and images/"):
        assert words in message
    assert not (tmp_path / "d").exists()


def test_an_archive_that_is_not_broden_is_kept_aside_and_not_recorded(server, tmp_path, monkeypatch):
    server.files["/b.zip"] = b"not a zip"
    monkeypatch.setitem(download.BRODEN_SOURCES, "broden1_224", (f"{server.url}/b.zip",))
    with pytest.raises(DatasetError, match=r"not a valid zip file .*kept aside as .*d.zip.refused-"):
        download_broden("broden1_224", tmp_path / "d", **FAST)
    assert [p.name for p in tmp_path.iterdir()] == [f"d.zip.refused-{_sha(b'not a zip')[:12]}"]


# ---------------------------------------------------------------- unpacking


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def test_install_zip_moves_the_dataset_folder_into_place(tmp_path):
    archive = _zip(tmp_path / "b.zip", {"broden1_224/index.csv": "x", "broden1_224/images/a.jpg": "y"})
    dest = tmp_path / "resources" / "broden1_224"
    install_zip(archive, dest)
    assert (dest / "index.csv").read_text() == "x" and (dest / "images" / "a.jpg").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["broden1_224"]  # no leftovers


@pytest.mark.parametrize(
    "members,message",
    [
        ({"../evil.csv": "x", "d/index.csv": "x"}, "outside the dataset folder"),
        ({"d/readme.txt": "x"}, "holds no index.csv"),
    ],
)
def test_install_zip_refuses_bad_archives(tmp_path, members, message):
    dest = tmp_path / "out" / "broden"
    with pytest.raises(DatasetError, match=message):
        install_zip(_zip(tmp_path / "b.zip", members), dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_install_zip_refuses_a_non_zip(tmp_path):
    (tmp_path / "b.zip").write_text("not a zip")
    with pytest.raises(DatasetError, match="not a valid zip file"):
        install_zip(tmp_path / "b.zip", tmp_path / "d")


def test_download_broden_checks_variant_and_skips_existing(tmp_path):
    with pytest.raises(ConfigError, match="broden1_224, broden1_227"):
        download_broden("broden2", tmp_path / "d")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "index.csv").write_text("x")
    assert download_broden("broden1_224", tmp_path / "d") == tmp_path / "d"


# ---------------------------------------------------------------- weights source url

SPEC = ModelSpec(arch="resnet18", num_classes=3)


def _checkpoint_bytes(tmp_path: Path, net, **normaliser) -> bytes:
    torch.save(robustness_checkpoint(net, **normaliser), tmp_path / "ckpt.pt")
    return (tmp_path / "ckpt.pt").read_bytes()


def test_url_weights_in_the_robustness_layout_load_and_are_recorded(server, tmp_path, robust_net):
    data = _checkpoint_bytes(tmp_path, robust_net)
    server.files["/resnet18_linf_eps4.0.ckpt"] = data
    dest = tmp_path / "weights" / "robust.pt"
    download_url_weights(f"{server.url}/resnet18_linf_eps4.0.ckpt", dest, SPEC, **FAST)
    assert sha256_record(dest).read_text() == f"{_sha(data)}  robust.pt\n"
    model = load_model("resnet18", 3, weights_file=dest)
    for key, value in robust_net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    # A later change to the file is refused by every load.
    with open(dest, "r+b") as handle:
        handle.seek(len(data) // 2)
        handle.write(b"\0\0\0\0")
    with pytest.raises(ModelError, match=r"robust.pt: its sha256 is .*, but robust.pt.sha256 beside it records"):
        load_model("resnet18", 3, weights_file=dest)


def test_url_weights_with_a_wrong_pin_are_refused_and_kept_aside(server, tmp_path, robust_net):
    data = _checkpoint_bytes(tmp_path, robust_net)
    server.files["/w.ckpt"] = data
    dest = tmp_path / "weights" / "robust.pt"
    with pytest.raises(ModelError, match=r"cannot download robust.pt .*not the pinned sha256 \(0{64}\)"):
        download_url_weights(f"{server.url}/w.ckpt", dest, ModelSpec("resnet18", 3, weights_sha256="0" * 64), **FAST)
    assert not dest.exists() and (dest.parent / f"robust.pt.refused-{_sha(data)[:12]}").read_bytes() == data


def test_url_weights_that_do_not_load_are_kept_aside(server, tmp_path, robust_net):
    data = _checkpoint_bytes(tmp_path, robust_net, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    server.files["/w.ckpt"] = data
    dest = tmp_path / "weights" / "robust.pt"
    with pytest.raises(ModelError, match=r"its normaliser has mean \[0.5, 0.5, 0.5\] .*kept aside as"):
        download_url_weights(f"{server.url}/w.ckpt", dest, SPEC, **FAST)
    assert not dest.exists() and not sha256_record(dest).exists()
    assert (dest.parent / f"robust.pt.refused-{_sha(data)[:12]}").is_file()


def test_the_workflow_script_downloads_into_the_rule_output(server, tmp_path, robust_net):
    import runpy
    import types

    server.files["/w.ckpt"] = _checkpoint_bytes(tmp_path, robust_net)
    out = tmp_path / "resources" / "weights" / "url" / "robust.pt"
    config = {
        "seed": 0,
        "models": {
            "robust": {
                "arch": "resnet18",
                "num_classes": 3,
                "normalization": "imagenet",
                "weights": {"source": "url", "url": f"{server.url}/w.ckpt"},
            }
        },
    }
    fake = types.SimpleNamespace(
        params=types.SimpleNamespace(url=f"{server.url}/w.ckpt"),
        output=types.SimpleNamespace(weights=str(out)),
        wildcards=types.SimpleNamespace(model="robust"),
        log=[str(tmp_path / "log.txt")],
        config=config,
    )
    script = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "download_url_weights.py"
    runpy.run_path(str(script), init_globals={"snakemake": fake})
    assert out.is_file() and sha256_record(out).is_file()


def test_the_broden_variants_are_listed_once():
    """The schema's and the download rule's variants are those download.py knows."""
    from advdissect.specs import SCHEMA

    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    dataset = schema["properties"]["datasets"]["additionalProperties"]["properties"]
    variants = list(download.BRODEN_SOURCES)
    assert dataset["variant"]["enum"] == variants == list(download.BRODEN_IMAGE_SIZE) == list(download.BRODEN_IMAGES)
    rules = (Path(__file__).resolve().parents[1] / "workflow" / "rules" / "data.smk").read_text()
    assert f'variant="{"|".join(variants)}"' in rules
