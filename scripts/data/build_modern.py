"""Build mohawk/assets/modern/{train,validation}.jsonl.xz: modern English prose from the NLTK data repository.

    python3 scripts/data/build_modern.py ../shared/data/nltk mohawk/assets/modern

Sources (each zip carries its README; commit in SOURCE_COMMIT): abc (ABC rural and science news, 2006), brown (the
Brown corpus, 1961 American English, POS tags stripped), webtext (forums, scripts, ads, a wine diary), inaugural (US
inaugural addresses 1789-2021), state_union (State of the Union addresses 1945-2006). Every file is cut into
documents of about 8,000 characters at paragraph breaks; 1 document in 20 (by a hash of its source and index) is
held out for validation. Deterministic: the same inputs give the same bytes."""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import sys
import zipfile
from pathlib import Path

CORPORA = ("abc", "brown", "webtext", "inaugural", "state_union")
SKIP = {"README", "CONTENTS", "cats.txt"}


def brown_text(raw: str) -> str:
    """'The/at jury/nn said/vbd ./.' -> 'The jury said.' (paragraphs kept)."""
    paras = []
    for block in re.split(r"\n\s*\n", raw):
        words = [w.rsplit("/", 1)[0] for w in block.split()]
        if not words:
            continue
        text = " ".join(words).replace("``", '"').replace("''", '"')
        text = re.sub(r" ([.,;:!?)])", r"\1", text)
        text = re.sub(r"([(]) ", r"\1", text)
        paras.append(text)
    return "\n\n".join(paras)


def documents(name: str, text: str, size: int = 8000):
    paras = [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\x85", "\n")) if p.strip()]
    doc, n = [], 0
    for p in paras:
        doc.append(p)
        n += len(p)
        if n >= size:
            yield "\n\n".join(doc)
            doc, n = [], 0
    if doc:
        yield "\n\n".join(doc)


def _decode(data: bytes) -> str:
    """UTF-8 where the file is UTF-8 (the wine diary), else Latin-1 (the older NLTK files)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def main(src: Path, out: Path) -> None:
    train, val = [], []
    for corpus in CORPORA:
        with zipfile.ZipFile(src / f"{corpus}.zip") as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                base = info.filename.rsplit("/", 1)[-1]
                if info.is_dir() or base in SKIP:
                    continue
                raw = _decode(z.read(info))
                text = brown_text(raw) if corpus == "brown" else raw
                for i, doc in enumerate(documents(corpus, text)):
                    title = f"{info.filename}#{i}"
                    row = {"source": corpus, "title": title, "text": doc}
                    key = int(hashlib.blake2b(title.encode(), digest_size=4).hexdigest(), 16)
                    (val if key % 20 == 0 else train).append(row)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", val)):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        (out / f"{name}.jsonl.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        print(f"{name}: {len(rows)} documents, {sum(len(r['text']) for r in rows) / 1e6:.1f}M characters")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
