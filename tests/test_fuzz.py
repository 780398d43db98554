"""Fuzzing the loaders users feed by hand: random bytes as data files, random YAML as configs. Every outcome is
either a result or a MohawkError (one clear line), never another exception."""

import bz2
import gzip
import lzma
import random

import pytest
import yaml

from mohawk.config import DistillConfig
from mohawk.data import make_streams
from mohawk.errors import MohawkError
from tests.utils import tiny_tokenizer

SUFFIXES = ["txt", "jsonl", "json", "jsonl.gz", "jsonl.xz", "txt.bz2", "parquet"]
COMPRESS = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress}


def _random_bytes(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:  # noise
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 400)))
    if kind == 1:  # JSON-ish lines with damage
        lines = [
            rng.choice(['{"text": "%s"}', '{"text": %s}', '["%s"]', '{"text": null}', "%s", '{"text": "a"']).replace(
                "%s", "word " * rng.randrange(50)
            )
            for _ in range(rng.randrange(1, 20))
        ]
        return "\n".join(lines).encode()
    if kind == 2:  # text with invalid UTF-8 in the middle
        return ("word " * 200).encode() + bytes([0xFF, 0xFE, rng.randrange(256)]) + b"tail"
    return bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 2000)))  # printable ASCII


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_data_loader_fuzz(tmp_path, suffix):
    rng = random.Random(SUFFIXES.index(suffix))
    tok = tiny_tokenizer()
    for n in range(25):
        raw = _random_bytes(rng)
        last = suffix.split(".")[-1]
        if last in COMPRESS and rng.random() < 0.7:
            raw = COMPRESS[last](raw)
            if rng.random() < 0.3:
                raw = raw[: len(raw) // 2]  # truncated archive
        path = tmp_path / f"f{n}.{suffix}"
        path.write_bytes(raw)
        try:
            train, _ = make_streams(str(path), tok, 8)
            batches = train.batches(2)
            for _ in range(3):
                next(batches)
        except MohawkError as e:
            assert str(e) and "\n" not in str(e)


def _random_value(rng: random.Random, depth: int = 0):
    choices = [
        lambda: rng.randrange(-10, 10**6),
        lambda: rng.random() * 10 ** rng.randrange(-5, 5),
        lambda: rng.choice(
            [
                True,
                False,
                None,
                "",
                "none",
                "null",
                "auto",
                "1,2",
                "3",
                "nan",
                "inf",
                "-1",
                "1e-3",
                "cpu",
                "cuda:7",
                "🙂",
            ]
        ),
        lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8))),
    ]
    if depth < 2:
        choices += [
            lambda: [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))],
            lambda: {str(_random_value(rng, depth + 1)): _random_value(rng, depth + 1) for _ in range(2)},
        ]
    return rng.choice(choices)()


def test_config_loader_fuzz(tmp_path):
    rng = random.Random(0)
    keys = [f.name for f in DistillConfig.__dataclass_fields__.values()]
    path = tmp_path / "c.yaml"
    for n in range(400):
        mode = n % 3
        if mode == 0:  # known keys, random values
            text = yaml.safe_dump({rng.choice(keys): _random_value(rng) for _ in range(rng.randrange(1, 4))})
        elif mode == 1:  # a valid config with random characters flipped
            text = list(yaml.safe_dump({k: getattr(DistillConfig(), k) for k in rng.sample(keys, 5)}))
            for _ in range(rng.randrange(1, 6)):
                text[rng.randrange(len(text))] = chr(rng.randrange(1, 0x7F))
            text = "".join(text)
        else:  # random top-level YAML
            text = yaml.safe_dump(_random_value(rng))
        path.write_text(text)
        try:
            DistillConfig.from_sources(str(path))
        except MohawkError as e:
            assert str(e) and len(str(e).splitlines()) == 1, str(e)
    path.write_bytes(bytes(range(256)))
    with pytest.raises(MohawkError):
        DistillConfig.from_sources(str(path))
