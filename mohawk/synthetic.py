"""Synthetic key-value retrieval text (``--data recall``): made on the fly from a seed, no download.

Each document states a few dozen random key -> value facts ("The code for the amber otter is 48213."), mixed with
plain filler sentences, then asks for some of them again at the end ("Q: What is the code for the amber otter? A:
The code for the amber otter is 48213."). The answers can only be copied from earlier in the context, which is the
skill a distilled SSM loses first; a teacher that retrieves puts its probability on the right digits, so stage 3's
KD loss on this text teaches the student to copy.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

ADJECTIVES = (
    "amber azure bold brave bright calm clever copper coral crimson dusty eager early faint gentle golden grey "
    "hidden hollow icy ivory jade keen lively lucky misty modest noble olive pale plain proud quiet rapid rosy "
    "rustic sandy scarlet silent silver slow steady stone sunny swift tall tiny violet warm wild young"
).split()
NOUNS = (
    "otter falcon river harbor lantern meadow garden castle bridge valley forest island comet engine violin "
    "teapot mirror anchor badger beacon canyon cedar cobra dolphin ember fox glacier heron hornet jaguar kettle "
    "lagoon maple marble orchid owl panther pebble quarry raven saddle salmon spruce thistle tiger tulip walrus "
    "willow wolf"
).split()
FILLERS = (
    "The weather stayed mild for most of the week.",
    "Nobody in the village remembered the last time it snowed.",
    "A cart rolled slowly down the hill towards the market.",
    "The lamps in the hall were lit an hour before dinner.",
    "Several letters arrived that morning, most of them bills.",
    "The river was higher than usual after the spring rains.",
    "She folded the map and put it back in the drawer.",
    "The clock on the tower had been wrong for years.",
    "They walked along the shore until the tide came in.",
    "A dog barked somewhere beyond the orchard wall.",
    "The committee met again on Thursday to read the report.",
    "Bread was baked early, before the shop opened its doors.",
)


def recall_document(rng: random.Random, facts: tuple[int, int] = (8, 24), queries: tuple[int, int] = (2, 6)) -> str:
    """One document: between ``facts`` random key -> value facts among filler sentences, then between ``queries``
    questions about facts stated earlier, each answered in full."""
    n = rng.randint(*facts)
    keys: dict[str, str] = {}
    while len(keys) < n:
        name = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        keys.setdefault(name, str(rng.randrange(10 ** rng.randint(2, 4), 10 ** rng.randint(5, 6))))
    lines = []
    for name, value in keys.items():
        lines.append(f"The code for {name} is {value}.")
        lines += [rng.choice(FILLERS) for _ in range(rng.randint(0, 3))]
    asked = rng.sample(list(keys), min(len(keys), rng.randint(*queries)))
    for name in asked:
        lines.append(f"Q: What is the code for {name}? A: The code for {name} is {keys[name]}.")
    return " ".join(lines)


def recall_documents(seed: int = 0, count: int = 20_000) -> Iterator[str]:
    """``count`` documents from ``seed`` (the same seed, the same text)."""
    rng = random.Random(seed)
    for _ in range(count):
        yield recall_document(rng)
