"""skin_model.data.fetch against a local Dataverse stand-in (no network): listing, download, resume,
checksum failures, unpacking, and `skin-model fetch-ham10000`."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from PIL import Image

from skin_model.cli import main
from skin_model.data import fetch
from skin_model.data.fetch import FetchError, Interrupted, fetch_ham10000, unpack, write_metadata_csv
from skin_model.data.ham10000 import load_ham10000

HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
DIAGNOSES = ["nv", "mel", "bkl", "bcc", "akiec", "df", "vasc", "nv"]


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass
class Served:
    filename: str
    body: bytes
    md5: str | None = None  # what the API claims (default: the body's)
    original: bytes | None = None  # an ingested table's original upload (?format=original)
    original_name: str | None = None


@dataclass
class Stub:
    """The Dataverse API shape the fetcher uses, with switches for failures."""

    files: dict[int, Served]
    doi: str = fetch.DOI
    drop_once: set[int] = field(default_factory=set)  # close the connection halfway, first request only
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def listing(self) -> dict:
        out = []
        for fid, f in self.files.items():
            checked = f.original if f.original is not None else f.body
            df = {"id": fid, "filename": f.filename, "filesize": len(f.body),
                  "checksum": {"type": "MD5", "value": f.md5 or hashlib.md5(checked).hexdigest()}}
            if f.original is not None:
                df.update(originalFileFormat="text/csv", originalFileName=f.original_name,
                          originalFileSize=len(f.original))
            out.append({"label": f.filename, "dataFile": df})
        return {"status": "OK", "data": {"latestVersion": {"files": out}}}


def handler_for(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urlparse(self.path)
            query = parse_qs(url.query)
            stub.requests.append((self.path, self.headers.get("Range")))
            if url.path == "/api/datasets/:persistentId/":
                if query.get("persistentId") != [stub.doi]:
                    self.send_body(404, b'{"status":"ERROR","message":"not found"}')
                    return
                self.send_body(200, json.dumps(stub.listing()).encode(), {"Content-Type": "application/json"})
                return
            prefix = "/api/access/datafile/"
            fid = int(url.path[len(prefix):]) if url.path.startswith(prefix) else -1
            if fid not in stub.files:
                self.send_body(404, b"no such file")
                return
            f = stub.files[fid]
            body = f.original if (query.get("format") == ["original"] and f.original is not None) else f.body
            start = 0
            rng = self.headers.get("Range")
            if rng and stub.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_body(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    return
            if fid in stub.drop_once:
                stub.drop_once.discard(fid)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            headers = {"Content-Type": "application/octet-stream"}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            self.send_body(206 if start else 200, body[start:], headers)

    return Handler


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(stub: Stub) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(stub))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def ham_files(metadata: str = "original") -> tuple[dict[int, Served], list[str]]:
    """Two image archives (one flat, one with a folder inside), masks and the metadata."""
    ids = [f"ISIC_{24306 + i:07d}" for i in range(len(DIAGNOSES))]
    rows = [[f"HAM_{i // 2:07d}", image_id, dx, "histo", str(30 + i), "male" if i % 2 else "female", "back"]
            for i, (image_id, dx) in enumerate(zip(ids, DIAGNOSES))]
    csv_text = "\n".join(",".join(r) for r in [HEADER, *rows]) + "\n"
    tab_text = "\n".join("\t".join(f'"{v}"' if k and not v.isdigit() else v for k, v in enumerate(r))
                         for r in [HEADER, *rows]) + "\n"
    part1 = zipped({f"{i}.jpg": jpeg(n) for n, i in enumerate(ids[:4])})
    part2 = zipped({f"HAM10000_images_part_2/{i}.jpg": jpeg(n) for n, i in enumerate(ids[4:])}
                   | {"__MACOSX/._junk": b"x"})
    masks = zipped({f"HAM10000_segmentations_lesion_tschandl/{i}_segmentation.png": b"png" for i in ids})
    if metadata == "original":  # Dataverse ingested the CSV: serves .tab, keeps the original and its checksum
        meta = Served("HAM10000_metadata.tab", tab_text.encode(), original=csv_text.encode(),
                      original_name="HAM10000_metadata.csv")
    else:  # only a tab-separated file
        meta = Served("HAM10000_metadata.tab", tab_text.encode())
    files = {
        11: Served("HAM10000_images_part_1.zip", part1),
        12: Served("HAM10000_images_part_2.zip", part2),
        13: meta,
        14: Served("HAM10000_segmentations_lesion_tschandl.zip", masks),
        15: Served("ISIC2018_Task3_Test_Images.zip", b"not requested"),
    }
    return files, ids


def archive_requests(stub: Stub, fid: int) -> list[str | None]:
    return [rng for path, rng in stub.requests if path.startswith(f"/api/access/datafile/{fid}")]


@pytest.mark.parametrize("metadata", ["original", "tab"])
def test_full_fetch_then_load(serve, tmp_path: Path, metadata: str) -> None:
    files, ids = ham_files(metadata)
    stub = Stub(files)
    base = serve(stub)
    dest = fetch_ham10000(tmp_path / "ham", base_url=base, masks=True, progress=False, retries=0)
    ham = load_ham10000(dest)
    assert sorted(ham.table.image_id) == ids
    assert ham.table.dx.tolist() == DIAGNOSES and ham.table.age.tolist() == [30.0 + i for i in range(8)]
    assert (dest / "HAM10000_images_part_1" / f"{ids[0]}.jpg").read_bytes() == jpeg(0)
    assert sorted(p.name for p in (dest / "HAM10000_images_part_2").iterdir()) == [f"{i}.jpg" for i in ids[4:]]
    assert ham.table.mask_path.notna().all()
    assert not list(dest.glob("**/*.zip")) and not list(dest.glob("**/*.part"))  # archives deleted
    assert not any(p.name.startswith(".") for p in dest.iterdir())
    assert (dest / "HAM10000_metadata.csv").read_text().splitlines()[0] == ",".join(HEADER)
    if metadata == "original":
        assert any("format=original" in path for path, _ in stub.requests)
    assert not archive_requests(stub, 15)

    stub.requests.clear()  # a second run finds everything done and downloads no archive again
    fetch_ham10000(dest, base_url=base, masks=True, progress=False, retries=0)
    assert not archive_requests(stub, 11) and not archive_requests(stub, 12)


def test_interrupted_download_resumes_on_next_call(serve, tmp_path: Path) -> None:
    files, ids = ham_files()
    stub = Stub(files, drop_once={12})
    base = serve(stub)
    dest = tmp_path / "ham"
    with pytest.raises(Interrupted, match="run the command again to resume"):
        fetch_ham10000(dest, base_url=base, progress=False, retries=0)
    part = dest / "downloads" / "HAM10000_images_part_2.zip.part"
    half = len(files[12].body) // 2
    assert part.stat().st_size == half
    assert (dest / "HAM10000_images_part_1").is_dir() and not (dest / "HAM10000_images_part_2").exists()

    fetch_ham10000(dest, base_url=base, progress=True, retries=0)
    assert archive_requests(stub, 12)[-1] == f"bytes={half}-"  # resumed, not restarted
    assert len(archive_requests(stub, 11)) == 1  # part 1 was not fetched twice
    assert len(load_ham10000(dest).table) == len(ids)


def test_interruption_is_retried_within_one_call(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)
    files, ids = ham_files()
    stub = Stub(files, drop_once={11})
    dest = fetch_ham10000(tmp_path / "ham", base_url=serve(stub), progress=False, retries=1)
    assert len(load_ham10000(dest).table) == len(ids)
    assert archive_requests(stub, 11) == [None, f"bytes={len(files[11].body) // 2}-"]


def test_server_ignoring_range_restarts_cleanly(serve, tmp_path: Path) -> None:
    files, ids = ham_files()
    stub = Stub(files, drop_once={11}, honour_range=False)
    base = serve(stub)
    dest = tmp_path / "ham"
    with pytest.raises(Interrupted):
        fetch_ham10000(dest, base_url=base, progress=False, retries=0)
    fetch_ham10000(dest, base_url=base, progress=False, retries=0)
    assert (dest / "HAM10000_images_part_1" / f"{ids[0]}.jpg").read_bytes() == jpeg(0)


def test_checksum_mismatch_deletes_download_and_unpacks_nothing(serve, tmp_path: Path) -> None:
    files, _ = ham_files()
    files[12].md5 = "0" * 32  # the API's checksum does not match what arrives
    base = serve(Stub(files))
    dest = tmp_path / "ham"
    with pytest.raises(FetchError, match=r"HAM10000_images_part_2\.zip: checksum mismatch \(MD5 expected 0{32}"):
        fetch_ham10000(dest, base_url=base, progress=False, retries=0)
    assert not (dest / "HAM10000_images_part_2").exists()
    assert not list((dest / "downloads").glob("HAM10000_images_part_2*"))
    assert not any(p.name.startswith(".") for p in dest.iterdir())  # no half-unpacked temporary folder


def test_corrupt_archive_with_matching_checksum_unpacks_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "HAM10000_images_part_1.zip"
    broken.write_bytes(zipped({"ISIC_0000001.jpg": jpeg(0)})[:-30])
    with pytest.raises(FetchError, match="cannot unpack"):
        unpack(broken, tmp_path / "HAM10000_images_part_1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["HAM10000_images_part_1.zip"]


def test_unknown_dataset_and_missing_files_are_clear(serve, tmp_path: Path) -> None:
    files, _ = ham_files()
    base = serve(Stub(files, doi="doi:10.0000/OTHER"))
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_ham10000(tmp_path / "a", base_url=base, progress=False)
    del files[12]
    base = serve(Stub(files))
    with pytest.raises(FetchError, match="lists no HAM10000_images_part_2.zip"):
        fetch_ham10000(tmp_path / "b", base_url=base, progress=False)
    with pytest.raises(FetchError, match="cannot reach Dataverse"):
        fetch.list_files("http://127.0.0.1:9", timeout=2)


def test_tab_metadata_is_converted_to_csv(tmp_path: Path) -> None:
    source = tmp_path / "m.tab"
    source.write_text('lesion_id\timage_id\tdx\tlocalization\n"HAM_1"\t"ISIC_1"\t"nv"\t"lower extremity"\n')
    out = write_metadata_csv(source, tmp_path / "HAM10000_metadata.csv")
    assert out.read_text().splitlines() == ["lesion_id,image_id,dx,localization", "HAM_1,ISIC_1,nv,lower extremity"]


def test_cli_fetch(serve, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files, ids = ham_files()
    base = serve(Stub(files))
    assert main(["fetch-ham10000", str(tmp_path / "ham"), "--base-url", base, "--quiet", "--keep-archives"]) == 0
    out = capsys.readouterr().out
    assert f"{len(ids)} photos of 4 lesions" in out
    assert (tmp_path / "ham" / "downloads" / "HAM10000_images_part_1.zip").is_file()
    files[11].md5 = "f" * 32
    assert main(["fetch-ham10000", str(tmp_path / "other"), "--base-url", serve(Stub(files)), "--quiet"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
