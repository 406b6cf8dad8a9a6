"""Preference pairs built from labelled single texts (task.label_field), with and without openings as prompts."""
import pytest

from tuneforge.data.preferences import build_pairs, pairs_from_labels
from tuneforge.errors import ConfigError
from tuneforge.train.tasks.dpo import DPOConfig

ROWS = [{"text": "a warm and funny film about friends", "label": 1},
        {"text": "a dull and lifeless mess from start to end", "label": 0},
        {"text": "one of the best films of the year by far", "label": 1},
        {"text": "the plot is thin and the jokes fall flat", "label": 0},
        {"text": "too short", "label": 0}]


def labelled(**kw):
    return pairs_from_labels(ROWS, text_field="text", label_field="label", positive_label="1", **kw)


def test_without_prompt_words_pairs_are_whole_texts_with_an_empty_prompt():
    pairs = labelled()
    assert len(pairs) == 2  # two positive texts; the third negative one is left over
    texts = {r["text"]: r["label"] for r in ROWS}
    for p in pairs:
        assert p["prompt"] == "" and texts[p["chosen"]] == 1 and texts[p["rejected"]] == 0


def test_prompt_words_make_an_opening_and_the_rest_of_each_text():
    whole = labelled()
    pairs = labelled(prompt_words=3)
    assert [p.line for p in pairs] == [p.line for p in whole]  # the same pairing, only split
    for k, (p, w) in enumerate(zip(pairs, whole)):
        opening_from = w["chosen"] if k % 2 == 0 else w["rejected"]  # alternately, so both kinds open
        assert p["prompt"] == " ".join(opening_from.split()[:3])
        assert p["chosen"] == " ".join(w["chosen"].split()[3:])
        assert p["rejected"] == " ".join(w["rejected"].split()[3:])


def test_a_text_no_longer_than_the_opening_leaves_an_empty_reply_that_is_skipped_and_counted():
    class Tok:
        eos_token_id = 0

        def encode(self, text, add_special_tokens=False):
            return [len(word) for word in text.split()]

    records = pairs_from_labels([ROWS[0], ROWS[4]], text_field="text", label_field="label", positive_label="1",
                                prompt_words=2)
    assert records[0]["rejected"] == ""
    pairs, stats = build_pairs(records, Tok(), template="raw", max_length=32)
    assert pairs == [] and stats.skipped["with an empty reply"] == 1


def test_prompt_words_is_checked():
    with pytest.raises(ConfigError, match="at least 1"):
        DPOConfig(label_field="label", prompt_words=0).validate()
    with pytest.raises(ConfigError, match="set label_field"):
        DPOConfig(prompt_words=4).validate()
