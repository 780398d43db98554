"""Build mohawk/assets/eval/hellaswag.jsonl.xz from the 6-line text dump of HellaSwag's validation set.

    python3 scripts/data/build_hellaswag.py ../shared/data/hellaswag/hellaswag_val_full.txt.bz2 \
        mohawk/assets/eval/hellaswag.jsonl.xz

The dump (github.com/klosax/hellaswag_text_data, extracted from rowanz/hellaswag data/hellaswag_val.jsonl, MIT) gives
per item ``activity_label: ctx``, the gold label and four endings. lm-evaluation-harness builds the query as
``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())``; the dump has ``ctx = ctx_a + " " + ctx_b``
with ctx_b in lower case. ctx_b is the incomplete phrase after ctx_a's last sentence (ActivityNet items; WikiHow
items end with a full sentence and have none), so it is the text after the context's last ``. `` / ``! `` / ``? ``
when the context does not end a sentence; it gets Python's ``str.capitalize`` as in the harness. Then the harness's
``preprocess`` (strip, " [title]" -> ". ", drop [tags], collapse double spaces) on query and endings."""

from __future__ import annotations

import bz2
import json
import lzma
import re
import sys
from pathlib import Path


def preprocess(text: str) -> str:
    """lm-eval's hellaswag preprocess."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def restore_ctx_b(context: str) -> str:
    """``label: ctx_a ctx_b`` -> ``label: ctx_a Ctx_b`` (see module docstring); unchanged without a ctx_b."""
    if context.rstrip()[-1:] in (".", "!", "?"):
        return context
    ends = list(re.finditer(r"[.!?]\"? ", context))
    if not ends:
        return context
    head, tail = context[: ends[-1].end()], context[ends[-1].end() :]
    return head + tail.capitalize() if tail[:1].islower() else context


def items(dump: str):
    lines = dump.split("\n")
    for i in range(0, len(lines) - 5, 6):
        context, gold, *endings = lines[i : i + 6]
        yield {
            "query": preprocess(restore_ctx_b(context)),
            "choices": [preprocess(e) for e in endings],
            "gold": int(gold),
        }


def main(src: Path, out: Path) -> None:
    rows = list(items(bz2.open(src, "rt", encoding="utf-8").read()))
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    out.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    print(f"{len(rows)} items -> {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
