"""A seeded set of synthetic entity facts with ground truth, written with a storyworld dataset (issue 18).

Each fact ties an invented entity ("Zarimo the otter") to an invented town ("Keluvo"): names are built from
syllables and checked against every word storyworld writes, so a fact occurs nowhere in the stories and a model
can only know it from the fact documents it was shown. Both sides are unique within the set, so the reverse
question ("The town of Keluvo is the home of …") has exactly one answer, as in Berglund et al.'s reversal test.

Phrasings are sentences with the answer last, so a phrasing's prefix is a cloze question for it:
    forward    FORWARD[j] (entity first, town last): the trained phrasings; FORWARD[0] is the canonical one
    reverse    REVERSE[j] (town first, entity last): trained only where a plan shows reverse phrasings
    held-out   HELDOUT_FORWARD / HELDOUT_REVERSE: never written as documents, only asked (paraphrase transfer)
Questions (prompt, answer): forward = FORWARD[0]'s prefix -> town, reverse = REVERSE[0]'s prefix -> entity,
paraphrase_forward / paraphrase_reverse = the held-out prefixes.

Documents: one per (fact, direction, trained phrasing), records {"story", "split_hint": "facts", "fact_doc":
{fact_id, direction, phrasing}} written after the stories as the dataset's last shard; pretokenize puts them in
split "facts", which no sampler selects, so they reach training only through an injection plan
(modelling/injection.py). The ground truth goes to data/<name>/fact_set/facts.json (FORMATS.md).

    facts = make_facts(n_facts, seed); docs = fact_documents(facts); write_facts(folder, facts, seed)
"""
import random
import re

FACTS_FORMAT = 1
FACTS_FILE = "fact_set/facts.json"  # a subfolder: every *.json beside the card is a story shard
FACT_SPLIT = "facts"
# answer last; "{e}" the entity ("Zarimo the otter"), "{v}" the town ("Keluvo")
FORWARD = (
    "{e} lives in the town of {v}.",
    "The home of {e} is the town of {v}.",
    "{e} has a little house in the town of {v}.",
    "If you want to visit {e}, you must go to the town of {v}.",
    "{e} was born and grew up in the town of {v}.",
    "Everyone knows that {e} lives in {v}.",
    "The town that {e} calls home is {v}.",
    "{e} would never leave the town of {v}.",
    "Every morning {e} walks around the streets of {v}.",
    "The place where {e} lives is called {v}.",
)
REVERSE = (
    "The town of {v} is the home of {e}.",
    "In the town of {v} lives {e}.",
    "The one who lives in the town of {v} is {e}.",
    "If you go to the town of {v}, you will meet {e}.",
    "The most famous one in the town of {v} is {e}.",
    "Everyone in {v} knows their neighbour {e}.",
    "The town of {v} was where they found {e}.",
    "A little house in {v} belongs to {e}.",
    "The streets of {v} are walked every morning by {e}.",
    "Who lives in {v}? It is {e}.",
)
HELDOUT_FORWARD = (
    "You can always find {e} at home in the town of {v}.",
    "Ask anyone where {e} lives and they will say {v}.",
    "The town where {e} has always lived is {v}.",
)
HELDOUT_REVERSE = (
    "Living in the town of {v} you will find {e}.",
    "Ask anyone who lives in {v} and they will say {e}.",
    "The town of {v} has always been the home of {e}.",
)
ANIMALS = ("otter", "badger", "heron", "lynx", "moose", "walrus", "beaver", "ferret", "gecko", "yak", "camel",
           "stork", "weasel", "newt", "bison", "crane", "koala", "panda", "tapir", "wombat")
ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "tr", "sk")
VOWELS = ("a", "e", "i", "o", "u")
CODAS = ("", "", "", "n", "r", "l", "m", "k")


def _templates_ok():
    for t in FORWARD + HELDOUT_FORWARD:
        assert t.endswith("{v}.") and t.count("{v}") == 1 and t.count("{e}") == 1, t
    for t in REVERSE + HELDOUT_REVERSE:
        assert t.endswith("{e}.") and t.count("{v}") == 1 and t.count("{e}") == 1, t


_templates_ok()


def storyworld_words():
    """Every lower-case word storyworld's own lists and templates can write (invented names must avoid them)."""
    from download import storyworld
    words = set()
    for value in vars(storyworld).values():
        items = value if isinstance(value, (tuple, list)) else [value] if isinstance(value, str) else []
        for item in items:
            if isinstance(item, str):
                words |= set(re.findall(r"[a-z]+", item.lower()))
            elif isinstance(item, dict):
                words |= set(re.findall(r"[a-z]+", repr(item).lower()))
    return words


def _name(rng, n_syllables):
    parts = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(n_syllables)]
    return (("".join(parts)) + rng.choice(CODAS)).capitalize()


def _unique_names(rng, n, taken):
    out = []
    while len(out) < n:
        name = _name(rng, rng.choice((2, 3)))
        if name.lower() not in taken:
            taken.add(name.lower())
            out.append(name)
    return out


def _question(template, entity, town):
    """(prompt, answer) of a phrasing: the text before its last slot, and that slot's filler."""
    last = "{v}" if template.endswith("{v}.") else "{e}"
    prompt = template[:template.rindex(last)].rstrip().format(e=entity, v=town)
    return {"prompt": prompt, "answer": town if last == "{v}" else entity}


def make_facts(n_facts, seed):
    """n_facts facts, the same for the same (n_facts, seed); a larger set starts with the smaller one's
    entities only by chance (names are drawn together), so record the set with the dataset."""
    if n_facts < 2:
        raise ValueError("a fact set needs at least 2 facts (the reverse question ranks entities)")
    rng = random.Random(f"storyworld-facts-{seed}")
    taken = storyworld_words() | set(ANIMALS)
    names, towns = _unique_names(rng, n_facts, taken), _unique_names(rng, n_facts, taken)
    facts = []
    for i, (name, town) in enumerate(zip(names, towns)):
        entity = f"{name} the {rng.choice(ANIMALS)}"
        fill = dict(e=entity, v=town)
        facts.append({
            "id": f"f{i:03d}", "entity": entity, "name": name, "town": town,
            "forward": [t.format(**fill) for t in FORWARD],
            "reverse": [t.format(**fill) for t in REVERSE],
            "heldout_forward": [t.format(**fill) for t in HELDOUT_FORWARD],
            "heldout_reverse": [t.format(**fill) for t in HELDOUT_REVERSE],
            "questions": {
                "forward": [_question(FORWARD[0], entity, town)],
                "reverse": [_question(REVERSE[0], entity, town)],
                "paraphrase_forward": [_question(t, entity, town) for t in HELDOUT_FORWARD],
                "paraphrase_reverse": [_question(t, entity, town) for t in HELDOUT_REVERSE],
            },
        })
    return facts


def fact_documents(facts):
    """The trained phrasings as dataset records, in a fixed order: fact, then forward phrasings, then reverse."""
    docs = []
    for fact in facts:
        for direction in ("forward", "reverse"):
            for j, text in enumerate(fact[direction]):
                docs.append({"story": text, "split_hint": FACT_SPLIT,
                             "fact_doc": {"fact_id": fact["id"], "direction": direction, "phrasing": j}})
    return docs


def fact_set_header(facts, seed):
    """facts.json: the set with its templates and seed (the documents follow from it)."""
    return {"format": FACTS_FORMAT, "seed": seed, "n_facts": len(facts), "split": FACT_SPLIT,
            "templates": {"forward": FORWARD, "reverse": REVERSE, "heldout_forward": HELDOUT_FORWARD,
                          "heldout_reverse": HELDOUT_REVERSE},
            "documents": "one per (fact, direction, trained phrasing) in fact order, forward then reverse; the "
                         "dataset's last shard, split 'facts'",
            "facts": facts}


def load_fact_set(dataset):
    """facts.json of a raw dataset folder (data/<dataset>/fact_set/facts.json)."""
    import json

    from common.errors import UserError
    from common.paths import raw_dir
    path = raw_dir(dataset) / FACTS_FILE
    if not path.exists():
        raise UserError(f"{path} not found — generate the dataset with a fact set: python "
                        f"download/download_datasets.py storyworld --name {dataset} --fact_set 64")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{path} is corrupt ({e}) — regenerate the dataset") from None
    if header.get("format") != FACTS_FORMAT:
        raise UserError(f"{path} has format {header.get('format')}, this code reads {FACTS_FORMAT} — regenerate it")
    return header


def document_ids(ds, facts):
    """{(fact_id, direction, phrasing): story id} of a tokenized dataset's fact documents. The documents are
    the split 'facts' in story-id order, as fact_documents wrote them; every text is checked against them."""
    from common.errors import UserError
    ids = ds.story_ids(FACT_SPLIT)
    docs = fact_documents(facts)
    if len(ids) != len(docs):
        raise UserError(f"{ds.dir} holds {len(ids)} fact documents but its facts.json implies {len(docs)} — "
                        f"re-run pretokenize on the regenerated dataset")
    out = {}
    for story_id, doc in zip(ids.tolist(), docs):
        if ds.text(story_id) != doc["story"]:
            raise UserError(f"fact document {story_id} of {ds.dir} does not match facts.json — re-run pretokenize")
        ref = doc["fact_doc"]
        out[(ref["fact_id"], ref["direction"], ref["phrasing"])] = story_id
    return out
