"""Builds set.json, the labelled retrieval set of bench/bench_embeddings.py, from Realm's own docs/.

Each `##`/`###` section of docs/*.md (its first 1,200 characters, without the heading) is a
chunk; each heading of three words or more is a question whose one right answer is its own section's
chunk. Recall@5 is then: how often the right section is among the five chunks nearest the heading.
Headings are short, the sections long and partly about neighbouring topics, so this is a fair (not an
easy) proxy for "find the passage that answers this". Rerun it when docs/ changes much: set.json is
what is measured.

Usage: python bench/data/retrieval/make_set.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEADING = re.compile(r"^(#{2,3})\s+(.+?)\s*$", re.MULTILINE)


def sections(path: Path) -> list[tuple[str, str]]:
    text = path.read_text()
    marks = list(HEADING.finditer(text))
    out = []
    for m, nxt in zip(marks, [*marks[1:], None], strict=True):
        body = text[m.end() : nxt.start() if nxt else len(text)].strip()
        if body:
            out.append((m.group(2).strip("` "), body[:1200]))
    return out


def main() -> None:
    chunks, questions = [], []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for title, body in sections(path):
            cid = f"{path.name}#{len(chunks)}"
            chunks.append({"id": cid, "text": body})
            words = re.findall(r"[A-Za-z]+", title)
            if len(words) >= 3:
                questions.append({"question": title, "answers": [cid]})
    out = Path(__file__).with_name("set.json")
    out.write_text(json.dumps({"chunks": chunks, "questions": questions}, indent=1) + "\n")
    print(f"{len(chunks)} chunks, {len(questions)} questions -> {out}")


if __name__ == "__main__":
    main()
