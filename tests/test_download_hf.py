"""download_datasets.py hf against a local server on 127.0.0.1 in the hub's URL layout: the dataset's info and
parquet listing under /api/datasets/OWNER/NAME, parquet files with HTTP Range, one dropped connection."""
import io
import json
import random
from http.server import BaseHTTPRequestHandler

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common import ids
from common.card import read_card
from tests import http_server
from tests.fixtures_data import run_stage

DL = "download/download_datasets.py"
REPO = "someone/tiny_tales"


def parquet_bytes(texts, start):
    table = pa.table({"text": texts, "id": list(range(start, start + len(texts))),
                      "nested": [[1, 2]] * len(texts)})  # a non-scalar column is left out of the records
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=64, compression="none")
    return buf.getvalue()


# made-up words keep the first file several download chunks long, so a dropped connection leaves a partial file
_rng = random.Random(0)
TEXTS = [f"Once upon a time story {i} " + " ".join("".join(_rng.choices("abcdefghij", k=6)) for _ in range(120))
         + "." for i in range(600)]
FILES = {"0000.parquet": parquet_bytes(TEXTS[:400], 0), "0001.parquet": parquet_bytes(TEXTS[400:] + [""], 400)}


class HubServer:
    def __init__(self):
        self.requests, self.drop_first_file = [], True
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def send_body(self, body, ctype="application/json"):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                hub.requests.append((path, self.headers.get("Range")))
                api = f"/api/datasets/{REPO}"
                if path == api:
                    return self.send_body(json.dumps({"id": REPO, "sha": "abc123", "cardData": {
                        "license": "cc-by-4.0", "pretty_name": "Tiny Tales"}}).encode())
                if path == f"{api}/parquet/default/train":
                    return self.send_body(json.dumps([f"{hub.base}{api}/parquet/default/train/{n}"
                                                      for n in FILES]).encode())
                name = path.rpartition("/")[2]
                if not path.startswith(f"{api}/parquet/default/train/") or name not in FILES:
                    self.send_response(404)
                    self.end_headers()
                    return
                drop = hub.drop_first_file and name == "0000.parquet"
                hub.drop_first_file = hub.drop_first_file and not drop
                http_server.send_range(self, FILES[name], drop=drop)

        self.httpd, self.base = http_server.start(Handler)


@pytest.fixture
def hub():
    h = HubServer()
    yield h
    http_server.stop(h.httpd)


def test_hf_dataset_downloads_resumes_and_converts(hub, tmp_path):
    ws = tmp_path
    args = ("hf", "--repo", REPO, "--endpoint", hub.base, "--backoff", "0.01", "--shard_size", "250")
    proc = run_stage(ws, DL, *args)
    folder = ws / "data" / "tiny_tales"
    file0 = [r for p, r in hub.requests if p.endswith("0000.parquet")]
    assert file0[0] is None and file0[1].startswith("bytes=") and int(file0[1][6:-1]) > 0  # resumed mid-file
    assert "retrying" in proc.stderr
    card = read_card(folder)
    assert card["source_kind"] == "hf" and card["license"] == "cc-by-4.0" and card["story_count"] == 600
    assert [s["n_stories"] for s in card["shards"]] == [250, 250, 100]
    assert card["hf_params"]["request"]["revision"] == "abc123"
    stories = [r for f in ("data00.json", "data01.json", "data02.json")
               for r in json.loads((folder / f).read_text())]
    assert [r["story"] for r in stories] == [t.strip() for t in TEXTS]
    assert stories[450]["id"] == 450 and stories[450]["source_row"] == 450 and "nested" not in stories[0]
    assert not (folder / ".parquet").exists()
    first_id = ids.raw_id(folder)
    # a re-run with the same revision is a no-op; the id is stable
    again = run_stage(ws, DL, *args)
    assert "nothing to do" in again.stdout and ids.raw_id(folder) == first_id
    # the tokenizer stage accepts it like any other dataset
    run_stage(ws, "tokenization/pretokenize.py", "train_vocab", "--dataset", "tiny_tales", "--vocab_size", 300)
    run_stage(ws, "tokenization/pretokenize.py", "pretokenize", "--dataset", "tiny_tales", "--vocab_size", 300)
    assert read_card(folder)["tokenized_variants"][0]["id"] == ids.tokenized_id(folder / "tok300")


def test_hf_bad_input_is_one_error_line(hub, tmp_path):
    bad = run_stage(tmp_path, DL, "hf", "--repo", "someone/missing", "--endpoint", hub.base, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: not found on the hub")
    bad = run_stage(tmp_path, DL, "hf", "--repo", REPO, "--endpoint", hub.base, "--text_field", "story",
                    "--backoff", "0.01", check=False)
    assert bad.returncode == 2 and "has no column 'story'" in bad.stderr
    bad = run_stage(tmp_path, DL, "hf", "--repo", "noslash", check=False)
    assert bad.returncode == 2 and "must be OWNER/NAME" in bad.stderr
