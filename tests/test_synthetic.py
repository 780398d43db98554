"""Synthetic key-value retrieval text (--data recall): every question is answered by a fact stated earlier in the same
document, and the text is a function of its seed."""

from __future__ import annotations

import random
import re

from mohawk.synthetic import recall_document, recall_documents


def test_every_question_is_about_an_earlier_fact_and_answered_with_its_value():
    for seed in range(20):
        doc = recall_document(random.Random(seed))
        facts = dict(re.findall(r"(?<!A: )The code for (the \w+ \w+) is (\d+)\.", doc))
        questions = re.findall(r"Q: What is the code for (the \w+ \w+)\? A: The code for (the \w+ \w+) is (\d+)\.", doc)
        assert 8 <= len(facts) <= 24 and 2 <= len(questions) <= 6
        first_q = doc.index("Q: ")
        for asked, named, value in questions:
            assert asked == named and facts[asked] == value
            assert doc.index(f"The code for {asked} is {value}.") < first_q  # stated before any question


def test_the_same_seed_gives_the_same_text():
    a, b, c = (list(recall_documents(s, count=5)) for s in (3, 3, 4))
    assert a == b and a != c and len(a) == 5


def test_recall_is_a_data_source_with_its_own_held_out_documents():
    from mohawk.data import make_streams, take
    from tests.utils import tiny_tokenizer

    train, val = make_streams("recall", tiny_tokenizer(), 32)
    t, v = take(train, 4), take(val, 4)
    assert t.shape == v.shape == (4, 32) and not any(torch_equal_rows(t, v))


def torch_equal_rows(a, b):
    return [bool((x == y).all()) for x in a for y in b]
