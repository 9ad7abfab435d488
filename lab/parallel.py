"""A study's items split over accelerate processes, each finished item kept on disk, gathered on the main process.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from lab.parallel import run_items
    >>> out = Path(tempfile.mkdtemp())
    >>> run_items("squares", [1, 2, 3], lambda x: x * x, out, key=str)   # on the main process; None elsewhere
    [1, 4, 9]
    >>> sorted(p.name for p in (out / ".parts" / "squares").iterdir())  # one file per finished item
    ['1.pkl', '2.pkl', '3.pkl']

``run_items(name, items, work, out, key=..., tag=...)``: process r of N works on items r, r + N, r + 2N, ... (its own
share, whatever order the others finish in); each finished result is pickled to ``out/.parts/<name>[/<tag>]/<key>.pkl``
at once (written to a temporary file, then ``os.replace``d, so a killed process never leaves half a part); an item
whose part exists is not run again, so a rerun resumes an interrupted study. After a barrier the main process reads
every part back and returns the results in item order; other processes get None and should write nothing, unless
``everywhere=True``: then every process reads the list back (for a study whose next stage splits items made from
these results, such as DAAM's faithfulness edits of the objects its first stage found).

``work`` must seed each item by the item itself (its scene seed, its index), never by the process, so the results
are the same for any number of processes. ``tag`` names the study's configuration: parts made at another size or
with other settings live in another folder and are never mixed in. The parts stay after the run (the next run of
the same configuration reuses them); delete ``out/.parts`` to recompute.

``read_parts(out, name, tag)``: {key: result} of the items finished so far (a study still running, or killed).
``state()``: accelerate's PartialState (one process without ``accelerate launch``); ``is_main()``;
``device()``: this process's device when there are several processes, None (the caller's default) for one.

A plain ``python -m analyses.<study>`` run is one process and behaves as before; ``accelerate launch
--num_processes N -m analyses.<study>`` runs N. Processes meet at a barrier through the filesystem results, so
on several machines ``out`` must be a shared folder.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .progress import progress


def state():
    """accelerate's PartialState: process_index, num_processes, device; one process when not launched."""
    import torch
    from accelerate import PartialState
    # Without cpu=True accelerate treats processes on a machine with no GPU as one process each.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    """True on the process that writes figures and REPORT (the only one without ``accelerate launch``)."""
    return state().is_main_process


def device():
    """This process's device under ``accelerate launch`` with several processes; None for one process."""
    s = state()
    return s.device if s.num_processes > 1 else None


def tag_of(config: Any) -> str:
    """A short stable name for a configuration (its repr), for ``run_items(..., tag=tag_of(cfg))``."""
    return hashlib.sha1(repr(config).encode()).hexdigest()[:12]


def parts_dir(out: str | os.PathLike, name: str, tag: str = "") -> Path:
    """The folder of a study's finished items: out/.parts/<name>[/<tag>]."""
    folder = Path(out) / ".parts" / name
    return folder / tag if tag else folder


def _check_key(k: str, item) -> str:
    if not isinstance(k, str) or not k or "/" in k or k.startswith("."):
        raise ValueError(f"key {k!r} of item {item!r} is not a file name; a key is a non-empty str without '/' "
                         "that does not start with '.'")
    return k


def _write(path: Path, result) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _read(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def run_items(name: str, items: Sequence, work: Callable[[Any], Any], out: str | os.PathLike,
              key: Callable[[Any], str] = str, tag: str = "", desc: str | None = None,
              everywhere: bool = False) -> list | None:
    """[work(item) for item in items] computed over the accelerate processes, each result kept on disk as it is
    finished; the list (in item order) on the main process, None on the others (everywhere=True: the list on every
    process). desc: a progress bar's label."""
    keys = [_check_key(key(item), item) for item in items]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"items of study {name!r} share keys {', '.join(map(repr, twice))}; every item needs its own")
    folder = parts_dir(out, name, tag)
    folder.mkdir(parents=True, exist_ok=True)
    s = state()
    mine = range(s.process_index, len(items), s.num_processes)
    for i in progress(mine, desc, unit="item", disable=desc is None):
        path = folder / f"{keys[i]}.pkl"
        if not path.exists():
            _write(path, work(items[i]))
    s.wait_for_everyone()
    if not (s.is_main_process or everywhere):
        return None
    missing = [k for k in keys if not (folder / f"{k}.pkl").exists()]
    if missing:
        raise RuntimeError(f"study {name!r}: no part for items {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''} in {folder}; did a process fail?")
    return [_read(folder / f"{k}.pkl") for k in keys]


def read_parts(out: str | os.PathLike, name: str, tag: str = "") -> dict[str, Any]:
    """{key: result} of the items finished so far, in key order; works while the study is still running."""
    folder = parts_dir(out, name, tag)
    paths: Iterable[Path] = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    return {p.stem: _read(p) for p in paths}
