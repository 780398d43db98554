"""Data: readers for every format, deterministic packing, disjoint held-out split, clear errors for bad files."""

import bz2
import gzip
import json
import lzma

import pytest
import torch

from mohawk.data import TokenStream, make_streams, pieces, take
from mohawk.errors import MohawkError
from tests.conftest import tiny_corpus, tiny_tokenizer


def test_pieces_cut_at_paragraphs():
    text = "\r\n\r\n".join(["word " * 30] * 10)
    ps = list(pieces(text, 400))
    assert all(len(p) <= 400 for p in ps) and "\r" not in "".join(ps)
    assert sum(p.count("word") for p in ps) == 300


def test_packing_is_deterministic_and_full(tmp_path):
    path = tiny_corpus(tmp_path / "c.jsonl")
    tok = tiny_tokenizer()
    a = TokenStream([path], tok, 16, seed=3).batches(4)
    b = TokenStream([path], tok, 16, seed=3).batches(4)
    c = TokenStream([path], tok, 16, seed=4).batches(4)
    x, y, z = next(a), next(b), next(c)
    assert x.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x, y) and not torch.equal(x, z)
    # skip = resume: after skipping 3 batches, a new stream yields the 4th batch
    next(a), next(a)
    fourth = next(a)
    assert torch.equal(next(TokenStream([path], tok, 16, seed=3).batches(4, skip=3)), fourth)


def test_holdout_is_disjoint(tmp_path):
    path = tiny_corpus(tmp_path / "c.jsonl", n_docs=300)
    train = TokenStream([path], None, 8, holdout="train", val_every=5, repeat=False)
    val = TokenStream([path], None, 8, holdout="validation", val_every=5, repeat=False)
    tp, vp = set(train._pieces(0)), set(val._pieces(0))
    assert tp and vp and not tp & vp and 0.1 < len(vp) / (len(tp) + len(vp)) < 0.35


@pytest.mark.parametrize("fmt", ["txt", "jsonl.gz", "jsonl.xz", "jsonl.bz2", "parquet"])
def test_formats(tmp_path, fmt):
    docs = [" ".join(["the cat sat on a mat"] * 20) for _ in range(5)]
    path = tmp_path / f"d.{fmt}"
    if fmt == "txt":
        path.write_text("\n\n".join(docs))
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"body": docs}), path)
    else:
        opener = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}[fmt.split(".")[-1]]
        with opener(path, "wt") as f:
            f.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    train, val = make_streams(str(path), tiny_tokenizer(), 8, field="body")
    assert next(train.batches(2)).shape == (2, 8)


def test_bundled_corpus_has_train_and_validation():
    train, val = make_streams("bundled", tiny_tokenizer(), 32)
    assert next(train.batches(2)).shape == (2, 32)
    assert take(val, 3).shape == (3, 32)


@pytest.mark.parametrize("content,msg", [(b"", "no full sequence"), (b"\xff\xfe\x00\x81binary", "not UTF-8"),
                                         (b'{"text": "a"}\nnot json\n', "not valid JSON"),
                                         (b'{"other": "x"}\n', "no field 'text'")])
def test_bad_files_give_clear_errors(tmp_path, content, msg):
    path = tmp_path / ("d.txt" if b"{" not in content else "d.jsonl")
    path.write_bytes(content)
    train, _ = make_streams(str(path), tiny_tokenizer(), 8)
    with pytest.raises(MohawkError, match=msg):
        next(train.batches(1))


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(MohawkError, match="data not found"):
        make_streams(str(tmp_path / "nope.jsonl"), tiny_tokenizer(), 8)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(MohawkError, match="unsupported data file"):
        next(make_streams(str(tmp_path / "x.csv"), tiny_tokenizer(), 8)[0].batches(1))
