"""Study: does the built-in model's UNet find corresponding points between shapes-world photographs (DIFT)?

    python -m analyses.dift [OUT_DIR]        # LAB_SIZE=small | default | full; writes dift_*.png, returns REPORT text
    run(out, config=config(pairs=2))         # the REPORT section (Markdown); config() sizes it from LAB_SIZE

Items are pairs (pairs.py) in the world the model was trained on (``lab.world.world_of``); PCK@0.1 is measured over a
grid of timesteps and up-blocks, against three baselines: raw pixels, VAE latents, and the same UNet with
re-randomised weights (over the same grid, its best cell) (evaluate.py). Then, at DIFT's best cell, pairs whose B is
A changed in one factor only show which difference breaks matching (on world 2, with the goal that none falls under
0.6), and the whole grid is repeated on the hardest factor's pairs. Figures: figures.py; the section: report.py.
Each grid's timesteps (one UNet pass per timestep serves every block), then the prompted cell, the factors and the
baselines, are items split over the processes of ``accelerate launch`` by lab.parallel; every process reads each
stage back, since the next stage's items depend on it (the best cell, the hardest factor).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from lab import parallel
from lab.load import with_random_unet
from lab.plotting import save_figure
from lab.sizes import pick
from lab.world import world_of

from .evaluate import baselines, by_factor, grid, grid_inputs, hardest_factor, subsets
from .figures import figure_bars, figure_examples, figure_grid, figure_similarity
from .pairs import one_factor_pairs, world_pairs
from .report import best_cells, methods_of, section

SPLITS_ITEMS = True  # its timesteps go through lab.parallel.run_items: analyses.run_all runs it on every process


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
    the REPORT section (Markdown; "" on a process other than the main one under ``accelerate launch``, see
    lab.parallel). config: a Config (default: config(), sized by LAB_SIZE)."""
    import lab

    out = Path(out)
    torch.manual_seed(0)
    pipe = lab.load(model, device=parallel.device())
    cfg = config if config is not None else globals()["config"]()
    world = world_of(pipe)
    pairs = world_pairs(cfg.pairs, world=world)
    tag = parallel.tag_of((model, cfg, world))

    def split_grid(stage, pipe_, pairs_, desc):  # {(t, block): evaluation}, one item per timestep, on every process
        inputs = functools.cache(lambda: grid_inputs(pipe_, pairs_))  # images encoded once per process, if it works
        done = parallel.run_items("dift", cfg.timesteps,
                                  lambda t: grid(pipe_, pairs_, [t], cfg.blocks, cfg.ensemble, inputs=inputs()),
                                  out, key=lambda t: f"{stage}-{t}", tag=tag, desc=desc, everywhere=True)
        return {cell: result for d in done for cell, result in d.items()}

    trained = split_grid("trained", pipe, pairs, "DIFT grid, built-in UNet")
    random = split_grid("random", with_random_unet(pipe), pairs, "DIFT grid, re-randomised UNet")
    best, _ = best_cells(trained, random)
    at_best = {"prompted": lambda: grid(pipe, pairs, [best[0]], [best[1]], cfg.ensemble, prompt="a {category}",
                                        desc="DIFT, prompted")[best],
               "factors": lambda: by_factor(pipe, pairs, best[0], best[1], cfg.ensemble),
               "baselines": lambda: baselines(pipe, pairs)}
    prompted, factors, base = parallel.run_items("dift", list(at_best), lambda name: at_best[name](), out, tag=tag,
                                                 desc="DIFT: best cell, factors, baselines", everywhere=True)
    worst = hardest_factor(factors)
    hardest = split_grid(f"{worst} only", pipe, one_factor_pairs(pairs, worst), f"DIFT grid, {worst} only")
    if not parallel.is_main():
        return ""  # a process other than the main one under accelerate launch

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
