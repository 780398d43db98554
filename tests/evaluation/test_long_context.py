"""mohawk.evaluation.long_context: the passkey prompt (what passkey retrieval asks the models)."""

from mohawk.evaluation.long_context import FILLER, passkey_prompt


class ByteTokenizer:
    """One token per UTF-8 byte: the prompt's text reads back exactly from its ids."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(text.encode())}


def test_passkey_prompt_hides_the_key_at_its_depth_and_asks_for_it():
    """Catches: the key missing or repeated beyond its needle, the answer leaked after the question, the prompt
    ending anywhere but on the question, the depth or the length ignored."""
    texts = {d: bytes(passkey_prompt(ByteTokenizer(), 4000, "73519", d)).decode() for d in (0.0, 0.5, 1.0)}
    for text in texts.values():
        assert abs(len(text) - 4000) <= len(FILLER)  # the requested length, within one filler sentence
        assert text.endswith("What is the pass key? The pass key is")  # the answer is what the model says next
        assert text.count("73519") == 2 and text.count("The pass key is 73519.") == 1  # one needle
        assert text.rindex("73519") < text.rindex("What is the pass key?")
    where = {d: text.index("The pass key is 73519") / len(text) for d, text in texts.items()}
    assert where[0.0] < 0.1 and 0.4 < where[0.5] < 0.6 and where[1.0] > 0.9
    assert passkey_prompt(ByteTokenizer(), 4000, "73519", 0.5) == passkey_prompt(ByteTokenizer(), 4000, "73519", 0.5)
    short = bytes(passkey_prompt(ByteTokenizer(), 1000, "73519", 0.5)).decode()
    assert abs(len(short) - 1000) <= len(FILLER)
