"""DAAM: which pixels each word of a prompt attends to, from cross-attention (Tang et al., ACL 2023), on lab.hooks.

    from analyses import daam
    run = daam.generate(pipe, "a small red hexagon on a white background", seed=0, steps=25, slices=True, queries=True)
    g = daam.global_maps(run)                                # published method: down+up layers, all heads, all steps
    m = daam.word_map(g, pipe, "hexagon")                    # (128, 128) in [0, 1]; daam.binarize(m, 0.4) -> mask
    daam.word_map(g, pipe, "hexagon", relative=True)        # / the sum of all prompt tokens (reference normalize=True)
    daam.global_maps(run, steps=range(10), resolution=8, branch="uncond")   # a slice (heads averaged), no re-run
    daam.capture_bytes(pipe, 1024, steps=25, prompt=p, **daam.explorer_options(25))   # bytes, without running
    daam.word_map(daam.open_vocab(run.queries, pipe, "a square"), pipe, "square")            # a word not in the prompt
    run = daam.generate(sd3, "a red square", seed=0, steps=28)      # SD3 / SD3.5 / FLUX.1: the same calls after it
    run = daam.generate(flux, "a cat on grass", method="concept", concepts=["cat", "grass", "sky"])  # ConceptAttention

capture / generate / explorer_options   capture.py: what to keep while generating (published maps, slices, heads,
                                    queries for open vocabulary); views.py: the traces each option makes
capture_bytes / capture_sizes       sizes.py: the bytes a capture keeps, predicted from the UNet's points
words / find / occurrences          words.py: word -> token positions via the tokenizer (multi-token, repeated words)
global_maps / word_map / word_maps / expand / binarize / aggregate / layer_names   maps.py: the method and its slices
open_vocab                          openvocab.py: maps for any text from the kept queries (OVAM)
overlay / word_grid / layer_step_grid / view   plot.py: figures on a given Axes or Figure, no global matplotlib state
dit.layers / dit.align              dit.py: SD3 and Flux through the same calls: the image->text views of joint
                                    attention on one token grid, words aligned in each text encoder's window
concept.capture / concept.global_maps   concept.py: ConceptAttention's output-space maps (method="concept")
python -m analyses.daam [out]       study.py: mIoU against the shapes world's parser, baselines, slices, faithfulness
"""
from . import concept, dit
from .capture import Capture, Run, capture, daam_layers, explorer_options, generate, method_keep
from .maps import (TAU, GlobalMaps, aggregate, binarize, block_of, expand, global_maps, layer_names, prompt_of,
                   token_total, word_map, word_maps)
from .openvocab import encode, open_vocab
from .sizes import capture_bytes, capture_sizes
from .words import Word, find, occurrences, tokenizer_of, words

__all__ = [
    "TAU", "Capture", "GlobalMaps", "Run", "Word", "aggregate", "binarize", "block_of", "capture", "capture_bytes",
    "capture_sizes", "concept", "daam_layers", "dit", "encode", "expand", "explorer_options", "find", "generate",
    "global_maps", "layer_names", "method_keep", "occurrences", "open_vocab", "prompt_of", "token_total",
    "tokenizer_of", "word_map", "word_maps", "words",
]
