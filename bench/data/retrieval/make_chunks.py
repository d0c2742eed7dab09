"""Cut docs/*.md into the retrieval set's chunks (chunks.jsonl): each section's paragraphs merged up to
about 60 words, never across a heading, each chunk prefixed by its document and heading. Run once to
freeze the set (the questions in questions.jsonl are labelled with these ids); the docs may change
afterwards without changing the set.

    python bench/data/retrieval/make_chunks.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TARGET_WORDS = 60


def chunks_of(path: Path) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    heading = path.stem
    buffer: list[str] = []
    in_code = False

    def flush() -> None:
        text = "\n".join(buffer).strip()
        if len(text.split()) >= 12:
            out.append({"doc": path.name, "heading": heading, "text": text})
        buffer.clear()

    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"^#{1,4} ", line):
            flush()
            heading = line.lstrip("#").strip()
            continue
        if not in_code and not line.strip() and len(" ".join(buffer).split()) >= TARGET_WORDS:
            flush()
            continue
        buffer.append(line)
    flush()
    return out


def main() -> None:
    rows = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for i, c in enumerate(chunks_of(path)):
            rows.append({"id": f"{path.stem}-{i:03d}", **c})
    target = Path(__file__).with_name("chunks.jsonl")
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} chunks -> {target}")


if __name__ == "__main__":
    main()
