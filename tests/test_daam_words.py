"""Word-to-token alignment for DAAM: multi-token words, repeated words, punctuation, case, phrases, limits, errors."""
import pytest

from analyses.daam.words import _offsets_positions, _prefix_positions, find, tokenizer_of, words, WORD
from lab.world import make_scene


@pytest.fixture(scope="module")
def tok():
    from tiny_models import _tokenizer, tokenizer_dir
    return _tokenizer(str(tokenizer_dir()))


def test_multi_token_words_map_to_all_their_tokens(tok):
    assert tok.tokenize("hexagon") == ["hex", "agon</w>"]
    assert tok.tokenize("trapezoid") == ["trape", "zo", "id</w>"]
    ws = words(tok, "a hexagon and a trapezoid")
    assert [(w.text, w.tokens) for w in ws] == [("a", (1,)), ("hexagon", (2, 3)), ("and", (4,)), ("a", (5,)),
                                               ("trapezoid", (6, 7, 8))]


def test_repeated_word_gives_every_occurrence_or_the_chosen_one(tok):
    assert find(tok, "a dog on a mat", "a") == [1, 4]
    assert find(tok, "a dog on a mat", "a", occurrence=1) == [4]
    assert find(tok, "a dog on a mat", "a", occurrence=-1) == [4]
    assert [w.occurrence for w in words(tok, "a dog on a mat")] == [0, 0, 0, 1, 0]


def test_case_and_punctuation_follow_clip(tok):
    ws = words(tok, "A Hexagon, and a TRAPEZOID.")
    assert [w.text for w in ws] == ["A", "Hexagon", "and", "a", "TRAPEZOID"]  # punctuation is not a word
    assert find(tok, "A Hexagon, and a TRAPEZOID.", "trapezoid") == [7, 8, 9]  # "," is token 4
    assert find(tok, "A Hexagon, and a TRAPEZOID.", "HEXAGON") == [2, 3]


def test_hyphen_splits_words_and_apostrophe_does_not(tok):
    ws = words(tok, "a red-hexagon, don't")
    assert [w.text for w in ws] == ["a", "red", "hexagon", "don't"]
    assert ws[2].tokens == (4, 5)  # 'red', '-', 'hex', 'agon</w>'
    assert len(ws[3].tokens) == 2  # 'don', "'t"


def test_phrase_gives_its_words_tokens_in_order(tok):
    prompt = "a small red circle to the left of a large blue square"
    assert find(tok, prompt, "to the left of") == [5, 6, 7, 8]


def test_offsets_and_prefix_counting_agree(tok):
    prompts = [make_scene(2_000_000 + i, "test").caption for i in range(20)]
    prompts += ["  A  Red-hexagon,,  don't (trapezoid)!  ", "über café 3 squares"]
    for p in prompts:
        spans = [(m.group(), m.start(), m.end()) for m in WORD.finditer(p)]
        assert _offsets_positions(tok, p, spans) == _prefix_positions(tok, p, spans), p


def test_word_not_in_prompt_lists_the_words(tok):
    with pytest.raises(ValueError) as e:
        find(tok, "a dog on a mat", "dgo")
    assert str(e.value) == "word 'dgo' is not in the prompt 'a dog on a mat'; words: a, dog, on, a, mat"


def test_empty_prompt_is_an_error(tok):
    with pytest.raises(ValueError, match="is empty"):
        find(tok, "", "dog")
    with pytest.raises(ValueError, match="is empty"):
        find(tok, " ,. ", "dog")


def test_word_cut_off_by_the_token_limit_is_an_error(tok):
    prompt = " ".join(["red"] * 80) + " hexagon"
    ws = words(tok, prompt)
    assert ws[74].kept and not ws[75].kept  # positions 1..75 survive the 77-token limit
    with pytest.raises(ValueError, match="cut off by the 77-token limit"):
        find(tok, prompt, "hexagon")
    assert len(find(tok, prompt, "red")) == 75  # the kept occurrences


def test_occurrence_out_of_range_says_how_many(tok):
    with pytest.raises(ValueError, match=r"occurs 2 times.*out of range \(0..1\)"):
        find(tok, "a dog on a mat", "a", occurrence=2)


def test_tokenizer_of_takes_a_pipeline_or_a_tokenizer(tok):
    class Pipe:
        tokenizer, tokenizer_2 = tok, None
    assert tokenizer_of(Pipe()) is tok and tokenizer_of(tok) is tok
    with pytest.raises(TypeError):
        tokenizer_of(object())
