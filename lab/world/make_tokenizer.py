"""Build a CLIP tokenizer folder (vocab.json, merges.txt) from CLIP's published BPE file.

    python -m lab.world.make_tokenizer path/to/bpe_simple_vocab_16e6.txt.gz out_folder

The BPE file ships (MIT licence) inside the ``open-clip-torch`` wheel; fetch it without dependencies with
``pip download --no-deps open-clip-torch``. The vocabulary layout follows CLIP's own tokenizer: the 256 byte
symbols, the same with an end-of-word marker, one entry per merge, then the two special tokens.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]  # in CLIP's order: printable bytes first, then the rest


def build(bpe_gz: str | Path, out: str | Path) -> Path:
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
