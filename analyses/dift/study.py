"""Study: does the built-in model's UNet find corresponding points between shapes-world photographs (DIFT)?

    python -m analyses.dift [OUT_DIR]        # LAB_SIZE=small | default | full; writes dift_*.png, returns REPORT text
    run(out, config=config(pairs=2))         # the REPORT section (Markdown); config() sizes it from LAB_SIZE

Items are pairs (pairs.py) in the world the model was trained on (``lab.world.world_of``); PCK@0.1 is measured over a
grid of timesteps and up-blocks, against three baselines: raw pixels, VAE latents, and the same UNet with
re-randomised weights (over the same grid, its best cell) (evaluate.py). Then, at DIFT's best cell, pairs whose B is
A changed in one factor only show which difference breaks matching (on world 2, with the goal that none falls under
0.6), and the whole grid is repeated on the hardest factor's pairs. Figures: figures.py; the section: report.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from lab.load import with_random_unet
from lab.plotting import save_figure
from lab.sizes import pick
from lab.world import world_of

from .evaluate import baselines, by_factor, grid, hardest_factor, subsets
from .figures import figure_bars, figure_examples, figure_grid, figure_similarity
from .pairs import one_factor_pairs, world_pairs
from .report import best_cells, methods_of, section


@dataclass(frozen=True)
class Config:
    """How big the study runs: pairs, the (timestep, block) grid, and noise draws per image."""
    pairs: int
    timesteps: tuple[int, ...]
    blocks: tuple[str, ...]
    ensemble: int = 8

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(sorted(set(self.timesteps))))
        object.__setattr__(self, "blocks", tuple(self.blocks))


def config(**overrides) -> Config:
    """The study's size for LAB_SIZE (small | default | full), with any field overridden: config(pairs=2)."""
    cfg = Config(pairs=pick(6, 60, 300),
                 timesteps=pick([100, 261], [0, 100, 261, 500, 900], list(range(0, 1000, 50)) + [261]),
                 blocks=pick(["up_blocks.1", "up_blocks.2"], ["up_blocks.0", "up_blocks.1", "up_blocks.2"],
                             ["up_blocks.0", "up_blocks.1", "up_blocks.2"]))
    return dataclasses.replace(cfg, **overrides)


def run(out: Path, model: str = "shapes", config: Config | None = None) -> str:
    """Run the study; writes dift_grid.png, dift_baselines.png, dift_examples.png, dift_similarity.png and returns
    the REPORT section (Markdown). config: a Config (default: config(), sized by LAB_SIZE)."""
    import lab

    out = Path(out)
    torch.manual_seed(0)
    pipe = lab.load(model)
    cfg = config if config is not None else globals()["config"]()
    pairs = world_pairs(cfg.pairs, world=world_of(pipe))
    trained = grid(pipe, pairs, cfg.timesteps, cfg.blocks, cfg.ensemble, desc="DIFT grid, built-in UNet")
    random = grid(with_random_unet(pipe), pairs, cfg.timesteps, cfg.blocks, cfg.ensemble,
                  desc="DIFT grid, re-randomised UNet")
    best, _ = best_cells(trained, random)
    prompted = grid(pipe, pairs, [best[0]], [best[1]], cfg.ensemble, prompt="a {category}", desc="DIFT, prompted")[best]
    factors = by_factor(pipe, pairs, best[0], best[1], cfg.ensemble)
    worst = hardest_factor(factors)
    hardest = grid(pipe, one_factor_pairs(pairs, worst), cfg.timesteps, cfg.blocks, cfg.ensemble,
                   desc=f"DIFT grid, {worst} only")
    base = baselines(pipe, pairs)

    subs = {k: subsets(v) for k, v in methods_of(trained, random, base).items()}
    save_figure(figure_grid(trained, random, cfg.timesteps, cfg.blocks, (worst, hardest)), out / "dift_grid.png")
    save_figure(figure_bars(subs), out / "dift_baselines.png")
    save_figure(figure_examples(pairs, trained[best]), out / "dift_examples.png")
    mirrored = next((p for p in pairs if p.info["mirrored"]), pairs[0])
    save_figure(figure_similarity(pipe, mirrored, best[0], best[1], cfg.ensemble), out / "dift_similarity.png")
    return section(pipe, pairs, cfg, trained, random, base, prompted, factors, (worst, hardest))


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
