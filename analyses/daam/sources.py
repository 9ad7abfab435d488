"""Which cache of a run answers a slice: the published one, the per-head one, or the head-averaged every-step one.

    caches(run)                          # [run.cache, run.heads, run.slices] (those kept); a lone Cache -> [cache]
    choose(run, names, steps=[1, 2], heads=None, branch="uncond")   # -> (run.slices, [1, 2], averaged=True)
    kept_steps(run)                      # the steps a slice may pick: those of the every-step caches

A cache answers a slice exactly when it holds every head of the chosen layers, branch and steps (the published cache
holds every head of the cond branch summed over all steps; ``heads`` every head at its steps); the ``slices`` cache
answers any steps and branch of a run, with heads averaged before the method's clamp (see maps.global_maps).
"""
from __future__ import annotations

from lab.hooks import Cache


def caches(source) -> list[Cache]:
    """The caches of a Run / Capture (published, then per-head, then head-averaged), or [source] for a Cache."""
    if isinstance(source, Cache):
        return [source]
    found = [getattr(source, role, None) for role in ("cache", "heads", "slices")]
    found = [c for c in found if c is not None]
    if not found:
        raise TypeError(f"{type(source).__name__} holds no DAAM cache: give a Run, a Capture or a lab.hooks Cache")
    return found


def widest(source) -> Cache:
    """The cache that holds the most attention layers (the one layer choices are listed from)."""
    return max(caches(source), key=lambda c: sum("key" in c.axes[n] for n in c))


def run_steps(cache: Cache) -> list[int]:
    """Every step index of the run a cache was captured in."""
    meta = cache.meta
    n = len(meta.get("timesteps") or []) or len(meta.get("summed_steps") or meta.get("steps") or [])
    return list(range(n))


def kept_steps(source) -> list[int] | None:
    """Step indices a slice may choose: the union of the every-step caches' steps; None if steps were only summed."""
    steps = sorted({s for c in caches(source) for s in (c.meta.get("steps") or [])})
    return steps or None


def per_head(cache: Cache, name: str) -> bool:
    return "head" in cache.axes[name]


def choose(source, names: list[str], steps=None, heads=None, branch: str = "cond"):
    """(cache, step positions or None for all, chosen steps or None, heads averaged?) for a slice of `names`.

    The first cache (published, per-head, head-averaged) that holds the slice exactly wins; then one that holds it
    with heads averaged (only when no head is asked for); else a ValueError says which capture option gives it.
    """
    all_caches = caches(source)
    wanted = None if steps is None else ([int(steps)] if isinstance(steps, int) else [int(s) for s in steps])
    if wanted is not None and not wanted:
        raise ValueError("steps=[] selects no step; give step indices or None for every step")
    exact, averaged = [], []
    for c in all_caches:
        if not all(n in c for n in names) or branch not in (c.meta.get("branches") or []):
            continue
        positions = _positions(c, names[0], wanted)
        if positions is False:
            continue
        if all(per_head(c, n) for n in names):
            exact.append((c, positions))
        elif heads is None:
            averaged.append((c, positions))
    for found, is_mean in ((exact, False), (averaged, True)):
        if found:
            c, positions = found[0]
            return c, positions, None if positions is None else tuple(wanted), is_mean
    raise ValueError(_why_not(all_caches, names, wanted, heads, branch))


def _positions(cache: Cache, name: str, wanted):
    """Indices along `cache`'s step axis for `wanted` (None: the whole axis); False if it does not hold them."""
    if "step" not in cache.axes[name]:
        summed = sorted(cache.meta.get("summed_steps") or [])
        return None if summed == (run_steps(cache) if wanted is None else sorted(set(wanted))) else False
    kept = cache.meta.get("steps") or []
    need = run_steps(cache) if wanted is None else wanted
    if any(s not in kept for s in need):
        return False
    return None if wanted is None else [kept.index(s) for s in wanted]


def _why_not(all_caches, names, wanted, heads, branch) -> str:
    """Why no cache holds the slice, and which capture option would."""
    branches = sorted({b for c in all_caches for b in (c.meta.get("branches") or [])})
    if branch not in branches:
        return (f"branch {branch!r} was not captured; captured: {', '.join(branches) or 'none'} "
                "(capture(slices=True) keeps both branches of a run with guidance)")
    stepped = [c for c in all_caches if any("step" in c.axes[n] for n in c)]
    if wanted is not None and not stepped:
        summed = all_caches[0].meta.get("summed_steps") or []
        return (f"this cache summed its steps during generation ({len(summed)} steps); capture with "
                "capture(slices=True) (every step, heads averaged) or head_steps= to slice by step")
    kept = sorted({s for c in stepped for s in (c.meta.get("steps") or [])})
    missing = [s for s in (wanted or []) if s not in kept]
    if missing:
        return (f"step {missing[0]} was not captured; captured steps: {kept[0]}..{kept[-1]}" if kept
                else "no steps were captured")
    what = [f"heads={list(heads) if not isinstance(heads, int) else heads}"]
    if wanted is not None:
        what.append(f"steps {wanted[0]}..{wanted[-1]}" if len(wanted) > 2 else f"steps {wanted}")
    what.append(f"branch {branch!r}")
    options = [f"head_steps={wanted if wanted is not None else 'all'!r}"]
    stepped_heads = [c for c in stepped if any(per_head(c, n) for n in c)]
    if stepped_heads and not any(all(n in c for n in names) for c in stepped_heads):
        missing = [n for n in names if not any(n in c for c in stepped_heads)]
        options.append(f"head_layers={missing[:2]!r}{' (and the rest)' if len(missing) > 2 else ''}")
    return (f"{', '.join(what)} need every head of those layers at those steps, and this run kept them with heads "
            f"averaged (slices=True) or summed over steps (the published maps: every head, cond branch, all steps);"
            f" capture with {' and '.join(options)} to slice by head there")
