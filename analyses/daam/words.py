"""Which text-encoder tokens make up each word of a prompt: the alignment every DAAM word map starts from.

    >>> from analyses.daam.words import words, find
    >>> [(w.text, w.tokens) for w in words(tok, "a hexagon.")]        # doctest: +SKIP
    [('a', (1,)), ('hexagon', (2, 3))]                                # 'hex', 'agon</w>'; '.' is not a word
    >>> find(tok, "a dog and a cat", "a")                             # doctest: +SKIP
    [1, 4]                                                            # every occurrence, or occurrence=1 -> [4]

words(tokenizer, prompt)        every word with its character span and key positions (SOS is position 0)
find(tokenizer, prompt, word, occurrence=None)   key positions of `word` (or of a phrase of several words)
tokenizer_of(pipe_or_tokenizer) the tokenizer to align with (SDXL: its first one)

A word is a run of letters or digits, apostrophes inside it included ("don't"); punctuation and hyphens separate
words and are never words themselves. Matching is case-insensitive, as CLIP lowercases. The alignment uses the
tokenizer itself: character offsets from a fast tokenizer, else the token count of each prefix of the prompt (CLIP
splits words before BPE, so a prefix ending at a word boundary tokenizes to a prefix of the whole). Tokens past the
text encoder's limit (model_max_length, 77 for CLIP: positions 1..75 after the start token) are cut off.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


@dataclass(frozen=True)
class Word:
    """One word of a prompt: ``Word(text='hexagon', start=2, end=9, tokens=(2, 3), index=1, occurrence=0, kept=True)``.

    tokens are key positions of cross-attention (the start token is 0); occurrence counts earlier words with the same
    lowercased text; kept is False when any of its tokens falls past the text encoder's limit.
    """

    text: str
    start: int
    end: int
    tokens: tuple[int, ...]
    index: int
    occurrence: int
    kept: bool


def tokenizer_of(obj):
    """The tokenizer to align words with: ``pipe.tokenizer`` (SDXL's first), else ``pipe.tokenizer_2``, else `obj`."""
    for attr in ("tokenizer", "tokenizer_2"):
        tok = getattr(obj, attr, None)
        if tok is not None:
            return tok
    if not callable(getattr(obj, "tokenize", None)):
        raise TypeError(f"{type(obj).__name__} is neither a tokenizer nor a pipeline with one")
    return obj


def max_position(tokenizer) -> int:
    """The last key position a prompt token can take: model_max_length - 2 (75 for CLIP's 77)."""
    return int(getattr(tokenizer, "model_max_length", 77) or 77) - 2


def words(tokenizer, prompt: str) -> list[Word]:
    """Every word of `prompt` in order, with the key positions of its tokens."""
    tokenizer = tokenizer_of(tokenizer)
    spans = [(m.group(), m.start(), m.end()) for m in WORD.finditer(prompt)]
    positions = _offsets_positions(tokenizer, prompt, spans)
    if positions is None:
        positions = _prefix_positions(tokenizer, prompt, spans)
    last, seen, out = max_position(tokenizer), {}, []
    for i, ((text, start, end), toks) in enumerate(zip(spans, positions)):
        key = text.lower()
        out.append(Word(text, start, end, tuple(toks), i, seen.get(key, 0), bool(toks) and max(toks) <= last))
        seen[key] = seen.get(key, 0) + 1
    return out


def _offsets_positions(tokenizer, prompt: str, spans) -> list[list[int]] | None:
    """Key positions of each span from a fast tokenizer's character offsets; None when it gives none."""
    try:
        enc = tokenizer(prompt, return_offsets_mapping=True, truncation=False, add_special_tokens=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return None
    out = []
    for _, start, end in spans:
        out.append([p for p, (a, b) in enumerate(offsets) if b > a and a < end and b > start])
    return out


def _prefix_positions(tokenizer, prompt: str, spans) -> list[list[int]]:
    """Key positions of each span by counting the tokens of the prompt's prefixes (any tokenizer)."""
    def count(text: str) -> int:
        return len(tokenizer.tokenize(text))

    return [list(range(1 + count(prompt[:start]), 1 + count(prompt[:end]))) for _, start, end in spans]


def find(tokenizer, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
    """Key positions of `word` in `prompt`: every occurrence (default), or the `occurrence`-th (0-based).

        find(tok, "a dog on a mat", "A")                   # [1, 4]
        find(tok, "a dog to the left of a cat", "to the left of")   # a phrase: its words' tokens, in order

    Errors name the bad value and the valid ones: an empty prompt, a word not in the prompt (listing its words), an
    occurrence out of range, a word cut off by the text encoder's token limit.
    """
    return [t for w in occurrences(tokenizer, prompt, word, occurrence) for t in w.tokens]


def occurrences(tokenizer, prompt: str, word: str, occurrence: int | None = None) -> list[Word]:
    """The Words of `prompt` that `word` names (for a phrase, all its words), checked as ``find`` documents."""
    tokenizer = tokenizer_of(tokenizer)
    all_words = words(tokenizer, prompt)
    if not all_words:
        raise ValueError(f"the prompt {prompt!r} is empty: it has no words to map")
    query = [m.group().lower() for m in WORD.finditer(word)]
    if not query:
        raise ValueError(f"word {word!r} has no letters or digits to look up; words: {_listing(all_words)}")
    texts = [w.text.lower() for w in all_words]
    starts = [i for i in range(len(texts) - len(query) + 1) if texts[i:i + len(query)] == query]
    if not starts:
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r}; words: {_listing(all_words)}")
    if occurrence is not None:
        if not -len(starts) <= occurrence < len(starts):
            raise ValueError(f"word {word!r} occurs {len(starts)} time{'s' * (len(starts) != 1)} in {prompt!r}; "
                             f"occurrence={occurrence} is out of range (0..{len(starts) - 1})")
        starts = [starts[occurrence]]
    groups = [all_words[i:i + len(query)] for i in starts]
    kept = [g for g in groups if all(w.kept for w in g)]
    if not kept:
        g = groups[0]
        limit = max_position(tokenizer) + 2
        raise ValueError(
            f"word {word!r} is cut off by the {limit}-token limit of the text encoder: its tokens are at positions "
            f"{', '.join(str(t) for w in g for t in w.tokens)} but the encoder sees positions 1..{limit - 2} of the "
            f"prompt; shorten the prompt or map a word that comes earlier")
    return [w for g in kept for w in g]


def _listing(all_words: list[Word]) -> str:
    return ", ".join(w.text for w in all_words)
