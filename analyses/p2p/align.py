"""Which key (token) of the source prompt each key of the target prompt takes its cross-attention from.

    >>> from analyses.p2p.align import align
    >>> a = align(pipe, "a red circle on a white background", "a green circle on a white background")  # doctest: +SKIP
    >>> a.changed                                          # doctest: +SKIP
    [('red', 'green')]
    >>> a.mapper.shape, a.own.shape                        # doctest: +SKIP
    (torch.Size([77, 77]), torch.Size([77]))
    >>> align(sd3, "a red square", "a blue square", max_sequence_length=16).mapper.shape   # doctest: +SKIP
    torch.Size([93, 93])                                   # SD3: 77 CLIP keys, then 16 T5 keys

align(pipe_or_tokenizer, source, target, method, max_sequence_length)   'swap' (same number of words, some
                                  replaced), 'refine' (the target only adds words) or 'reweight' (the same prompt);
                                  refused otherwise
seen(pipe_or_tokenizer, prompt)   the words as the tokenizer(s) see them, for error messages: "a | red | hex+agon"
token_positions(pipe_or_tokenizer, prompt, word, max_sequence_length)   key positions of a word, refused with the
                                  words the tokenizer(s) see
windows(pipe_or_tokenizer, max_sequence_length)   the text encoders' runs of keys (Window), in key order

An Alignment maps target keys to source keys: the target's map at key j is sum_i mapper[j, i] * source map at key
i, except where own[j] is True (words the target adds), where the target keeps its own map. A swapped word whose
token counts differ ('red' -> 'hexagon' = hex+agon) gives every target token the mean of the source word's maps.
The start token maps to the start token, and the end and padding keys to the source's, counted from each prompt's
end token.

A diffusion transformer's text keys are the runs (windows) of each text encoder, as analyses.daam.dit reads them:
SD3's CLIP window (77 keys, both CLIPs side by side) then its T5 window (max_sequence_length keys), FLUX.1's T5
window alone (CLIP gives it only a pooled vector). The words are aligned in EACH window with that encoder's own
tokenizer (T5 has no start token: its words start at key 0) and the mapper is the windows' mappers on the diagonal,
so every text key of the image->text view is covered; a word's keys are its keys in every window that holds it. The
words are those of the whole prompts (the same in every window); a window that cuts a prompt short (CLIP after 75
tokens, T5 after max_sequence_length - 1) maps the keys it holds, and an encoder the pipeline runs without (SD3
without T5: zero rows) keeps its window mapped to itself.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass

import torch

from analyses.daam.dit import TOKENIZERS, is_dit
from analyses.daam.words import Word, tokenizer_of, words
from lab.pipes import family_of

METHODS = ("swap", "refine", "reweight")


@dataclass(frozen=True)
class Window:
    """One text encoder's run of keys: ``Window('t5', tokenizer, start=77, keys=16, start_token=False)``; tokenizer
    None for an encoder the pipeline runs without (its window holds no words)."""

    encoder: str  # 'clip' | 't5'
    tokenizer: object
    start: int  # its first key among the text keys
    keys: int
    start_token: bool  # CLIP's <|startoftext|> at the window's key 0; T5 has none


@dataclass(frozen=True)
class Alignment:
    """How a target prompt's cross-attention keys come from a source prompt's (see the module docstring)."""

    source: str
    target: str
    method: str
    mapper: torch.Tensor  # (target keys, source keys) float32: rows of mapped keys sum to 1
    own: torch.Tensor     # (target keys,) bool: keys whose map is the target's own (words it adds)
    changed: list[tuple[str, str]]  # (source words, target words) that differ; '' for an added word's source


def windows(tokenizer, max_sequence_length: int | None = None) -> list[Window]:
    """The text encoders' windows of keys, in key order: one CLIP window for a UNet pipeline or a tokenizer; SD3's
    CLIP and T5, FLUX.1's T5 (max_sequence_length: the pipe() call's, by default the pipeline's own default)."""
    if not is_dit(tokenizer):
        tok = tokenizer_of(tokenizer)
        return [Window("clip", tok, 0, int(getattr(tok, "model_max_length", 77) or 77), True)]
    pipe = tokenizer
    if not hasattr(pipe, "transformer"):
        raise TypeError(f"a diffusion transformer's text keys are aligned through its pipeline's tokenizers; got a "
                        f"{type(pipe).__name__}: pass the pipeline")
    t5 = max_sequence_length or inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
    out, start = [], 0
    for encoder, attr in TOKENIZERS[family_of(pipe)].items():
        n = int(getattr(pipe, "tokenizer_max_length", 77)) if encoder == "clip" else int(t5)
        out.append(Window(encoder, getattr(pipe, attr, None), start, n, encoder == "clip"))
        start += n
    return out


def seen(tokenizer, prompt: str) -> str:
    """The words of `prompt` as the tokenizer splits them: ``'a | small | hex+agon'``; for a diffusion transformer's
    pipeline, as each of its tokenizers does: ``'CLIP [a | small | hex+agon], T5 [a | small | h+e+x+a+g+o+n]'``."""
    if is_dit(tokenizer):
        return ", ".join(f"{w.encoder.upper()} [{seen(w.tokenizer, prompt)}]" for w in windows(tokenizer)
                         if w.tokenizer is not None)
    tok = tokenizer_of(tokenizer)
    out = []
    for w in words(tok, prompt):
        pieces = tok.convert_ids_to_tokens(tok(w.text, add_special_tokens=False).input_ids)
        pieces = [q for q in (p.replace("</w>", "").replace("\u2581", "") for p in pieces) if q]  # CLIP, T5 marks
        out.append(w.text if len(pieces) <= 1 else "+".join(pieces))
    return " | ".join(out) if out else "(no words)"


def token_positions(tokenizer, prompt: str, word: str, max_sequence_length: int | None = None) -> list[int]:
    """Key positions of `word` (every occurrence) in `prompt`; a word not there is refused naming what is there.
    On a diffusion transformer, its keys in every encoder window that holds it (SD3: CLIP's, then T5's).

        token_positions(pipe, "a small red hexagon", "hexagon")    # [4, 5]
    """
    want = word.strip().lower()
    found = [w.start + t for w in windows(tokenizer, max_sequence_length) if w.tokenizer is not None
             for t in _keys_of(w, prompt, want)]
    if not found:
        which = "each tokenizer sees" if is_dit(tokenizer) else "the tokenizer sees"
        raise ValueError(f"word {word!r} is not in the prompt {prompt!r}; the words {which}: {seen(tokenizer, prompt)}")
    return found


def _keys_of(window: Window, prompt: str, word: str) -> list[int]:
    """Positions (in the window) of every kept occurrence of the lowercased `word`."""
    return [t for w in _kept(window, prompt) if w.text.lower() == word for t in w.tokens]


def align(tokenizer, source: str, target: str, method: str = "swap", max_sequence_length: int | None = None
          ) -> Alignment:
    """The Alignment of `target` to `source` for `method` ('swap' | 'refine' | 'reweight'), or a ValueError that
    shows the words the tokenizer (each tokenizer of a DiT) sees in both prompts when they do not align that way.
    max_sequence_length: a DiT's T5 window, as the pipe() call gets it (default: the pipeline's)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of: {', '.join(METHODS)}")
    ws, dit = windows(tokenizer, max_sequence_length), is_dit(tokenizer)
    shown = seen(tokenizer, source), seen(tokenizer, target)
    parts = [_align_window(w, source, target, method, *shown, dit) if w.tokenizer is not None
             else (torch.eye(w.keys), torch.zeros(w.keys, dtype=torch.bool), None)  # an absent encoder: itself
             for w in ws]
    if len(parts) == 1:
        return Alignment(source, target, method, *parts[0])
    mapper = torch.block_diag(*[m for m, _, _ in parts])  # (text keys, text keys): each window on the diagonal
    own = torch.cat([o for _, o, _ in parts])  # (text keys,)
    changed = next(c for _, _, c in parts if c is not None)  # words: the same in every window
    return Alignment(source, target, method, mapper, own, changed)


def _align_window(window: Window, source: str, target: str, method: str, seen_source: str, seen_target: str,
                  every_word: bool = False):
    """(mapper, own, changed) of one encoder window; refusals show the words every tokenizer sees. every_word: align
    every word of the prompts (a DiT: the same words in each window), mapping the keys the window holds; else (a
    UNet) only the words the window holds."""
    n_keys = window.keys
    ws, wt = (_kept(window, p) if not every_word else [w for w in words(window.tokenizer, p) if w.tokens]
              for p in (source, target))
    if not ws or not wt:
        raise ValueError(f"an edit needs words in both prompts; source {source!r}: {seen_source}; "
                         f"target {target!r}: {seen_target}")
    both = f"source: {seen_source}; target: {seen_target}"
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
        s_tok, d_tok = _inside(src, n_keys), _inside(dst, n_keys)
        if not s_tok:  # the source word is past the window (a DiT's other window holds it): the target keeps its own
            own[d_tok] = True
        for t in d_tok if s_tok else ():
            mapper[t, s_tok] = 1.0 / len(s_tok)
    for w in own_words:
        own[_inside([w], n_keys)] = True
    if window.start_token:
        mapper[0, 0] = 1.0  # the start token
    end_s, end_t = (min(max(w[-1].tokens) + 1, n_keys - 1) for w in (ws, wt))  # the end tokens' positions
    for k in range(n_keys - end_t):
        mapper[end_t + k, min(end_s + k, n_keys - 1)] = 1.0
    return mapper, own, changed


def _inside(ws: list[Word], n_keys: int) -> list[int]:
    """The tokens of the words `ws` that a window of `n_keys` keys holds (before its end token)."""
    return [t for w in ws for t in w.tokens if t <= n_keys - 2]


def _kept(window: Window, prompt: str) -> list[Word]:
    """The words of `prompt` whose tokens all fall inside the window, before its end token."""
    return [w for w in words(window.tokenizer, prompt) if w.kept and max(w.tokens) <= window.keys - 2]
