"""DAAM on diffusion transformers (SD3 / SD3.5, FLUX.1): which layers, and which text keys a word is.

    run = daam.generate(pipe, "a red square next to a blue circle", seed=0, steps=4)   # SD3 or Flux: same call
    g = daam.global_maps(run)                     # GlobalMaps: (text keys, h, w) on the one token grid
    daam.word_map(g, pipe, "square")              # (H, W) in [0, 1]: the mean of its keys in every window
    dit.align(g, pipe, "square")                  # Alignment(keys=(3, 79), encoders=('clip', 't5'), note='')

layers(pipe, blocks)            the image->text views of every joint-attention layer, forward order
align(g, pipe, word, occurrence)   a word's text keys in each encoder window that holds it, and why not in others
word_keys(g, pipe)              {word: keys} for every word of the prompt that some window holds
prompt_keys(g, pipe)            the keys of every prompt token (no start / end token): relative maps' denominator
window_positions(pipe, prompts, max_sequence_length)   the keys of tokens="prompt": each window, start to end

The published aggregation (Tang et al. 2023), adapted: every joint-attention layer's image->text view
(``<block>.attn:image->text``), heads averaged, summed over steps and layers. A DiT has one token grid, so nothing
is upsampled between layers and averaging the heads before the method's clamp is exact (probabilities are >= 0);
the word map is expanded (bicubic) to the image and min-max normalised, as for UNets. Words are aligned to text keys
through each encoder's own tokenizer: SD3's keys are the CLIP window (77 positions, both CLIPs' states side by side)
then T5's (max_sequence_length), Flux's are T5's alone. A word's map is the mean of its keys in every window that
holds it; a word past one window (CLIP's 75 prompt tokens, or T5's max_sequence_length - 1) is mapped from the other
and ``align(...).note`` says so (daam.word_map warns with it).
"""
from __future__ import annotations

from dataclasses import dataclass

from lab.hooks import points
from lab.hooks.dit import family
from lab.hooks.points import denoiser_of

from .words import WORD, words

TOKENIZERS = {"sd3": {"clip": "tokenizer", "t5": "tokenizer_3"}, "flux": {"t5": "tokenizer_2"}}
BLOCKS = ("double", "single")


@dataclass(frozen=True)
class Alignment:
    """A word's text keys: keys (positions in the joint text sequence), encoders whose windows hold the word, and
    note: why an encoder is missing, or ''."""

    keys: tuple[int, ...]
    encoders: tuple[str, ...]
    note: str = ""


def is_dit(pipe) -> bool:
    """True for an SD3 / Flux pipeline or transformer."""
    try:
        return family(denoiser_of(pipe)) != "unet"
    except NotImplementedError:
        return False


def layers(pipe, blocks=None) -> list[str]:
    """The image->text views of a DiT's joint-attention layers, forward order; blocks: 'double' | 'single' or both."""
    wanted = (blocks,) if isinstance(blocks, str) else (tuple(blocks) if blocks is not None else BLOCKS)
    bad = [b for b in wanted if b not in BLOCKS]
    if bad:
        raise ValueError(f"blocks={blocks!r}; valid: 'double', 'single' (Flux's single-stream blocks)")
    return [p.name for p in points(pipe) if p.kind == "image->text" and p.block in wanted]


def _tokenizers(pipe) -> dict:
    """{encoder: tokenizer} of a DiT pipeline, in the order of its text keys."""
    if not hasattr(pipe, "transformer"):
        raise TypeError(f"a diffusion transformer's maps align words through the pipeline's tokenizers (SD3: "
                        f"tokenizer and tokenizer_3; Flux: tokenizer_2); got a {type(pipe).__name__}: pass the "
                        "pipeline")
    return {enc: getattr(pipe, attr, None) for enc, attr in TOKENIZERS[family(pipe.transformer)].items()}


def _absent(toks: dict, encoder: str) -> bool:
    """An encoder the pipeline runs without (SD3 without T5, as shapes-dit): its window is zero rows, no words."""
    return encoder in toks and toks[encoder] is None


def _windows(g, pipe):
    """(encoder, start, stop, tokenizer) of each text window of the run `g` was read from."""
    toks = _tokenizers(pipe)
    out = []
    for seg in g.context:
        if _absent(toks, seg["encoder"]):
            continue
        if seg["encoder"] not in toks:
            raise ValueError(f"the maps hold a {seg['encoder']} window but this pipeline's encoders are "
                             f"{', '.join(toks)}: pass the pipeline the run was generated with")
        out.append((seg["encoder"], *seg["keys"], toks[seg["encoder"]]))
    return out


def align(g, pipe, word: str, occurrence: int | None = None) -> Alignment:
    """The text keys of `word` (or a phrase) in every encoder window of `g` (GlobalMaps of a DiT) that holds it.

        align(g, sd3, "square")           # Alignment(keys=(3, 79), encoders=('clip', 't5'), note='')
        align(g, sd3, "a", occurrence=1)  # the second 'a' only

    A word in no window is a ValueError naming the windows; a word absent from the prompt one listing its words.
    """
    query = [m.group().lower() for m in WORD.finditer(word)]
    found, missing = {}, {}
    for encoder, start, stop, tok in _windows(g, pipe):
        ws = words(tok, g.prompt)
        texts = [w.text.lower() for w in ws]
        hits = [i for i in range(len(texts) - len(query) + 1) if query and texts[i:i + len(query)] == query]
        if not hits:
            raise ValueError(f"word {word!r} is not in the prompt {g.prompt!r}; words: {', '.join(w.text for w in ws)}")
        if occurrence is not None:
            if not -len(hits) <= occurrence < len(hits):
                raise ValueError(f"word {word!r} occurs {len(hits)} time(s) in {g.prompt!r}; occurrence={occurrence} "
                                 f"is out of range (0..{len(hits) - 1})")
            hits = [hits[occurrence]]
        last = stop - start - 2  # CLIP: 1..75 after its start token; T5: 0..L-2 before its end token
        tokens = [t for i in hits for w in ws[i:i + len(query)] for t in w.tokens]  # positions in this window
        if tokens and max(tokens) <= last:
            found[encoder] = [start + t for t in tokens]
        else:
            missing[encoder] = (f"{word!r} is past the {encoder.upper()} window ({stop - start} keys; its tokens are "
                                f"at {', '.join(map(str, tokens))})")
    if not found:
        raise ValueError(f"{word!r} is in no text encoder's window: {'; '.join(missing.values())}; shorten the prompt "
                         "or raise max_sequence_length")
    note = "; ".join(f"mapped without {e.upper()}: {why}" for e, why in missing.items())
    return Alignment(tuple(k for ks in found.values() for k in ks), tuple(found), note)


def word_keys(g, pipe) -> dict[str, list[int]]:
    """{word (lowercased): its keys in every window that holds it} for every word of g.prompt (repeats merged);
    words in no window are left out."""
    out: dict[str, list[int]] = {}
    for encoder, start, stop, tok in _windows(g, pipe):
        for w in words(tok, g.prompt):
            if w.tokens and max(w.tokens) <= stop - start - 2:
                out.setdefault(w.text.lower(), []).extend(start + t for t in w.tokens)
    return out


def prompt_keys(g, pipe) -> list[int]:
    """The keys of every token of g.prompt in each window, start and end tokens and padding left out."""
    keys = []
    for encoder, start, stop, tok in _windows(g, pipe):
        n = len(tok.tokenize(g.prompt))
        first = 1 if encoder == "clip" else 0  # CLIP's start token; T5 has none
        keys += [start + first + i for i in range(min(n, stop - start - 1 - first))]
    if not keys:
        raise ValueError(f"the prompt {g.prompt!r} is empty: it has no words to map")
    return keys


def window_positions(pipe, prompts, max_sequence_length: int | None = None) -> list[int]:
    """The keys of tokens='prompt' on a DiT: in each window, the start token to the end token of the longest prompt.

        window_positions(sd3, ["a red square"], 16)     # [0, 1, 2, 3, 4, 77, 78, 79, 80]
    """
    fam = family(denoiser_of(pipe))
    t5 = max_sequence_length or (256 if fam == "sd3" else 512)
    out, start = [], 0
    for encoder, tok in _tokenizers(pipe).items():
        window = getattr(pipe, "tokenizer_max_length", 77) if encoder == "clip" else t5
        if tok is None:  # an absent encoder's window: zero rows, no prompt tokens
            start += window
            continue
        n = max(len(tok(p, truncation=True, max_length=window).input_ids) for p in prompts)
        out += [start + i for i in range(n)]
        start += window
    return out
