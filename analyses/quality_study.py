"""Study: what the built-in model draws, and how often it draws what it was asked (scored by the world's parser).

    python -m analyses.quality_study            # writes figures/samples.png and figures/quality.md
    run(out, config=config(n=8))                # the REPORT section; config() sizes it from LAB_SIZE

Writes a sample grid (captions of unseen scenes, the world's rendering of each above the model's image) and the
quality table of ``lab.world.quality``, both in the world the model was trained on (``lab.world.world_of``); on
world 2 the section also gives issue 19's quality goals, each met only by its interval. Its items are batches of 8
consecutive captions (one pipeline call each, so any number of processes gives the same table), split over the
processes of ``accelerate launch`` by lab.parallel.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import lab
from lab import parallel
from lab.plotting import save_figure
from lab.sizes import pick
from lab.world import render, world_of
from lab.world.quality import batches, collect, evaluation_scenes, generate, goals, score_batch, table

SPLITS_ITEMS = True  # its batches go through lab.parallel.run_items: analyses.run_all runs it on every process


def sample_grid(pipe, n: int = 8, steps: int = 25, guidance: float = 7.5, world: int | None = None):
    """A figure: for n unseen captions, the world's rendering (top) and the model's image (bottom). world: the
    scenes' (default: the pipeline's)."""
    from matplotlib.figure import Figure
    world = world_of(pipe) if world is None else world
    scenes = evaluation_scenes("one object", n // 2, world) + evaluation_scenes("two objects", n - n // 2, world)
    images = generate(pipe, scenes, steps, guidance, seed=7)
    fig = Figure(figsize=(2.0 * n, 4.8), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i, (scene, image) in enumerate(zip(scenes, images)):
        axes[0, i].imshow(render(scene))
        axes[1, i].imshow(image)
        axes[0, i].set_title("\n".join(_wrap(scene.caption, 28)), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("world (truth)")
    axes[1, 0].set_ylabel("model")
    return fig


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


@dataclass(frozen=True)
class Config:
    """How big the study runs: images in the sample grid, captions per kind of prompt, DDIM steps."""
    samples: int
    n: int
    steps: int


def config(**overrides) -> Config:
    """The study's size for LAB_SIZE (small | default | full), with any field overridden: config(n=8)."""
    return dataclasses.replace(Config(samples=pick(4, 8, 8), n=pick(4, 60, 200), steps=pick(10, 25, 25)), **overrides)


def run(out: Path, model: str = "shapes", config: Config | None = None) -> str:
    """Run the study; returns its REPORT section (Markdown); "" on a process other than the main one under
    ``accelerate launch`` (its batches are split over the processes, see lab.parallel)."""
    cfg = config if config is not None else globals()["config"]()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = lab.load(model, device=parallel.device())
    world = world_of(pipe)
    todo = batches(cfg.n)
    scored = parallel.run_items("quality", todo, lambda b: score_batch(pipe, b, cfg.steps, world=world), out,
                                key=lambda b: f"{b.group}-{b.first}", tag=parallel.tag_of((model, cfg, world)),
                                desc="quality: batches")
    if scored is None:
        return ""
    result = collect(todo, scored, cfg.steps, world=world)
    save_figure(sample_grid(pipe, n=cfg.samples, steps=cfg.steps, world=world), out / "samples.png")
    if world == 1:
        section = f"## Built-in model quality\n\n![samples](samples.png)\n\n{table(result)}\n"
    else:
        section = (f"## Built-in model quality (world 2)\n\n![samples](samples.png)\n\nGoals (issue 19; met only "
                   f"when the 95% interval's lower end clears the goal):\n\n{goals(result)}\n\n{table(result)}\n")
    (out / "quality.md").write_text(section)
    return section


if __name__ == "__main__":
    from analyses.run_all import run_one
    run_one(run)
