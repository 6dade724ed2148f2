"""COCO captions: what pycocoevalcap's PTB tokenisation (Stanford PTBTokenizer -preserveLines -lowerCase,
then the tokens '' ' `` ` -LRB- -RRB- -LCB- -RCB- . ? ! , : - -- ... ; dropped) makes of model-style
captions -- the text every caption metric is computed on. Expected tokens derived by hand from the PTB
tokenisation rules (contractions split, punctuation split off, quotes converted then dropped).

Quirks (the first run of these tests corrected the four bracket / "!!!" expectations): -lowerCase also
lower-cases the bracket escapes, "-lrb-" / "-rrb-" / "-lcb-" / "-rcb-", which the upper-case drop list
never matches, so brackets stay in the scored text as those tokens; a run of "!" or "?!" is ONE token,
not in the list either."""

import shutil

import pytest

from vlmtune.eval.caption import ptb_tokenize, score_captions

CASES = [
    ("A man riding a bike.", "a man riding a bike"),  # capitals, trailing period
    ("A man riding a bike", "a man riding a bike"),
    ("a dog!", "a dog"),
    ("Is that a dog?", "is that a dog"),
    ("A dog, a cat, and a bird.", "a dog a cat and a bird"),
    ("Two dogs; one cat.", "two dogs one cat"),
    ("A sign: stop", "a sign stop"),
    ("A dog (brown) on grass", "a dog -lrb- brown -rrb- on grass"),  # quirk: lower-cased escapes stay
    ('A "happy" dog', "a happy dog"),  # `` and '' dropped
    ("A dog - running", "a dog running"),  # a lone "-" token is dropped
    ("A dog -- running", "a dog running"),
    ("A dog... running", "a dog running"),
    ("A man in a t-shirt", "a man in a t-shirt"),  # a hyphen inside a word stays
    ("The man's hat", "the man 's hat"),  # possessive split off, kept
    ("The dogs' toys", "the dogs toys"),  # a bare ' token is dropped
    ("A man doesn't smile", "a man does n't smile"),
    ("It's a cat", "it 's a cat"),
    ("They're eating", "they 're eating"),
    ("I can't see", "i ca n't see"),
    ("Two men", "two men"),  # number words are not mapped (unlike VQA)
    ("1,000 people", "1,000 people"),
    ("3 dogs", "3 dogs"),
    ("A man at 3:00", "a man at 3:00"),
    ("A cake with 2.5 layers.", "a cake with 2.5 layers"),
    ("A DOG ON A SOFA", "a dog on a sofa"),
    ("A dog.\nA cat.", "a dog a cat"),  # a newline inside a caption becomes a space
    ("A dog. A cat.", "a dog a cat"),  # two sentences: both periods dropped
    ("", ""),  # empty caption
    ("   ", ""),
    ("a man with an umbrella", "a man with an umbrella"),  # articles stay
    ("A {red} ball", "a -lcb- red -rcb- ball"),  # quirk: as for parentheses
    ("A dog!!!", "a dog !!!"),  # quirk: "!!!" is one token, not in the list
    ("A dog?!", "a dog ?!"),
    ("'A dog'", "a dog"),
    ("A man & a woman", "a man & a woman"),
    ("A 50% discount", "a 50 % discount"),
    ("A $5 bill", "a $ 5 bill"),
    ("A dog's bone.", "a dog 's bone"),
    ("We're here", "we 're here"),
    ("A cat; a dog: a bird", "a cat a dog a bird"),
    ("Hello, world!", "hello world"),
    ("A man, who is tall, walks.", "a man who is tall walks"),
]


@pytest.fixture(scope="module")
def tokens():
    if shutil.which("java") is None:
        pytest.skip("needs Java (the PTB tokenizer)")
    return ptb_tokenize({str(i): [caption] for i, (caption, _) in enumerate(CASES)})


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c for c, _ in CASES])
def test_ptb_tokens(tokens, i):
    assert tokens[str(i)] == [CASES[i][1]]


@pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")
def test_bleu1_on_tokens():
    # "A dog (brown)." -> "a dog -lrb- brown -rrb-" (5 tokens) vs the reference "a brown dog": clipped
    # unigram precision 3/5, no brevity penalty (5 > 3) -> BLEU-1 60; "A brown dog." -> 3/3 -> 100
    _, per = score_captions(
        {"x": "A dog (brown).", "y": "A brown dog."},
        {"x": ["a brown dog"], "y": ["a brown dog"]},
        metrics=("bleu",),
    )
    assert (per["x"]["BLEU-1"], per["y"]["BLEU-1"]) == (60.0, 100.0)
