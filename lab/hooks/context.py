"""Context: what an edit or a swap is told besides the tensor (point, step, timestep, the batch's branches, rows).

    ctx.rows("cond")        # the batch rows of a branch: slice(batch, 2 * batch) with classifier-free guidance
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Context:
    """What an edit ``fn(probs, ctx)`` / ``fn(output, ctx)`` or a swap ``fn(run, ctx)`` is told besides the tensor.

        def only_cond(probs, ctx):
            probs = probs.clone(); probs[ctx.rows("cond"), :, :, 5] = 0; return probs

    branches is the layout of the batch (("uncond", "cond"): first `batch` rows unconditional); batch is the rows per
    branch (prompts * images_per_prompt); resolution is the point's (h, w), queries being h*w of them.
    """

    point: str
    step: int
    t: torch.Tensor | float = field(repr=False)  # the denoiser's timestep argument, as given (read .timestep)
    branches: tuple[str, ...]
    batch: int
    resolution: tuple[int, int] | None

    @property
    def timestep(self) -> float:
        """The step's timestep as a float (reading it waits for the device, so it is read only when asked)."""
        return as_float(self.t)

    def rows(self, branch: str) -> slice:
        """Batch rows of `branch` ('cond', 'uncond', or a label trace(branches=) gave) in the tensor an edit gets."""
        if branch not in self.branches:
            raise ValueError(f"branch {branch!r} is not in this step's batch; branches: {', '.join(self.branches)}")
        i = self.branches.index(branch)
        return slice(i * self.batch, (i + 1) * self.batch)


def as_float(t) -> float:
    return float(t.item()) if torch.is_tensor(t) else float(t)
