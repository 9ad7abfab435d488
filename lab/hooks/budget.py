"""The memory budget of a trace: what its keep costs per step, the refusal before step 0 when it would not fit, and
the nearest Keep that fits, written so that it can be pasted.

    class Trace(Budget): ...          # the trace's _setup calls self._check_budget(n_slots, when)

Sizes follow lab.hooks.keep (step_shape per point); the room is the lesser of max_bytes and what the device (or the
CPU) has free; running stores move to the model's device while they fit in half its free memory.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from .keep import ATTENTION, TEXT_KEYS, Keep, human, nbytes, step_shape

DEVICE_HEADROOM = 0.5  # kept tensors may take at most this share of the device's free memory (the model needs the rest)


class Budget:
    """Mixin of Trace: the budget check, from the trace's names, points, layout, batch, keep and max_bytes."""

    def _step_bytes(self, keep: Keep, n_branches: int) -> int:
        total = 0
        for name in self.names:
            p = self.points[name]
            queries, keys = _counts(p, self.n_keys)
            shape = step_shape(p.kind, keep, n_branches, self.batch, p.heads, p.resolution, keys, p.channels, queries)
            total += nbytes(shape, torch.float32 if keep.step_mode in ("sum", "mean") else keep.dtype)
        return total

    def _need(self, keep: Keep, n_slots: int) -> int:
        branches = [b for b in keep.branches if b in self.layout()]
        per_step = self._step_bytes(keep, len(branches))
        return per_step * (n_slots if keep.step_mode in ("all", "list") else 1)

    def _check_budget(self, n_slots: int, when: str) -> None:
        """Refuse, before the step that would pass it, a keep over max_bytes or over what the memory can hold; pick
        where the running stores live (the model's device when the kept tensors fit in half its free memory)."""
        need = self._need(self.keep, n_slots)
        room, where = _free_bytes(self.store_device)
        limit, what = min(self.max_bytes, room), f"max_bytes={human(self.max_bytes)}"
        if room < self.max_bytes:
            what = f"the {human(room)} free on {where}"
        if self.step == 0 and self.device is not None and self.device.type != "cpu" and self.store_device.type == "cpu":
            on_device, _ = _free_bytes(self.device)
            if need <= on_device * DEVICE_HEADROOM:
                self.store_device = self.device  # stays there during the run, moves to keep.device once at the end
        if need <= limit:
            return
        k = self.keep
        options = []
        if k.step_mode in ("all", "list"):
            options.append(f"steps='sum' or 'mean' ({human(self._need(_with(k, steps='sum'), 1))})")
        if k.heads == "all" and any(self.kinds[n] in ATTENTION for n in self.names):
            options.append(f"heads='mean' ({human(self._need(_with(k, heads='mean'), n_slots))})")
        if k.tokens is None and any(self.kinds[n] in TEXT_KEYS for n in self.names):
            options.append("tokens=[...] (only the cross-attention keys you need)")
        if len(self.kept_branches) > 1:
            options.append(f"branches=('cond',) ({human(self._need(_with(k, branches=('cond',)), n_slots))})")
        if k.dtype == torch.float32 and k.step_mode in ("all", "list"):
            options.append(f"dtype=torch.float16 ({human(self._need(_with(k, dtype=torch.float16), n_slots))})")
        fits = self._cheapest_fit(n_slots, limit)
        hint = f" The nearest keep that fits: {fits!r}." if fits is not None else ""
        raise MemoryError(
            f"keeping {len(self.names)} points with {k}{' ' + when if when else ''} would take {human(need)}, over "
            f"{what}.{hint} Other ways down: {'; '.join(options + ['fewer points'])}"
            f"{'; or raise max_bytes' if limit == self.max_bytes else ''}."
        )

    def _cheapest_fit(self, n_slots: int, limit: int) -> Keep | None:
        """The Keep that gives up least of this one and fits in `limit`: float16 storage first, then only the prompt's
        tokens, then heads averaged, then the cond branch alone, then steps summed."""
        k = self.keep
        prompt_tokens = None
        if self.input_ids is not None and self.n_keys is not None and k.tokens is None and self.family == "unet":
            eos = _eos_positions(self.input_ids)
            prompt_tokens = list(range(min(max(eos) + 1, self.n_keys)))
        moves = [
            ("dtype", torch.float16) if k.step_mode in ("all", "list") else None,
            ("tokens", prompt_tokens) if prompt_tokens and any(self.kinds[n] in TEXT_KEYS for n in self.names)
            else None,
            ("heads", "mean") if any(self.kinds[n] in ATTENTION for n in self.names) else None,
            ("branches", ("cond",)) if len(self.kept_branches) > 1 else None,
            ("steps", "sum") if k.step_mode in ("all", "list") else None,
        ]
        for change in moves:
            if change is None:
                continue
            k = _with(k, **{change[0]: change[1]})
            if self._need(k, n_slots if k.step_mode in ("all", "list") else 1) <= limit:
                return k
        return None



def _with(keep: Keep, **changes) -> Keep:
    return dataclasses.replace(keep, **changes)


def _eos_positions(ids: torch.Tensor) -> list[int]:
    """Per prompt, the index of its first end token (the highest id in a CLIP vocabulary), or its last position."""
    ends = []
    for row in ids.tolist():
        eos = max(row)
        ends.append(row.index(eos))
    return ends


def _free_bytes(device: torch.device) -> tuple[int, str]:
    """Bytes free on `device` for kept tensors, and the device's name as a message gives it."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            return int(info["MemAvailable"].split()[0]) * 1024, "the CPU (available memory)"
        except (OSError, KeyError, ValueError):
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the CPU (available memory)"
        except (ValueError, OSError, AttributeError):
            return 2**63, "the CPU"
    return 2**63, str(device)


def _counts(p, n_text: int | None) -> tuple[int | None, int | None]:
    """(queries, keys) of an attention point, or (None, tokens) of a token-row point (projection, text stream)."""
    from .dit import query_key_counts

    hw = p.resolution[0] * p.resolution[1]
    if p.kind in ATTENTION:
        if p.kind == "attn2" and p.text_tokens is None:
            return hw, n_text
        return query_key_counts(p.kind, p.resolution, p.text_tokens if p.text_tokens is not None else n_text)
    tokens = {"image": hw, "text": n_text, "joint": hw + (n_text or 0)}
    return None, (tokens[p.tokens] if p.tokens else (n_text if p.reads_text() else hw))
