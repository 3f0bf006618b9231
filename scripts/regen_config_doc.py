"""Regenerate the key table of docs/config.md from the config dataclasses (tests/test_docs.py checks it).

Usage: python scripts/regen_config_doc.py
"""

import re
from pathlib import Path

from iml_genomics.config import config_reference_markdown

doc_path = Path(__file__).resolve().parent.parent / "docs" / "config.md"
doc = doc_path.read_text()
table = re.compile(r"\| key \| type \| default \| meaning \|\n(?:\|.*\|\n)+")
if not table.search(doc):
    raise SystemExit(f"{doc_path}: no '| key | type | default | meaning |' table to replace")
doc_path.write_text(table.sub(lambda _: config_reference_markdown(), doc, count=1))
print(f"rewrote the key table of {doc_path}")
