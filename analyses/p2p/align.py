"""Which key (token) of the source prompt each key of the target prompt takes its cross-attention from.

    >>> from analyses.p2p.align import align
    >>> a = align(pipe, "a red circle on a white background", "a green circle on a white background")  # doctest: +SKIP
    >>> a.changed                                          # doctest: +SKIP
    [('red', 'green')]
    >>> a.mapper.shape, a.own.shape                        # doctest: +SKIP
    (torch.Size([77, 77]), torch.Size([77]))

align(pipe_or_tokenizer, source, target, method)   'swap' (same number of words, some replaced), 'refine' (the
                                  target only adds words) or 'reweight' (the same prompt); refused otherwise
seen(tokenizer, prompt)           the words as the tokenizer sees them, for error messages: "a | red | hex+agon"
token_positions(tokenizer, prompt, word)   key positions of a word, refused with the words the tokenizer sees

An Alignment maps target keys to source keys: the target's map at key j is sum_i mapper[j, i] * source map at key
i, except where own[j] is True (words the target adds), where the target keeps its own map. A swapped word whose
token counts differ ('red' -> 'hexagon' = hex+agon) gives every target token the mean of the source word's maps.
The start token maps to the start token, and the end and padding keys to the source's, counted from each prompt's
end token.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from analyses.daam.words import Word, tokenizer_of, words

METHODS = ("swap", "refine", "reweight")


@dataclass(frozen=True)
class Alignment:
    """How a target prompt's cross-attention keys come from a source prompt's (see the module docstring)."""

    source: str
    target: str
    method: str
    mapper: torch.Tensor  # (target keys, source keys) float32: rows of mapped keys sum to 1
    own: torch.Tensor     # (target keys,) bool: keys whose map is the target's own (words it adds)
    changed: list[tuple[str, str]]  # (source words, target words) that differ; '' for an added word's source


def seen(tokenizer, prompt: str) -> str:
    """The words of `prompt` as the tokenizer splits them: ``'a | small | hex+agon'``."""
    tok = tokenizer_of(tokenizer)
    out = []
    for w in words(tok, prompt):
        pieces = tok.convert_ids_to_tokens(tok(w.text, add_special_tokens=False).input_ids)
        pieces = [p.replace("</w>", "") for p in pieces]
        out.append(w.text if len(pieces) <= 1 else "+".join(pieces))
    return " | ".join(out) if out else "(no words)"


def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Key positions of `word` (every occurrence) in `prompt`; a word not there is refused naming what is there.

        token_positions(pipe, "a small red hexagon", "hexagon")    # [4, 5]
    """
    tok = tokenizer_of(tokenizer)
    want = word.strip().lower()
    found = [t for w in words(tok, prompt) if w.text.lower() == want and w.kept for t in w.tokens]
    if not found:
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r}; the words the tokenizer sees: "
                         f"{seen(tok, prompt)}")
    return found


def align(tokenizer, source: str, target: str, method: str = "swap") -> Alignment:
    """The Alignment of `target` to `source` for `method` ('swap' | 'refine' | 'reweight'), or a ValueError that
    shows the words the tokenizer sees in both prompts when they do not align that way."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of: {', '.join(METHODS)}")
    tok = tokenizer_of(tokenizer)
    n_keys = int(getattr(tok, "model_max_length", 77) or 77)
    ws, wt = _kept(tok, source), _kept(tok, target)
    if not ws or not wt:
        raise ValueError(f"an edit needs words in both prompts; source {source!r}: {seen(tok, source)}; "
                         f"target {target!r}: {seen(tok, target)}")
    both = f"source: {seen(tok, source)}; target: {seen(tok, target)}"
    a, b = [w.text.lower() for w in ws], [w.text.lower() for w in wt]
    pairs: list[tuple[list[Word], list[Word]]] = []  # (source words, target words) of each aligned run
    own_words: list[Word] = []
    changed: list[tuple[str, str]] = []
    if method == "reweight":
        if a != b:
            raise ValueError(f"method 'reweight' scales the words of one prompt, but the prompts differ; {both}")
        pairs = [([x], [y]) for x, y in zip(ws, wt)]
    elif method == "swap":
        if len(a) != len(b):
            raise ValueError(f"method 'swap' needs prompts with the same number of words (source {len(a)}, target "
                             f"{len(b)}); use method='refine' when the target adds words; {both}")
        if a == b:
            raise ValueError(f"method 'swap' needs at least one word changed, but the prompts have the same words; "
                             f"use method='reweight' to scale a word; {both}")
        pairs = [([x], [y]) for x, y in zip(ws, wt)]
        changed = [(x.text, y.text) for x, y in zip(ws, wt) if x.text.lower() != y.text.lower()]
    else:
        ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
        bad = [(op, " ".join(a[i0:i1]), " ".join(b[j0:j1])) for op, i0, i1, j0, j1 in ops if op not in ("equal",
                                                                                                          "insert")]
        if bad:
            op, was, now = bad[0]
            what = f"replaces {was!r} with {now!r}" if op == "replace" else f"removes {was!r}"
            raise ValueError(f"method 'refine' needs a target that only adds words to the source, but it {what}; "
                             f"use method='swap' for replaced words; {both}")
        if len(a) == len(b):
            raise ValueError(f"method 'refine' needs the target to add words, but the prompts have the same words; "
                             f"{both}")
        for op, i0, i1, j0, j1 in ops:
            if op == "equal":
                pairs += [([x], [y]) for x, y in zip(ws[i0:i1], wt[j0:j1])]
            else:
                own_words += wt[j0:j1]
                changed.append(("", " ".join(w.text for w in wt[j0:j1])))
    mapper = torch.zeros(n_keys, n_keys)  # (target keys, source keys)
    own = torch.zeros(n_keys, dtype=torch.bool)  # (target keys,)
    for src, dst in pairs:
        s_tok = [t for w in src for t in w.tokens]
        for t in (t for w in dst for t in w.tokens):
            mapper[t, s_tok] = 1.0 / len(s_tok)
    for w in own_words:
        own[list(w.tokens)] = True
    mapper[0, 0] = 1.0  # the start token
    end_s, end_t = max(ws[-1].tokens) + 1, max(wt[-1].tokens) + 1  # the end tokens' positions
    for k in range(n_keys - end_t):
        mapper[end_t + k, min(end_s + k, n_keys - 1)] = 1.0
    return Alignment(source, target, method, mapper, own, changed)


def _kept(tok, prompt: str) -> list[Word]:
    return [w for w in words(tok, prompt) if w.kept]
