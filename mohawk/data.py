"""Corpus -> tokenized, packed, deterministic batches (batch, seq_len), streamed so any corpus size works.

Sources: a vendored corpus by name (see CORPORA: "bundled", "gutenberg", "modern"; "a+b" mixes them), "recall"
(synthetic key-value retrieval text made from a seed, mohawk.synthetic), a local file or directory (.txt, .jsonl /
.json, optionally .gz / .xz / .bz2 compressed, .parquet), or a Hugging Face dataset name (loaded through ``datasets`` in
streaming mode). Documents are cut into pieces of about ``piece_chars`` characters at paragraph breaks; the pieces of
several sources (files) are drawn at random in proportion to the sources' sizes, so that any stretch of the stream mixes
them at their shares; then shuffled in a seeded buffer, tokenized, joined with the EOS token and packed into fixed-
length sequences. Without a separate validation source, a deterministic share of the pieces is held out (see
``holdout``): 1 in ``val_every`` by a hash of the piece, or, for a corpus of fewer than 10 x ``val_every`` pieces, the
10% of pieces with the smallest hashes, so that any corpus large enough to train on gets a validation split.

The vendored files live in the package (mohawk/assets), so an installed wheel runs the default from any directory.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import queue
import random
import threading
import typing
from collections.abc import Generator, Iterator
from pathlib import Path

import torch

from mohawk.errors import MohawkError, looks_local

ASSETS = Path(__file__).resolve().parent / "assets"  # vendored corpora, task files and samples (package data)
# name -> (training files, validation files) under ASSETS; "a+b" joins corpora
CORPORA = {
    "bundled": (["gutenberg/train-000.jsonl.xz"], ["gutenberg/validation.jsonl.xz"]),
    "gutenberg": (["gutenberg/train-000.jsonl.xz", "gutenberg/train-001.jsonl.xz"], ["gutenberg/validation.jsonl.xz"]),
    "modern": (["modern/train.jsonl.xz"], ["modern/validation.jsonl.xz"]),
}
SYNTHETIC_RECALL = "recall"  # generated key-value retrieval text (mohawk.synthetic)
TEACHER_TEXT = "teacher"  # text the teacher writes, sampled by mohawk distill (mohawk.teachers.sample)
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def open_text(path: Path) -> typing.TextIO:
    """``path`` opened for reading UTF-8 text, decompressed by its suffix (.gz, .xz, .bz2)."""
    if path.suffix in (".gz", ".xz", ".bz2"):
        opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}[path.suffix]
        return opener(path, "rt", encoding="utf-8", errors="strict")  # type: ignore[operator]
    return open(path, encoding="utf-8", errors="strict")


def _kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".xz", ".bz2")]
    last = suffixes[-1] if suffixes else ""
    if last in TEXT_SUFFIXES:
        return "text"
    if last in JSON_SUFFIXES:
        return "json"
    if last == ".parquet":
        return "parquet"
    raise MohawkError(f"unsupported data file {path}: use .txt, .jsonl/.json (optionally .gz/.xz/.bz2) or .parquet")


def _read_file(path: Path, field: str) -> Iterator[str]:
    kind = _kind(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.ParquetFile(path)
            if field not in table.schema_arrow.names:
                raise MohawkError(f"{path}: no column {field!r} (columns: {', '.join(table.schema_arrow.names)})")
            for batch in table.iter_batches(columns=[field]):
                yield from (t for t in batch.column(0).to_pylist() if t)
            return
        with open_text(path) as f:
            if kind == "text":
                yield f.read()
                return
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise MohawkError(f"{path}:{n}: not valid JSON") from None
                if not isinstance(record, dict) or field not in record:
                    raise MohawkError(f"{path}:{n}: no field {field!r} (set --text-field)")
                if isinstance(record[field], str):
                    yield record[field]
    except UnicodeDecodeError:
        raise MohawkError(f"{path}: not UTF-8 text (binary file?)") from None
    except (EOFError, lzma.LZMAError, OSError, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid
        raise MohawkError(f"{path}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


DATA_SUFFIXES = (".gz", ".xz", ".bz2", ".parquet", *TEXT_SUFFIXES, *JSON_SUFFIXES)


def data_parts(spec: str, flag: str = "--data", *, teacher_text: bool = True) -> list[str]:
    """The parts of a data value, the grammar every command reads: ``a+b+...``, each part a vendored corpus name
    (CORPORA), ``recall`` (generated key-value text), ``teacher`` (text the teacher writes: only where
    ``teacher_text``, i.e. ``mohawk distill``'s --data), a local file or directory, or a Hugging Face dataset name
    (``name`` or ``name:config``). A value that exists as a path is one part even if it holds a ``+``. An empty value
    or an empty part (``''``, ``a+``, ``+b``, ``a++b``) is a MohawkError naming ``flag``: it would otherwise read
    whatever lies in the current directory."""
    if spec and Path(spec).expanduser().exists():
        return [spec]
    parts = spec.split("+")
    if not spec.strip() or any(not p.strip() for p in parts):
        raise MohawkError(
            f"bad value for {flag}: {spec!r} (an empty part: give corpus names, paths or dataset names joined by '+')"
        )
    if not teacher_text and TEACHER_TEXT in parts:
        raise MohawkError(
            f"bad value for {flag}: {spec!r} ('{TEACHER_TEXT}', text the teacher writes, is a source of mohawk "
            "distill's --data only)"
        )
    return parts


def writes_teacher_text(spec: str) -> bool:
    """The data value has a ``teacher`` part: text the teacher writes first."""
    return TEACHER_TEXT in data_parts(spec)


def without_teacher_text(spec: str) -> str | None:
    """The data value without its ``teacher`` part; None when nothing else is left."""
    return "+".join(p for p in data_parts(spec) if p != TEACHER_TEXT) or None


def with_teacher_text(spec: str, path: Path) -> str:
    """The data value with its ``teacher`` part replaced by ``path``, the corpus the teacher wrote."""
    return "+".join(str(path) if p == TEACHER_TEXT else p for p in data_parts(spec))


def _is_local(part: str) -> bool:
    return looks_local(part.split(":", 1)[0] if not part.startswith(("/", ".", "~")) else part, DATA_SUFFIXES)


def _files(source: str, flag: str = "--data") -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if p.suffix in DATA_SUFFIXES]
        if not files:
            raise MohawkError(f"data directory {source} holds no .txt/.jsonl/.parquet files")
        return files
    if path.is_file():
        return [path]
    raise MohawkError(f"{flag}: no such file or directory: {source}")


def vendored(source: str) -> tuple[list[Path], list[Path]] | None:
    """(train, validation) files of a vendored corpus name or "+"-joined names; None for anything else."""
    names = source.split("+")
    if not all(n in CORPORA for n in names):
        return None
    train, val = [], []
    for n in names:
        for rel in CORPORA[n][0]:
            train.append(ASSETS / rel) if ASSETS / rel not in train else None
        for rel in CORPORA[n][1]:
            val.append(ASSETS / rel) if ASSETS / rel not in val else None
    missing = [p for p in train + val if not p.is_file()]
    if missing:
        raise MohawkError(f"the vendored corpus file {missing[0]} is missing (a broken install?); use --data PATH")
    return train, val


def _resolve(spec: str, flag: str) -> tuple[list, list]:
    """(files or "hf:NAME" sources, the vendored parts' validation files) of a data value (see data_parts)."""
    train: list = []
    val: list = []
    for part in data_parts(spec, flag, teacher_text=False):  # mohawk distill replaces 'teacher' first
        if part == SYNTHETIC_RECALL:  # generated text (mohawk.synthetic), with its own held-out documents
            train.append(f"synthetic:{part}:0")
            val.append(f"synthetic:{part}:1")
            continue
        v = vendored(part)
        if v is not None:
            train += [f for f in v[0] if f not in train]
            val += [f for f in v[1] if f not in val]
        elif _is_local(part):
            train += _files(part, flag)
        else:
            train.append(f"hf:{part}")
    return train, val


def split_sources(source: str, val_source: str | None) -> tuple[list, list | None]:
    """(train sources, validation sources or None to hold out pieces of the training source), both read with the
    grammar of ``data_parts``. The validation files are ``val_source``'s (a vendored corpus gives its validation
    files), else the vendored parts' of ``source``; none: pieces of the training data are held out."""
    train, val = _resolve(source, "--data")
    if val_source:
        vtrain, vval = _resolve(val_source, "--val-data")
        return train, (vval or vtrain)
    return train, (val or None)


def input_paths(spec: str | None) -> list[str]:
    """The local paths a data value reads (what an output directory must not delete or contain); [] for None."""
    if not spec:
        return []
    try:
        parts = data_parts(spec)
    except MohawkError:
        return []
    return [p for p in parts if p not in CORPORA and p not in (TEACHER_TEXT, SYNTHETIC_RECALL) and _is_local(p)]


def iter_documents(sources: list, field: str = "text") -> Iterator[str]:
    for src in sources:
        if isinstance(src, str) and src.startswith("hf:"):
            yield from _hf_documents(src[3:], field)
        elif isinstance(src, str) and src.startswith("synthetic:"):
            from mohawk.synthetic import recall_documents

            seed = int(src.rsplit(":", 1)[1])
            yield from recall_documents(seed, count=20_000 if seed == 0 else 200)
        else:
            yield from _read_file(Path(src), field)


SAMPLE_BYTES = 1 << 22  # decompressed bytes read to estimate a compressed file's size in characters


def source_chars(src) -> float | None:
    """A source's size in characters, estimated without reading it all: a plain file's bytes; a compressed one's bytes
    times the ratio of its first SAMPLE_BYTES decompressed to the compressed bytes they took (exact when it is
    shorter); a parquet file's uncompressed column bytes. None for generated text and Hugging Face datasets."""
    if isinstance(src, str) and src.startswith(("hf:", "synthetic:")):
        return None
    path = Path(src)
    size = path.stat().st_size
    if _kind(path) == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        return float(
            sum(
                meta.row_group(r).column(c).total_uncompressed_size
                for r in range(meta.num_row_groups)
                for c in range(meta.num_columns)
            )
        )
    if path.suffix not in (".gz", ".xz", ".bz2"):
        return float(size)
    with open(path, "rb") as raw, _decompressor(path.suffix, raw) as f:
        got = len(f.read(SAMPLE_BYTES))
        if len(f.read(1)) == 0:  # the whole file
            return float(got)
        return got * size / max(1, raw.tell())


def _decompressor(suffix: str, raw: typing.BinaryIO) -> gzip.GzipFile | lzma.LZMAFile | bz2.BZ2File:
    if suffix == ".gz":
        return gzip.GzipFile(fileobj=raw)
    return lzma.LZMAFile(raw) if suffix == ".xz" else bz2.BZ2File(raw)


def source_weights(sources: list) -> list[float]:
    """Each source's share of a mix (``source_chars``); a source of unknown size weighs the mean of the known ones
    (1 each when none is known)."""
    sizes = [source_chars(s) for s in sources]
    known = [x for x in sizes if x is not None]
    fill = sum(known) / len(known) if known else 1.0
    return [max(1.0, x) if x is not None else fill for x in sizes]


def _hf_documents(name: str, field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise MohawkError(
            f"{name!r} is not a local path; Hugging Face datasets need: pip install mohawk[data]"
        ) from None
    config = None
    if ":" in name:
        name, config = name.split(":", 1)
    try:
        ds = datasets.load_dataset(name, config, split="train", streaming=True)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MohawkError(f"could not load dataset {name!r}: {reason}") from None
    for row in ds:
        text = row.get(field)
        if isinstance(text, str) and text:
            yield text


def pieces(text: str, piece_chars: int) -> Iterator[str]:
    """Cut a document into pieces of about piece_chars characters at paragraph breaks."""
    text = text.replace("\r\n", "\n")
    start = 0
    while start < len(text):
        end = min(len(text), start + piece_chars)
        if end < len(text):
            brk = text.rfind("\n\n", start + piece_chars // 2, end)
            end = brk + 2 if brk != -1 else end
        piece = text[start:end].strip()
        if piece:
            yield piece
        start = end


def _piece_hash(piece: str) -> int:
    return int(hashlib.blake2b(piece.encode(), digest_size=8).hexdigest(), 16)


def holdout(sources: list, field: str = "text", val_every: int = 100, piece_chars: int = 4000):
    """The rule that holds validation pieces out of a corpus without a validation source: ``piece -> bool``.

    1 in ``val_every`` pieces by hash; a corpus of fewer than ``10 * val_every`` pieces (counted by reading it up to
    there) holds out its 10% of pieces with the smallest hashes instead (at least one), which a hash rule could leave
    empty. A corpus of one piece cannot be split: a MohawkError asks for --val-data."""
    if any(isinstance(s, str) and s.startswith("hf:") for s in sources):
        return lambda p: _piece_hash(p) % val_every == 0  # streamed from the hub: not counted
    hashes = []
    for doc in iter_documents(sources, field):
        hashes += [_piece_hash(p) for p in pieces(doc, piece_chars)]
        if len(hashes) >= 10 * val_every:
            return lambda p: _piece_hash(p) % val_every == 0
    if not hashes:
        raise MohawkError("the data yields no full sequence: it is empty or shorter than --seq-len tokens")
    if len(set(hashes)) < 2:
        raise MohawkError("the data is too small to hold out a validation split (one piece of text): give --val-data")
    chosen = set(sorted(set(hashes))[: max(1, len(set(hashes)) // 10)])
    return lambda p: _piece_hash(p) in chosen


def leading_bos(tokenizer) -> int | None:
    """The BOS id when ``tokenizer`` puts it before every text by default (Gemma: the model expects it), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        ids = tokenizer("a")["input_ids"]
    except Exception:  # a tokenizer that cannot encode a plain string gets nothing added
        return None
    return bos if ids and ids[0] == bos else None


class TokenStream:
    """Deterministic packed sequences from a corpus; ``sequences()`` is an infinite iterator (new order each epoch)."""

    def __init__(
        self,
        sources: list,
        tokenizer,
        seq_len: int,
        *,
        seed: int = 0,
        field: str = "text",
        keep=None,
        piece_chars: int = 4000,
        shuffle_buffer: int = 1024,
        repeat: bool = True,
    ):
        """``keep(piece) -> bool``: which pieces this stream uses (a train or validation split; None: all)."""
        self.sources, self.tokenizer, self.seq_len = sources, tokenizer, seq_len
        self.seed, self.field, self.keep = seed, field, keep
        self.epochs = 0  # passes over the data finished by sequences()
        self.piece_chars, self.shuffle_buffer, self.repeat = piece_chars, shuffle_buffer, repeat
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos = eos if eos is not None else 0
        self.bos = leading_bos(tokenizer)

    def _pieces(self, epoch: int) -> Iterator[str]:
        """One epoch's pieces: drawn from the sources at random in proportion to their estimated sizes
        (``source_chars``), so that every stretch of the stream holds each source at its share of the corpus (one
        source after another, a stage that reads part of an epoch would miss whole sources), then through a seeded
        shuffle buffer."""
        rng = random.Random(self.seed * 1000003 + epoch)
        streams = [self._source_pieces(src) for src in self.sources]
        weights = source_weights(self.sources) if len(self.sources) > 1 else [1.0]  # one source: nothing to weigh
        buffer: list[str] = []
        while streams:
            i = rng.choices(range(len(streams)), weights)[0] if len(streams) > 1 else 0
            p = next(streams[i], None)
            if p is None:
                del streams[i], weights[i]
                continue
            buffer.append(p)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def _source_pieces(self, src) -> Iterator[str]:
        """The pieces of one source that this stream keeps (its split)."""
        for doc in iter_documents([src], self.field):
            for p in pieces(doc, self.piece_chars):
                if self.keep is None or self.keep(p):
                    yield p

    def sequences(self) -> Iterator[list[int]]:
        epoch, produced = 0, False
        while True:
            buf: list[int] = []
            for p in self._pieces(epoch):
                buf.extend(self.tokenizer(p, add_special_tokens=False)["input_ids"])
                buf.append(self.eos)
                # a teacher whose tokenizer starts every text with BOS (Gemma) sees it at every sequence's start
                n = self.seq_len - (self.bos is not None)
                while len(buf) >= n:
                    produced = True
                    yield buf[:n] if self.bos is None else [self.bos, *buf[:n]]
                    buf = buf[n:]
            if not produced:
                raise MohawkError("the data yields no full sequence: it is empty or shorter than --seq-len tokens")
            self.epochs += 1
            if not self.repeat:
                return
            epoch += 1

    def size(self, sample_pieces: int = 64) -> dict:
        """The stream's corpus size: characters (exact, one pass over the data) and tokens (estimated from the
        characters per token of the first ``sample_pieces`` pieces): {"chars", "tokens", "exact": False}; for
        Hugging Face sources, whose size is unknown here, {}."""
        if any(isinstance(src, str) and src.startswith("hf:") for src in self.sources):
            return {}
        chars, sample_chars, sample_tokens, n = 0, 0, 0, 0
        for doc in iter_documents(self.sources, self.field):
            for p in pieces(doc, self.piece_chars):
                if self.keep is not None and not self.keep(p):
                    continue
                chars += len(p)
                if n < sample_pieces:
                    sample_chars += len(p)
                    sample_tokens += len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) + 1
                    n += 1
        if not sample_chars:
            return {"chars": 0, "tokens": 0, "exact": False}
        return {"chars": chars, "tokens": int(chars * sample_tokens / sample_chars), "exact": False}

    def batches(self, batch_size: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """Infinite iterator of LongTensor (batch_size, seq_len), after skipping ``skip`` batches (resume)."""
        it = self.sequences()
        for _ in range(skip * batch_size):
            next(it)
        while True:
            rows = [next(it) for _ in range(batch_size)]
            yield torch.tensor(rows, dtype=torch.long)


def make_streams(
    source: str, tokenizer, seq_len: int, *, val_source: str | None = None, seed: int = 0, field: str = "text"
) -> tuple[TokenStream, TokenStream]:
    """(train stream, validation stream) for a data source (see module docstring)."""
    if tokenizer is None:
        raise MohawkError("the teacher has no tokenizer: save one beside it (tokenizer.json) to train on text")
    train, val = split_sources(source, val_source)
    if val is None:
        held = holdout(train, field)
        return (
            TokenStream(train, tokenizer, seq_len, seed=seed, field=field, keep=lambda p: not held(p)),
            TokenStream(train, tokenizer, seq_len, seed=seed, field=field, keep=held, repeat=False),
        )
    return (
        TokenStream(train, tokenizer, seq_len, seed=seed, field=field),
        TokenStream(val, tokenizer, seq_len, seed=seed, field=field, repeat=False),
    )


def take(stream: TokenStream, n_sequences: int) -> torch.Tensor:
    """The first n_sequences of a stream as one tensor (a fixed validation set)."""
    it = stream.sequences()
    rows = []
    for _ in range(n_sequences):
        try:
            rows.append(next(it))
        except StopIteration:
            break
    if not rows:
        raise MohawkError(
            f"the validation data yields no full sequence of {stream.seq_len} tokens: give --val-data "
            "with more text, or a shorter --seq-len"
        )
    return torch.tensor(rows, dtype=torch.long)


def prefetch(batches: Iterator[torch.Tensor], depth: int = 4, pin: bool = False) -> Generator[torch.Tensor, None, None]:
    """``batches`` in the same order, drawn ``depth`` ahead by a background thread (pinned for a non-blocking copy
    to the GPU when ``pin``), so that reading, tokenizing and packing text overlap the training step instead of
    keeping the GPU idle between steps. An error of ``batches`` is raised here, at the draw it happened; closing
    this iterator (or dropping it) stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    device = torch.cuda.current_device() if pin else None

    def produce() -> None:
        try:
            if device is not None:  # pinned memory belongs to the caller's GPU (under torchrun not always GPU 0)
                torch.cuda.set_device(device)
            for batch in batches:
                if not put(batch.pin_memory() if pin else batch):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, which raises it at its draw
            put((end, e))

    thread = threading.Thread(target=produce, name="mohawk-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, tuple) and item[0] is end:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


__all__ = [
    "ASSETS",
    "CORPORA",
    "TEACHER_TEXT",
    "data_parts",
    "input_paths",
    "TokenStream",
    "holdout",
    "iter_documents",
    "make_streams",
    "pieces",
    "prefetch",
    "split_sources",
    "take",
    "vendored",
    "with_teacher_text",
    "without_teacher_text",
    "writes_teacher_text",
]
