"""Data: readers for every format, deterministic packing, disjoint held-out split, clear errors for bad files."""

import bz2
import gzip
import json
import lzma

import pytest
import torch

from mohawk.data import TokenStream, holdout, make_streams, pieces, prefetch, take
from mohawk.errors import MohawkError
from tests.utils import tiny_corpus, tiny_tokenizer


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


def test_sources_mix_at_their_shares_from_the_start(tmp_path):
    """Two sources of 4:1 characters, one plain, one gzip-compressed (its size estimated through its compression
    ratio): every stretch of an epoch holds them at about their shares, where reading them one after another would
    give a stage that reads the first quarter only one source; each piece still comes once an epoch."""
    big = [f"alpha {i} " + "a" * 300 for i in range(400)]
    small = [f"beta {i} " + "b" * 300 for i in range(100)]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in big))
    with gzip.open(tmp_path / "small.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in small)
    for seed in (0, 1):
        stream = TokenStream([tmp_path / "big.jsonl", tmp_path / "small.jsonl.gz"], tiny_tokenizer(), 8, seed=seed,
                             shuffle_buffer=4)  # fmt: skip
        got = list(stream._pieces(0))
        assert sorted(got) == sorted(big + small)
        for quarter in range(4):
            part = got[quarter * 125 : (quarter + 1) * 125]
            assert 0.08 < sum(p.startswith("beta") for p in part) / len(part) < 0.35, (seed, quarter)


def test_sequences_start_with_bos_when_the_tokenizer_adds_it(tmp_path):
    """Gemma's tokenizer puts BOS before every text and the model expects it: every packed sequence starts with it,
    the rest is the same token stream; a tokenizer that adds none (SmolLM2's) gets none."""
    from tokenizers import processors

    path = tiny_corpus(tmp_path / "c.jsonl")
    plain = tiny_tokenizer()
    with_bos = tiny_tokenizer()
    with_bos.add_special_tokens({"bos_token": "<bos>"})
    bos = with_bos.bos_token_id
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    assert with_bos("the cat")["input_ids"][0] == bos
    a = TokenStream([path], plain, 16, seed=0).sequences()
    b = TokenStream([path], with_bos, 16, seed=0).sequences()
    flat_a = [t for _ in range(6) for t in next(a)]
    seqs_b = [next(b) for _ in range(6)]
    assert all(len(x) == 16 and x[0] == bos and bos not in x[1:] for x in seqs_b)
    assert [t for x in seqs_b for t in x[1:]] == flat_a[: 6 * 15]
    assert bos not in flat_a


def test_holdout_is_disjoint(tmp_path):
    path = tiny_corpus(tmp_path / "c.jsonl", n_docs=300)
    held = holdout([path], val_every=5)
    train = TokenStream([path], None, 8, keep=lambda p: not held(p), repeat=False)
    val = TokenStream([path], None, 8, keep=held, repeat=False)
    tp, vp = set(train._pieces(0)), set(val._pieces(0))
    assert tp and vp and not tp & vp and 0.1 < len(vp) / (len(tp) + len(vp)) < 0.35


def test_small_single_file_corpus_gets_a_validation_split(tmp_path):
    """A 160 KB text file without blank lines: 41 pieces, which the 1-in-100 hash split would leave without a single
    validation piece ("the data yields no full sequence"); the smallest-hash 10% are held out instead."""
    import random

    rng = random.Random(0)
    words = ("the cat sat on a mat while some dog ran far away").split()
    path = tmp_path / "small.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(40000))[:160_000])
    train, val = make_streams(str(path), tiny_tokenizer(), 16)
    v = take(val, 8)
    assert v.shape == (8, 16)
    held, kept = set(val._pieces(0)), set(train._pieces(0))
    assert held and kept and not held & kept and len(held) == len(held | kept) // 10


def test_one_piece_corpus_asks_for_val_data(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("the cat sat on a mat " * 20)
    with pytest.raises(MohawkError, match="--val-data"):
        make_streams(str(path), tiny_tokenizer(), 8)


def test_vendored_corpora_and_mixes():
    from mohawk.data import ASSETS, vendored

    train, val = vendored("gutenberg+modern")
    assert ASSETS / "gutenberg/train-001.jsonl.xz" in train and ASSETS / "modern/train.jsonl.xz" in train
    assert set(val) == {ASSETS / "gutenberg/validation.jsonl.xz", ASSETS / "modern/validation.jsonl.xz"}
    assert vendored("bundled") == (
        [ASSETS / "gutenberg/train-000.jsonl.xz"],
        [ASSETS / "gutenberg/validation.jsonl.xz"],
    )
    assert vendored("gutenberg+nope") is None
    s, _ = make_streams("modern", tiny_tokenizer(), 16)
    assert next(s.batches(2)).shape == (2, 16)


@pytest.mark.parametrize("fmt", ["txt", "jsonl.gz", "jsonl.xz", "jsonl.bz2", "parquet"])
def test_formats(tmp_path, fmt):
    docs = [" ".join(["the cat sat on a mat"] * 200) + f" {i}" for i in range(5)]  # distinct: one can be held out
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


@pytest.mark.parametrize(
    "content,msg",
    [
        (b"", "no full sequence"),
        (b"\xff\xfe\x00\x81binary", "not UTF-8"),
        (b'{"text": "a"}\nnot json\n', "not valid JSON"),
        (b'{"other": "x"}\n', "no field 'text'"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, content, msg):
    path = tmp_path / ("d.txt" if b"{" not in content else "d.jsonl")
    path.write_bytes(content)
    with pytest.raises(MohawkError, match=msg):
        train, _ = make_streams(str(path), tiny_tokenizer(), 8)
        next(train.batches(1))


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(MohawkError, match="no such file or directory: .*nope.jsonl"):
        make_streams(str(tmp_path / "nope.jsonl"), tiny_tokenizer(), 8)
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(MohawkError, match="unsupported data file"):
        next(make_streams(str(tmp_path / "x.csv"), tiny_tokenizer(), 8)[0].batches(1))


@pytest.mark.parametrize("spec", ["", " ", "+", "modern+", "+modern", "modern++bundled"])
def test_an_empty_part_of_data_is_an_error(tmp_path, monkeypatch, spec):
    """An empty part once read as Path('') = the current directory: every data file under it became training text."""
    from mohawk.config import DistillConfig

    monkeypatch.chdir(tmp_path)
    tiny_corpus(tmp_path / "stray.jsonl")
    with pytest.raises(MohawkError, match="empty part"):
        make_streams(spec, tiny_tokenizer(), 8)
    with pytest.raises(MohawkError, match="bad value for --data"):
        DistillConfig.from_dict({"data": spec})
    if spec:  # an empty --val-data means "none given"
        with pytest.raises(MohawkError, match="bad value for --val-data"):
            DistillConfig.from_dict({"val_data": spec})


def test_data_grammar_parts_and_local_paths(tmp_path, monkeypatch):
    """One grammar: vendored names, local paths (also in mixes, with their validation from the vendored part) and hub
    names; a path-like part that does not exist is "no such file or directory", never a dataset lookup; a path that
    holds a '+' is one part."""
    from mohawk.data import ASSETS, data_parts, input_paths, split_sources

    monkeypatch.chdir(tmp_path)
    corpus = tiny_corpus(tmp_path / "c.jsonl")
    plus = tiny_corpus(tmp_path / "a+b.jsonl")
    assert data_parts("a+b") == ["a", "b"] and data_parts(str(plus)) == [str(plus)]
    train, val = split_sources(f"modern+{corpus}", None)
    assert train == [ASSETS / "modern/train.jsonl.xz", corpus] and val == [ASSETS / "modern/validation.jsonl.xz"]
    assert split_sources("user/some-dataset", None) == (["hf:user/some-dataset"], None)
    assert split_sources("wikitext:wikitext-2-raw-v1", None)[0] == ["hf:wikitext:wikitext-2-raw-v1"]
    for missing in ("./nope", "sub/dir/x", "~/no-such-mohawk-file", "nope.jsonl", str(tmp_path / "nope")):
        with pytest.raises(MohawkError, match=f"no such file or directory: {missing}"):
            split_sources(f"bundled+{missing}", None)
    assert input_paths(f"teacher+bundled+{corpus}+user/ds") == [str(corpus)]
    assert split_sources(str(corpus), "modern")[1] == [ASSETS / "modern/validation.jsonl.xz"]


def test_prefetch_keeps_the_order_raises_at_the_failing_draw_and_stops_its_thread():
    """The background reader hands batches over in their order (a pool of readers would not), raises the source's
    error after the batches before it (a lost error would hang or end the stage early), and closing it stops the
    thread (a leaked reader would keep tokenizing)."""
    import threading

    def source(fail_at=None):
        for i in range(50):
            if i == fail_at:
                raise MohawkError("the data yields no full sequence")
            yield torch.full((2, 3), i)

    assert [int(b[0, 0]) for b in prefetch(source(), depth=3)] == list(range(50))
    got = []
    with pytest.raises(MohawkError, match="no full sequence"):
        for b in prefetch(source(fail_at=7), depth=3):
            got.append(int(b[0, 0]))
    assert got == list(range(7))
    it = prefetch(source(), depth=2)
    assert int(next(it)[0, 0]) == 0
    it.close()
    assert not any(t.name == "mohawk-prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.mark.gpu
def test_prefetch_pins_its_batches_for_the_copy_to_the_gpu():
    batches = list(prefetch((torch.full((2, 3), i) for i in range(3)), pin=True))
    assert all(b.is_pinned() for b in batches) and [int(b[0, 0]) for b in batches] == [0, 1, 2]
