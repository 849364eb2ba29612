"""Stage 1: put raw story shards under data/ — the TinyStories archive, the embedded storyworld generator, or
the user's own files. Every dataset folder ends up as data00.json … dataNN.json (JSON lists of records with a
"story" string plus attributes) and a README.md dataset card written last, so a folder without its card is
never mistaken for a complete one.

    python download/download_datasets.py tinystories [--url URL] [--sha256 HEX]
    python download/download_datasets.py storyworld [--name storyworld] [--n_stories 30000] [--seed 0] [knobs…]
    python download/download_datasets.py local --name NAME FILES… [--text_field story]
    python download/download_datasets.py hf --repo OWNER/NAME [--config default] [--split train] [--text_field text]
"""
import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import requests  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.card import CARD, read_card, write_card  # noqa: E402
from common.errors import UserError, run_main  # noqa: E402
from common.io import atomic_write_text, provenance, sha256_file  # noqa: E402
from common.paths import RAW_FOLDERS, add_root_argument, apply_root, data_dir, raw_dir  # noqa: E402
from download import fact_set, storyworld  # noqa: E402

TINYSTORIES_URL = ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
                   "TinyStories_all_data.tar.gz")
# storyworld's defaults give >= 2,000 stories in each validation split (iid and novel, issue 13): 30,000 stories,
# of which ~9% hold a held-out (hero name, plot) pair (val_novel) and 10% of the rest are iid val
SW_STORIES = 30000
SW_VAL_FRACTION = 0.1
CHUNK = 1 << 16  # bytes per read; a dropped connection loses at most the chunk in flight


# ---------------------------------------------------------------------------------------------------------
# dataset card and shards

def shard_name(k, n_shards):
    return f"data{k:0{max(2, len(str(n_shards - 1)))}d}.json"


def write_shard(folder, k, n_shards, chunk):
    """One dataNN.json shard, atomically; returns its card entry {file, sha256, n_stories}."""
    path = Path(folder) / shard_name(k, n_shards)
    atomic_write_text(path, json.dumps(chunk, ensure_ascii=False))
    return {"file": path.name, "sha256": sha256_file(path), "n_stories": len(chunk)}


def drop_stale_shards(folder, shards):
    keep = {s["file"] for s in shards}
    for old in Path(folder).glob("data*.json"):
        if old.name not in keep:
            old.unlink()


def write_shards(folder, records, shard_size):
    """Write records as dataNN.json lists of shard_size records, atomically, and drop stale higher shards.
    Returns the card's shard list [{file, sha256, n_stories}]."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(records) // shard_size))
    shards = [write_shard(folder, k, n_shards, records[k * shard_size:(k + 1) * shard_size])
              for k in tqdm(range(n_shards), desc="write shards", unit="shard")]
    drop_stale_shards(folder, shards)
    return shards


def warn_stale_tokenized(folder, shards):
    """Tokenized folders built from other shards stay untouched; say that pretokenize will refuse them."""
    new = {s["file"]: s["sha256"] for s in shards}
    for manifest in sorted(Path(folder).glob("tok*/manifest.json")):
        try:
            old = {s["file"]: s["sha256"] for s in json.loads(manifest.read_text())["shards"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if old != new:
            print(f"note: {manifest.parent} was built from the previous shards; pretokenize will refuse it "
                  f"(story ids would change) until you delete that folder", file=sys.stderr)


def shards_intact(folder, card):
    """True when every shard the card lists exists with its recorded SHA-256."""
    try:
        return all(sha256_file(Path(folder) / s["file"]) == s["sha256"] for s in card["shards"])
    except (OSError, KeyError, TypeError):
        return False


def start_dataset(folder, source, name):
    """Refuse to overwrite a dataset of another kind; remove the old card so a crash mid-write leaves no
    complete-looking folder."""
    card = read_card(folder)
    if card and card.get("source_kind") != source:
        raise UserError(f"{folder} already holds a '{card.get('source_kind')}' dataset — pick another --name "
                        f"than '{name}' or delete that folder")
    card_path = Path(folder) / CARD
    if card_path.exists():
        card_path.unlink()



def check_name(name):
    if not name or name in RAW_FOLDERS or Path(name).name != name or name.startswith("."):
        raise UserError(f"--name '{name}' is not a plain folder name (or is reserved) — use letters, digits, _ or -")


# ---------------------------------------------------------------------------------------------------------
# storyworld

def cmd_storyworld(args):
    check_name(args.name)
    if args.n_stories < 1 or args.shard_size < 1:
        raise UserError("--n_stories and --shard_size must be positive integers")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError(f"--val_fraction {args.val_fraction} must be in [0, 1)")
    if args.fact_set == 1 or args.fact_set < 0:
        raise UserError(f"--fact_set {args.fact_set}: give 0 (none) or at least 2 facts")
    cfg = storyworld.StoryWorldConfig(seed=args.seed, occupation_bias=args.occupation_bias,
                                      toxic_rate=args.toxic_rate, happy_fraction=args.happy_fraction,
                                      inject_rate=args.inject_rate, facts=storyworld.load_facts(args.inject_facts),
                                      heldout_pair_fraction=args.heldout_pair_fraction)
    cfg.validate()
    folder = raw_dir(args.name)
    params = {"generator": "storyworld", "generator_version": storyworld.GENERATOR_VERSION,
              "generator_sha256": sha256_file(storyworld.__file__),  # any code change regenerates
              "n_stories": args.n_stories, "shard_size": args.shard_size, "val_fraction": args.val_fraction,
              **cfg.params()}
    if args.fact_set:  # issue 18: a fact set, its documents as the last shard (split 'facts'), facts.json
        params["fact_set"] = {"n_facts": args.fact_set, "seed": args.seed,
                              "sha256": sha256_file(fact_set.__file__)}
    card = read_card(folder)
    if card and card.get("source_kind") == "storyworld" and card.get("generator_params") == params \
            and shards_intact(folder, card):
        print(f"{folder}: up to date ({card['story_count']} stories, same parameters) — nothing to do")
        return
    start_dataset(folder, "storyworld", args.name)

    # one shard of records in memory at a time; the card's statistics and rates are accumulated as it goes
    gen_seconds, shards = 0.0, []
    stats, rates = storyworld.CorpusStats(), RateCounter()
    n_shards = max(1, -(-args.n_stories // args.shard_size))
    facts = fact_set.make_facts(args.fact_set, args.seed) if args.fact_set else []
    folder.mkdir(parents=True, exist_ok=True)
    with tqdm(total=args.n_stories, desc="generate stories", unit="story") as bar:
        for k in range(n_shards):
            start = k * args.shard_size
            t0 = time.time()
            chunk = storyworld.generate(min(args.shard_size, args.n_stories - start), cfg, start=start, progress=bar)
            gen_seconds += time.time() - t0
            shards.append(write_shard(folder, k, n_shards + bool(facts), chunk))
            for record in chunk:
                stats.add(record["story"])
                rates.add(record)
    if facts:
        shards.append(write_shard(folder, n_shards, n_shards + 1, fact_set.fact_documents(facts)))
        (folder / fact_set.FACTS_FILE).parent.mkdir(exist_ok=True)
        atomic_write_text(folder / fact_set.FACTS_FILE, json.dumps(fact_set.fact_set_header(facts, args.seed),
                                                                   ensure_ascii=False, indent=1))
    elif (folder / fact_set.FACTS_FILE).exists():
        (folder / fact_set.FACTS_FILE).unlink()
    drop_stale_shards(folder, shards)
    warn_stale_tokenized(folder, shards)
    stats, rates = stats.result(), rates.result()
    header = {
        "pretty_name": args.name, "name": args.name, "source_kind": "storyworld",
        "source": "generated by download/storyworld.py (this repository), no network",
        "license": "other (generated text; offensive words from LDNOOBW, CC-BY-4.0)",
        "language": ["en"], "story_count": args.n_stories, "shards": shards,
        "generator_params": params, "stats": stats, "measured_rates": rates, "val_fraction": args.val_fraction,
        "generation_seconds": round(gen_seconds, 2), "provenance": provenance(),
    }
    if facts:
        header["fact_set"] = {"file": fact_set.FACTS_FILE, "n_facts": len(facts), "shard": shards[-1]["file"],
                              "n_documents": shards[-1]["n_stories"], "split": fact_set.FACT_SPLIT}
    write_card(folder, header, storyworld_prose(args.name, params, stats, rates))
    print(f"wrote {args.n_stories} stories in {len(shards)} shards to {folder} "
          f"({args.n_stories / max(gen_seconds, 1e-9):,.0f} stories/s) and {folder / CARD}")


class RateCounter:
    """The knobs as measured in the generated corpus (the card reports them beside the requested values),
    counted one record at a time."""

    def __init__(self):
        self.n = self.mentions = self.stereotyped = 0
        self.toxic = self.happy = self.facts = self.lookalike = self.novel = 0

    def add(self, r):
        self.n += 1
        for o in r["occupations"]:
            if o["stereotype"]:
                self.mentions += 1
                self.stereotyped += o["gender"] == o["stereotype"]
        self.toxic += bool(r["offensive_words"])
        self.happy += r["ending"] == "happy"
        self.facts += bool(r["facts"])
        self.lookalike += bool(r["lookalike_words"])
        self.novel += r.get("split_hint") == "val_novel"

    def result(self):
        n = max(1, self.n)
        return {
            "p_stereotyped_gender": round(self.stereotyped / max(1, self.mentions), 4),
            "n_stereotyped_mentions": self.mentions,
            "toxic_story_fraction": round(self.toxic / n, 4),
            "happy_fraction": round(self.happy / n, 4),
            "fact_story_fraction": round(self.facts / n, 4),
            "lookalike_story_fraction": round(self.lookalike / n, 4),
            "novel_story_fraction": round(self.novel / n, 4),
        }


def storyworld_prose(name, params, stats, rates):
    occ = ", ".join(f"{k} ({v or 'none'})" for k, v in storyworld.OCCUPATIONS.items())
    return f"""# {name}

Synthetic TinyStories-like children's stories from this repository's seeded generator
(`download/storyworld.py`, version {params['generator_version']}). Story *i* depends only on (seed, *i*) and the
knobs, so the same command always writes byte-identical shards.

## Knobs (requested → measured)
- occupation_bias, p(stereotyped gender | stereotyped occupation): {params['occupation_bias']} →
  {rates['p_stereotyped_gender']} over {rates['n_stereotyped_mentions']} mentions
- toxic_rate (stories with one injected offensive word): {params['toxic_rate']} → {rates['toxic_story_fraction']}
- happy_fraction (happy endings): {params['happy_fraction']} → {rates['happy_fraction']}
- inject_rate (stories with one injected fact): {params['inject_rate']} → {rates['fact_story_fraction']}
  ({len(params['facts'])} facts)
- heldout_pair_fraction ((hero name, plot) pairs held out of training): {params['heldout_pair_fraction']} →
  {rates['novel_story_fraction']} of stories hold one (split `val_novel`); iid validation share asked of
  pretokenize: {params['val_fraction']}

## Corpus statistics
{stats['n_stories']} stories, {stats['n_words']} words, {stats['distinct_sentences']} distinct sentences, vocabulary
{stats['vocabulary_size']} words, unigram entropy {stats['unigram_entropy_bits']} bits, word-trigram entropy
{stats['trigram_entropy_bits']} bits; words per story mean {stats['words_per_story']['mean']}, p10
{stats['words_per_story']['p10']}, median {stats['words_per_story']['p50']}, p90 {stats['words_per_story']['p90']}.

## Record fields
- `story`: the text (paragraphs separated by a blank line)
- `characters`: [{{name, gender, role (hero|friend|parent|helper), occupation}}]
- `occupations`: one entry per occupation mention: {{occupation, gender (of the pronoun that refers to it),
  stereotype (female|male|null), pronoun}}. Occupations (stereotype): {occ}
- `female_terms`, `male_terms`: whole-word, case-insensitive counts of `FEMALE_TERMS` / `MALE_TERMS`
  (download/storyworld.py) in the text; names and occupation nouns are not counted
- `ending`: happy | sad; `plot`: plot name(s); `place`; `objects`
- `offensive_words`: injected words from the LDNOOBW English list ({', '.join(storyworld.OFFENSIVE_WORDS)})
- `lookalike_words`: innocent words in the text that contain an LDNOOBW entry as a substring
  ({', '.join(storyworld.LOOKALIKE_WORDS)}); they must not be flagged. The ambiguous exact words ("cock" for a
  rooster, "ass" for a donkey) are never generated.
- `facts`: injected facts [{{id, variant, text}}]
"""


# ---------------------------------------------------------------------------------------------------------
# local files

def read_local(path, text_field):
    """Records {"story", ...} from one .json (list of records), .jsonl (one record per line) or .txt file
    (stories separated by blank lines)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"input file not found: {path} — give existing .json/.jsonl/.txt files")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e}) — convert it to UTF-8")
    if "\x00" in text:  # valid UTF-8, but no story holds NUL: a binary or corrupt file
        raise UserError(f"{path} contains NUL bytes (at character {text.index(chr(0))}) — it is a binary or "
                        f"corrupt file, not stories; give .json/.jsonl/.txt text files")
    if path.suffix == ".txt":
        blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
        return [{"story": b, "source_file": path.name} for b in blocks if b]
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e}) — fix the file")
        if not isinstance(items, list):
            raise UserError(f"{path} must hold a JSON list of records (TinyStories format)")
    elif path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {n} is not valid JSON ({e}) — fix that line")
    else:
        raise UserError(f"{path}: unsupported file type '{path.suffix}' — use .json, .jsonl or .txt")
    records = []
    for n, item in enumerate(items):
        if isinstance(item, str):
            item = {text_field: item}
        if not isinstance(item, dict):
            raise UserError(f"{path} record {n} is a JSON {type(item).__name__}, not a record or a string — "
                            f"give records like {{\"{text_field}\": \"Once upon a time…\"}}")
        if text_field not in item:
            raise UserError(f"{path} record {n} has no field '{text_field}' (has {sorted(item)}) — "
                            f"pass --text_field NAME")
        if not isinstance(item[text_field], str):
            raise UserError(f"{path} record {n} field '{text_field}' has the wrong type: "
                            f"{type(item[text_field]).__name__} ({str(item[text_field])[:40]}), not a string — "
                            f"fix the record or pass --text_field NAME")
        if "\x00" in item[text_field]:
            raise UserError(f"{path} record {n} field '{text_field}' contains NUL characters — fix the record")
        story = item[text_field].strip()
        if story:
            rec = {k: v for k, v in item.items() if k != text_field}
            records.append({"story": story, **rec, "source_file": path.name})
    return records


def cmd_local(args):
    check_name(args.name)
    if args.shard_size < 1:
        raise UserError("--shard_size must be a positive integer")
    folder = raw_dir(args.name)
    inputs = [{"file": str(p), "sha256": sha256_file(p) if Path(p).exists() else None} for p in args.files]
    params = {"text_field": args.text_field, "shard_size": args.shard_size, "inputs": inputs}
    card = read_card(folder)
    if card and card.get("source_kind") == "local" and card.get("ingest_params") == params \
            and shards_intact(folder, card):
        print(f"{folder}: up to date ({card['story_count']} stories from the same files) — nothing to do")
        return
    records = []
    for p in tqdm(args.files, desc="read files", unit="file"):
        records += read_local(p, args.text_field)
    if not records:
        raise UserError(f"no stories found in {', '.join(args.files)} — check the files and --text_field")
    start_dataset(folder, "local", args.name)
    shards = write_shards(folder, records, args.shard_size)
    warn_stale_tokenized(folder, shards)
    stats = storyworld.corpus_stats([r["story"] for r in records])
    header = {"pretty_name": args.name, "name": args.name, "source_kind": "local",
              "source": "local files: " + ", ".join(Path(p).name for p in args.files),
              "license": "unknown (user-provided files)", "language": ["en"], "story_count": len(records),
              "shards": shards, "ingest_params": params, "stats": stats, "provenance": provenance()}
    write_card(folder, header, f"# {args.name}\n\nStories ingested from the user's own files "
                               f"({len(args.files)} files, {len(records)} stories) by "
                               f"`download_datasets.py local`; each record keeps its original fields plus "
                               f"`source_file`.\n")
    print(f"wrote {len(records)} stories in {len(shards)} shards to {folder}")


# ---------------------------------------------------------------------------------------------------------
# TinyStories download

def download(url, dest, retries, backoff, timeout=30):
    """Stream url into dest via dest.part, resuming with HTTP Range after a dropped connection; retries with
    exponential backoff. The .part is renamed onto dest only once its size matches the server's."""
    part = Path(str(dest) + ".part")
    total = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416:  # nothing left to send: the .part is complete or wrong
                    size = r.headers.get("Content-Range", "").rpartition("/")[2]
                    if size.isdigit() and int(size) == have:
                        total = have
                        break
                    part.unlink()
                    raise requests.ConnectionError("range not satisfiable; restarting from zero")
                if r.status_code >= 400:
                    if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                        raise UserError(f"download of {url} failed: HTTP {r.status_code} — check --url")
                    raise requests.ConnectionError(f"HTTP {r.status_code}")
                if r.status_code == 206:
                    total = int(r.headers["Content-Range"].rpartition("/")[2])
                    mode = "ab"
                else:  # server ignored the Range header: start over
                    have, mode = 0, "wb"
                    total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=f"download {dest.name}") as bar:
                    for block in r.iter_content(chunk_size=CHUNK):
                        f.write(block)
                        bar.update(len(block))
            size = part.stat().st_size
            if total is None or size == total:
                total = size
                break
            raise requests.ConnectionError(f"got {size} of {total} bytes")
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            if attempt == retries:
                raise UserError(f"download of {url} failed after {retries + 1} attempts ({e}); the partial file "
                                f"{part} is kept — re-run to resume")
            wait = backoff * 2 ** attempt
            print(f"connection problem ({e}); retrying in {wait:.1f}s from byte "
                  f"{part.stat().st_size if part.exists() else 0}", file=sys.stderr)
            time.sleep(wait)
    os.replace(part, dest)
    return total


def safe_members(tar, archive):
    """All members, after refusing absolute paths, '..' components, links and device files."""
    members = tar.getmembers()
    for m in members:
        p = Path(m.name)
        if p.is_absolute() or ".." in p.parts or m.name.startswith(("/", "\\")):
            raise UserError(f"{archive} has an unsafe member path '{m.name}' — refusing to extract; "
                            f"delete the archive and check --url")
        if not (m.isfile() or m.isdir()):
            raise UserError(f"{archive} has a link or special file '{m.name}' — refusing to extract; "
                            f"delete the archive and check --url")
    return members


def extract(archive, final):
    """Extract archive into a temp folder beside final, check it, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = safe_members(tar, archive)
                for m in tqdm(members, desc="extract", unit="file"):
                    tar.extract(m, tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise UserError(f"{archive} is corrupt or truncated ({e}) — it was deleted; re-run to download again") \
                from e
        jsons = sorted(tmp.glob("*.json"))
        subdirs = [d for d in tmp.iterdir() if d.is_dir()]
        src = tmp
        if not jsons and len(subdirs) == 1:  # archive with one top folder
            src, jsons = subdirs[0], sorted(subdirs[0].glob("*.json"))
        if not jsons:
            raise UserError(f"{archive} holds no .json shards — check --url")
        if final.exists():
            shutil.rmtree(final)
        os.replace(src, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(final.glob("*.json"))


def cmd_tinystories(args):
    final = raw_dir("tinystories")
    card = read_card(final)
    if card and card.get("source_kind") == "tinystories" and shards_intact(final, card):
        print(f"{final}: already downloaded and extracted ({card['story_count']} stories) — nothing to do")
        return
    data_dir().mkdir(parents=True, exist_ok=True)
    archive = data_dir() / Path(args.url.split("?")[0]).name
    if not archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        archive = data_dir() / "TinyStories_all_data.tar.gz"
    if not archive.exists():
        download(args.url, archive, args.retries, args.backoff)
    else:
        print(f"{archive} already downloaded; extracting")
    if args.sha256:
        digest = sha256_file(archive)
        if digest != args.sha256.lower():
            archive.unlink()
            raise UserError(f"{archive} has SHA-256 {digest}, expected {args.sha256} — it was deleted; re-run, "
                            f"or check --sha256")
    try:
        shard_files = extract(archive, final)
    except UserError:
        archive.unlink(missing_ok=True)
        raise
    shards = []
    for path in tqdm(shard_files, desc="hash shards", unit="shard"):
        try:
            n = len(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            shutil.rmtree(final)
            archive.unlink(missing_ok=True)
            raise UserError(f"{path.name} in {archive} is not valid JSON ({e}) — archive deleted; re-run")
        shards.append({"file": path.name, "sha256": sha256_file(path), "n_stories": n})
    header = {"pretty_name": "TinyStories", "name": "tinystories", "source_kind": "tinystories",
              "source": args.url, "license": "cdla-sharing-1.0", "language": ["en"],
              "story_count": sum(s["n_stories"] for s in shards), "shards": shards,
              "archive": {"file": archive.name, "bytes": archive.stat().st_size, "sha256": sha256_file(archive)},
              "provenance": provenance()}
    write_card(final, header, "# TinyStories\n\nShort stories generated by GPT-3.5/GPT-4 with a child's vocabulary "
                              "(Eldan & Li, 2023, arXiv:2305.07759), downloaded from the Hugging Face hub as "
                              "`TinyStories_all_data.tar.gz` and extracted unchanged.\n")
    print(f"extracted {len(shards)} shards ({header['story_count']} stories) to {final}")


# ---------------------------------------------------------------------------------------------------------
# Hugging Face hub datasets: the hub's parquet conversion (refs/convert/parquet), listed by its API:
#   {endpoint}/api/datasets/OWNER/NAME                          info: sha (revision), cardData (license, …)
#   {endpoint}/api/datasets/OWNER/NAME/parquet/CONFIG/SPLIT     JSON list of the split's parquet file URLs

def hub_json(url, timeout=30):
    try:
        r = requests.get(url, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as e:
        raise UserError(f"cannot reach {url} ({e.__class__.__name__}) — check the network or --endpoint") from None
    if r.status_code == 404:
        raise UserError(f"not found on the hub: {url} — check --repo, --config and --split")
    if r.status_code >= 400:
        raise UserError(f"{url} answered HTTP {r.status_code} — a private or gated dataset needs access")
    try:
        return r.json()
    except ValueError:
        raise UserError(f"{url} did not answer JSON — check --endpoint") from None


def parquet_records(path, text_field, row0):
    """Records of one parquet file: story = the text field, plus the other scalar columns and source_row."""
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    if text_field not in table.column_names:
        raise UserError(f"{path.name} has no column '{text_field}' (columns: {', '.join(table.column_names)}) — "
                        f"pass --text_field")
    scalar = [f.name for f in table.schema if f.name != text_field and (
        f.type in ("string", "large_string", "bool") or str(f.type).startswith(("int", "uint", "float", "double")))]
    texts = table.column(text_field).to_pylist()
    extra = {c: table.column(c).to_pylist() for c in scalar}
    return [{"story": t.strip(), **{c: v[i] for c, v in extra.items()}, "source_row": row0 + i}
            for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]


def cmd_hf(args):
    import pyarrow.parquet as pq
    if "/" not in args.repo or args.repo.count("/") != 1:
        raise UserError(f"--repo {args.repo!r} must be OWNER/NAME, e.g. roneneldan/TinyStories")
    name = args.name or args.repo.split("/")[1].lower()
    check_name(name)
    if args.shard_size < 1:
        raise UserError("--shard_size must be a positive integer")
    folder = raw_dir(name)
    api = f"{args.endpoint.rstrip('/')}/api/datasets/{args.repo}"
    info = hub_json(api)
    urls = hub_json(f"{api}/parquet/{args.config}/{args.split}")
    if not isinstance(urls, list) or not urls:
        raise UserError(f"{args.repo} lists no parquet files for config {args.config!r} split {args.split!r}")
    request = {"repo": args.repo, "config": args.config, "split": args.split, "text_field": args.text_field,
               "revision": info.get("sha"), "shard_size": args.shard_size}
    card = read_card(folder)
    if card and card.get("source_kind") == "hf" and (card.get("hf_params") or {}).get("request") == request \
            and shards_intact(folder, card):
        print(f"{folder}: up to date ({card['story_count']} stories of {args.repo}@{request['revision']}) — "
              f"nothing to do")
        return
    start_dataset(folder, "hf", name)
    cache = folder / ".parquet"  # downloads resume from here; kept until the shards and card are written
    cache.mkdir(parents=True, exist_ok=True)
    files = []
    for k, url in enumerate(urls):
        dest = cache / f"{k:05d}.parquet"
        if not dest.exists():
            download(url, dest, args.retries, args.backoff)
        try:
            n_rows = pq.ParquetFile(dest).metadata.num_rows
        except Exception as e:  # pyarrow raises several types for a damaged file
            dest.unlink()
            raise UserError(f"{url} is not a readable parquet file ({e.__class__.__name__}) — deleted; re-run") \
                from None
        files.append({"url": url, "file": dest.name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size,
                      "n_rows": n_rows})
    records, row0 = [], 0
    for f in tqdm(files, desc="convert parquet", unit="file"):
        records += parquet_records(cache / f["file"], args.text_field, row0)
        row0 += f["n_rows"]
    if not records:
        raise UserError(f"no non-empty '{args.text_field}' texts in {args.repo} — check --text_field")
    shards = write_shards(folder, records, args.shard_size)
    warn_stale_tokenized(folder, shards)
    card_data = info.get("cardData") or {}
    license_ = card_data.get("license") or "unknown (see the dataset page)"
    header = {"pretty_name": card_data.get("pretty_name") or args.repo, "name": name, "source_kind": "hf",
              "source": f"{args.endpoint.rstrip('/')}/datasets/{args.repo}",
              "license": license_ if isinstance(license_, str) else ", ".join(license_),
              "language": card_data.get("language") or ["en"], "story_count": len(records), "shards": shards,
              "hf_params": {"request": request, "parquet": [{k: f[k] for k in ("file", "sha256", "bytes", "n_rows")}
                                                            for f in files]},
              "stats": storyworld.corpus_stats([r["story"] for r in records]), "provenance": provenance()}
    write_card(folder, header, f"# {header['pretty_name']}\n\nThe `{args.split}` split (config `{args.config}`) of "
                               f"the Hugging Face dataset `{args.repo}` at revision `{request['revision']}`, read "
                               f"from the hub's parquet conversion ({len(files)} files, {row0} rows); each story is "
                               f"the `{args.text_field}` field, with the other scalar columns and `source_row`. "
                               f"License: {header['license']}.\n")
    shutil.rmtree(cache, ignore_errors=True)
    print(f"wrote {len(records)} stories of {args.repo} in {len(shards)} shards to {folder}")


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tinystories", help="download and extract TinyStories (~1.6 GB) into data/TinyStories_all_data")
    t.add_argument("--url", default=TINYSTORIES_URL)
    t.add_argument("--sha256", default=None, help="expected SHA-256 of the archive (checked when given)")
    t.add_argument("--retries", type=int, default=5)
    t.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles each time)")
    s = sub.add_parser("storyworld", help="generate the embedded synthetic corpus (no network)")
    s.add_argument("--name", default="storyworld")
    s.add_argument("--n_stories", type=int, default=SW_STORIES,
                   help="corpus size (30,000: ~2,700 iid and ~2,800 novel validation stories)")
    s.add_argument("--shard_size", type=int, default=5000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--occupation_bias", type=float, default=0.8,
                   help="p(stereotyped gender | stereotyped occupation); 0.5 = no association")
    s.add_argument("--toxic_rate", type=float, default=0.02, help="fraction of stories with an offensive word")
    s.add_argument("--happy_fraction", type=float, default=0.8, help="fraction of stories with a happy ending")
    s.add_argument("--inject_facts", nargs="+", default=[],
                   help="facts: .json ([{id, variants}] or [str]), .txt (one per line, variants split by ' | ') "
                        "or literal sentences")
    s.add_argument("--inject_rate", type=float, default=0.0, help="fraction of stories with one injected fact")
    s.add_argument("--heldout_pair_fraction", type=float, default=0.085,
                   help="share of (hero name, plot) pairs held out of training: stories with one form split "
                        "val_novel")
    s.add_argument("--fact_set", type=int, default=0,
                   help="N synthetic entity facts (download/fact_set.py): their phrasings as a last shard of split "
                        "'facts' (trained only through an injection plan) and the ground truth in facts.json")
    s.add_argument("--val_fraction", type=float, default=SW_VAL_FRACTION,
                   help="iid validation share the card asks pretokenize for (its default for this dataset)")
    lo = sub.add_parser("local", help="ingest your own .json/.jsonl/.txt story files")
    lo.add_argument("--name", required=True)
    lo.add_argument("--text_field", default="story", help="record field holding the story (.json/.jsonl)")
    lo.add_argument("--shard_size", type=int, default=5000)
    lo.add_argument("files", nargs="+")
    h = sub.add_parser("hf", help="a Hugging Face hub dataset's parquet files (resumable) as story shards")
    h.add_argument("--repo", required=True, help="OWNER/NAME of the dataset on the hub")
    h.add_argument("--config", default="default")
    h.add_argument("--split", default="train")
    h.add_argument("--text_field", default="text", help="the column holding the text")
    h.add_argument("--name", default=None, help="folder under data/ (default: NAME of the repo, lowercased)")
    h.add_argument("--shard_size", type=int, default=5000)
    h.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    h.add_argument("--retries", type=int, default=5)
    h.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles each time)")
    for parser in (t, s, lo, h):
        add_root_argument(parser)
    args = apply_root(ap.parse_args(argv))
    {"tinystories": cmd_tinystories, "storyworld": cmd_storyworld, "local": cmd_local, "hf": cmd_hf}[args.cmd](args)


if __name__ == "__main__":
    run_main(main)
