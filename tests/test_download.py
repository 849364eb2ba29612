"""download_datasets.py tinystories against a local HTTP server on 127.0.0.1 (complete, resumed, corrupt and
unsafe archives), and the `local` ingest of .json / .jsonl / .txt files."""
import hashlib
import io
import json
import re
import random
import tarfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from tests import http_server
from tests.fixtures_data import run_stage

DL = "download/download_datasets.py"
WORDS = "the cat dog sun ran big little happy sad tree ball red blue park friend said and played".split()


def make_tar(members):
    """A .tar.gz in memory from {name: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def shard_bytes(seed, n=800):
    """A TinyStories-like shard; made-up words keep the archive several download chunks long."""
    rng = random.Random(seed)
    word = lambda: rng.choice(WORDS) if rng.random() < 0.5 else "".join(rng.choices("abcdefghij", k=6))  # noqa
    stories = [{"story": " ".join(word() for _ in range(60)) + ".", "source": "GPT-4"} for _ in range(n)]
    return json.dumps(stories).encode()


GOOD_MEMBERS = {"data00.json": shard_bytes(0), "data01.json": shard_bytes(1)}
GOOD = make_tar(GOOD_MEMBERS)


class Server:
    """Serves one payload; `mode` decides misbehaviour: 'ok', 'drop_once' (first response cut in half),
    'always_drop' (every response cut), 'ignore_range' (always 200 with the whole body)."""

    def __init__(self):
        self.payload, self.mode, self.requests = GOOD, "ok", []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                drop = server.mode == "always_drop" or (server.mode == "drop_once" and len(server.requests) == 1)
                http_server.send_range(self, server.payload, honour_range=server.mode != "ignore_range", drop=drop)

        self.httpd, base = http_server.start(Handler)
        self.url = f"{base}/TinyStories_all_data.tar.gz"


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    http_server.stop(s.httpd)


@pytest.fixture
def srv(server):
    server.payload, server.mode, server.requests[:] = GOOD, "ok", []
    return server


def fetch(ws, srv, *extra, check=True):
    return run_stage(ws, DL, "tinystories", "--url", srv.url, "--backoff", "0.01", *extra, check=check)


def looks_complete(ws):
    """Anything a later stage could mistake for a finished download."""
    data = Path(ws) / "data"
    return (data / "TinyStories_all_data").exists() or (data / "TinyStories_all_data.tar.gz").exists()


def leftovers(ws):
    return [p.name for p in (Path(ws) / "data").iterdir() if p.name.startswith(".")]


def test_complete_download_then_nothing_to_do(tmp_path, srv):
    proc = fetch(tmp_path, srv)
    folder = tmp_path / "data/TinyStories_all_data"
    for name, data in GOOD_MEMBERS.items():
        assert (folder / name).read_bytes() == data
    header = yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])
    assert header["story_count"] == 1600 and header["source"] == srv.url
    assert [s["sha256"] for s in header["shards"]] == [hashlib.sha256(d).hexdigest() for d in GOOD_MEMBERS.values()]
    assert header["archive"]["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert "extracted 2 shards" in proc.stdout and not leftovers(tmp_path)
    n = len(srv.requests)
    again = fetch(tmp_path, srv)
    assert "nothing to do" in again.stdout and len(srv.requests) == n  # no request at all
    # `--dataset tinystories` finds the extracted folder
    run_stage(tmp_path, "tokenization/pretokenize.py", "train_vocab", "--dataset", "tinystories", "--vocab_size", 300)
    run_stage(tmp_path, "tokenization/pretokenize.py", "pretokenize", "--dataset", "tinystories", "--vocab_size", 300)
    manifest = json.loads((folder / "tok300/manifest.json").read_text())
    assert manifest["n_stories"] == 1600 and [s["first_story_id"] for s in manifest["shards"]] == [0, 800]


def test_resume_after_dropped_connection(tmp_path, srv):
    srv.mode = "drop_once"
    proc = fetch(tmp_path, srv, "--sha256", hashlib.sha256(GOOD).hexdigest())
    assert len(GOOD) > 150_000  # several 64 KiB download chunks
    assert srv.requests[0] is None and int(srv.requests[1][6:-1]) > 0, srv.requests  # Range: bytes=N-
    assert "retrying" in proc.stderr
    assert (tmp_path / "data/TinyStories_all_data.tar.gz").read_bytes() == GOOD
    assert (tmp_path / "data/TinyStories_all_data/data01.json").read_bytes() == GOOD_MEMBERS["data01.json"]


def test_failed_download_leaves_only_part_then_resumes(tmp_path, srv):
    srv.mode = "always_drop"
    proc = fetch(tmp_path, srv, "--retries", "1", check=False)
    assert proc.returncode == 2 and "re-run to resume" in proc.stderr.strip().splitlines()[-1]
    assert not looks_complete(tmp_path)
    part = tmp_path / "data/TinyStories_all_data.tar.gz.part"
    assert 0 < part.stat().st_size < len(GOOD)
    have = part.stat().st_size
    srv.mode, srv.requests[:] = "ok", []
    fetch(tmp_path, srv)
    assert srv.requests == [f"bytes={have}-"]  # picked up where the failed run stopped
    assert (tmp_path / "data/TinyStories_all_data.tar.gz").read_bytes() == GOOD and not part.exists()


def test_server_ignoring_range_restarts_cleanly(tmp_path, srv):
    part = tmp_path / "data/TinyStories_all_data.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that is not a prefix")
    srv.mode = "ignore_range"
    fetch(tmp_path, srv)
    assert (tmp_path / "data/TinyStories_all_data.tar.gz").read_bytes() == GOOD


@pytest.mark.parametrize("case", ["truncated", "dotdot", "symlink", "sha256"])
def test_bad_archives_rejected_nothing_complete_left(tmp_path, srv, case):
    extra = []
    if case == "truncated":
        srv.payload = GOOD[: len(GOOD) * 2 // 3]  # served completely, but the gzip/tar stream ends early
        needle = "corrupt"
    elif case == "dotdot":
        srv.payload = make_tar({"data00.json": shard_bytes(0), "../evil.json": b"[]"})
        needle = "../evil.json"
    elif case == "symlink":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("data00.json")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        srv.payload = buf.getvalue()
        needle = "link"
    else:
        extra, needle = ["--sha256", "0" * 64], "SHA-256"
    proc = fetch(tmp_path, srv, *extra, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error:") and needle in last, proc.stderr
    assert not looks_complete(tmp_path) and not leftovers(tmp_path)
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "data/evil.json").exists()
    # the bad archive was deleted, so a re-run against a good server downloads again and succeeds
    srv.payload, srv.mode = GOOD, "ok"
    fetch(tmp_path, srv)
    assert (tmp_path / "data/TinyStories_all_data/data00.json").exists()


def test_http_error_is_one_line(tmp_path, srv):
    proc = run_stage(tmp_path, DL, "tinystories", "--url", "http://127.0.0.1:9/none.tar.gz", "--retries", "0",
                     check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: download of")
    assert not looks_complete(tmp_path)


def test_local_ingest_json_jsonl_txt(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text(json.dumps([{"story": "  One.  ", "level": 1}, {"story": "Two."}]))
    (src / "b.jsonl").write_text('{"text": "Three.", "id": 7}\n\n{"text": "Four."}\n')
    (src / "c.txt").write_text("Five.\nStill five.\n\n\nSix.\n\n")
    run_stage(tmp_path, DL, "local", "--name", "mine", "--shard_size", "3", src / "a.json", src / "c.txt")
    run_stage(tmp_path, DL, "local", "--name", "lines", "--text_field", "text", src / "b.jsonl")
    mine = [r for f in sorted((tmp_path / "data/mine").glob("data*.json")) for r in json.loads(f.read_text())]
    assert [r["story"] for r in mine] == ["One.", "Two.", "Five.\nStill five.", "Six."]
    assert mine[0]["level"] == 1 and mine[2]["source_file"] == "c.txt"
    assert sorted(p.name for p in (tmp_path / "data/mine").glob("data*.json")) == ["data00.json", "data01.json"]
    lines = json.loads((tmp_path / "data/lines/data00.json").read_text())
    assert [r["story"] for r in lines] == ["Three.", "Four."] and lines[0]["id"] == 7
    again = run_stage(tmp_path, DL, "local", "--name", "mine", "--shard_size", "3", src / "a.json", src / "c.txt")
    assert "nothing to do" in again.stdout
    # the ingested folder feeds the next stage like any other dataset
    run_stage(tmp_path, "tokenization/pretokenize.py", "train_vocab", "--dataset", "mine", "--vocab_size", 280)
    run_stage(tmp_path, "tokenization/pretokenize.py", "pretokenize", "--dataset", "mine", "--vocab_size", 280)
    assert json.loads((tmp_path / "data/mine/tok280/manifest.json").read_text())["n_stories"] == 4

    bad = run_stage(tmp_path, DL, "local", "--name", "oops", src / "b.jsonl", check=False)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and "--text_field" in last and "'story'" in last
    assert not (tmp_path / "data/oops").exists()
    clash = run_stage(tmp_path, DL, "storyworld", "--name", "mine", "--n_stories", "5", check=False)
    assert clash.returncode == 2 and "local" in clash.stderr


@pytest.mark.parametrize("content,needle", [
    (b"\0" * 64, "contains NUL bytes"),                                   # a file of NUL bytes is not a story
    (b'[{"story": 42}]', "field 'story' has the wrong type: int (42)"),    # present, but not a string
    (b'[{"text": "Hi."}]', "has no field 'story' (has ['text'])"),         # absent: the fields it has
    (b'[["a list"]]', "is a JSON list, not a record"),
], ids=["nul", "wrong_type", "missing", "not_a_record"])
def test_local_ingest_names_what_is_wrong_and_writes_nothing(tmp_path, content, needle):
    from common.errors import UserError
    from download import download_datasets
    src = tmp_path / ("in.txt" if content.startswith(b"\0") else "in.json")
    src.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(needle)):
        download_datasets.main(["local", "--root", str(tmp_path), "--name", "mine", str(src)])
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
