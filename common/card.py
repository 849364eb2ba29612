"""The dataset card (data/<raw>/README.md): a YAML header between --- lines, then markdown prose (Hugging Face
style). The download stage writes it; pretokenize adds the validation section (split sizes, sentence overlap).
"""
from pathlib import Path

import yaml

from common.io import atomic_write_text

CARD = "README.md"


def read_card(folder):
    """The YAML header of a dataset card as a dict, or None when there is no card."""
    path = Path(folder) / CARD
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return None
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def write_card(folder, header, prose):
    """Dataset card in Hugging Face style: YAML header between --- lines, then markdown prose."""
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120) + "---\n\n" + prose
    atomic_write_text(Path(folder) / CARD, text)


def update_card_section(folder, key, value, heading, prose):
    """Set header[key] = value and replace (or append) the prose section '## heading' of an existing card.
    Returns False when the folder has no card (nothing written)."""
    header = read_card(folder)
    if header is None:
        return False
    text = (Path(folder) / CARD).read_text(encoding="utf-8")
    body = text[text.index("\n---\n", 4) + 5:].lstrip("\n")
    mark = f"## {heading}\n"
    if mark in body:  # drop the old section: up to the next '## ' heading or the end
        start = body.index(mark)
        nxt = body.find("\n## ", start + len(mark))
        body = body[:start] + (body[nxt + 1:] if nxt >= 0 else "")
    body = body.rstrip("\n") + "\n\n" + mark + "\n" + prose.rstrip("\n") + "\n"
    header[key] = value
    write_card(folder, header, body)
    return True
