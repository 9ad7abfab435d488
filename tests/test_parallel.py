"""lab.parallel: items split over processes, one part file per finished item, resumed runs; the classify and quality
studies on it in one process and in two (accelerate launch, gloo on the CPU)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lab.parallel import parts_dir, read_parts, run_items

ROOT = Path(__file__).resolve().parents[1]


def test_run_items_returns_results_in_item_order(tmp_path):
    assert run_items("squares", [3, 1, 2], lambda x: x * x, tmp_path) == [9, 1, 4]


def test_each_finished_item_is_one_part_file(tmp_path):
    run_items("squares", [3, 1, 2], lambda x: x * x, tmp_path, tag="t")
    folder = parts_dir(tmp_path, "squares", "t")
    assert sorted(p.name for p in folder.iterdir()) == ["1.pkl", "2.pkl", "3.pkl"]  # no temporary file left
    assert pickle.loads((folder / "3.pkl").read_bytes()) == 9


def test_a_rerun_computes_only_the_items_without_a_part(tmp_path):
    run_items("squares", [1, 2, 3], lambda x: x * x, tmp_path)
    (parts_dir(tmp_path, "squares") / "2.pkl").unlink()
    done = []
    assert run_items("squares", [1, 2, 3], lambda x: done.append(x) or x * x, tmp_path) == [1, 4, 9]
    assert done == [2]


def test_another_tag_does_not_reuse_parts(tmp_path):
    run_items("squares", [2], lambda x: x * x, tmp_path, tag="a")
    assert run_items("squares", [2], lambda x: x * 10, tmp_path, tag="b") == [20]


def test_read_parts_gives_the_items_finished_so_far(tmp_path):
    run_items("squares", [1, 2], lambda x: x * x, tmp_path)
    assert read_parts(tmp_path, "squares") == {"1": 1, "2": 4}
    assert read_parts(tmp_path, "not started") == {}


def test_items_sharing_a_key_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"share keys '1'"):
        run_items("squares", [1, 1.0], lambda x: x, tmp_path, key=lambda x: str(int(x)))


def test_a_key_that_is_not_a_file_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"key 'a/b' of item"):
        run_items("squares", ["a/b"], lambda x: x, tmp_path)


def _job(out: Path, processes: int) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", LAB_SIZE="small", LAB_PROGRESS="0",
               HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    job = [str(ROOT / "tests" / "studies_job.py"), str(out)]
    if processes > 1:
        job = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517"] + job
    done = subprocess.run([sys.executable] + job, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _table(out: Path, name: str = "classify") -> list[str]:
    return [line for line in (out / f"{name}.md").read_text().splitlines() if line.startswith("| ")]


def _parts(out: Path, name: str = "classify") -> dict:
    (folder,) = (out / ".parts" / name).iterdir()
    return read_parts(out, name, folder.name)


def test_two_processes_give_the_classify_and_quality_tables_of_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert "process 0 of 1: squares [1, 4, 9]" in _job(one, 1)
    said = _job(two, 2)
    assert "process 0 of 2: squares [1, 4, 9]" in said and "process 1 of 2: squares [1, 4, 9]" in said  # everywhere
    assert _table(two) == _table(one) and len(_table(one)) == 5  # header, 2 attributes x 2 methods
    a, b = _parts(one), _parts(two)
    assert list(a) == list(b) and len(a) == 4
    assert all(torch.equal(a[k]["errors"], b[k]["errors"]) and torch.equal(a[k]["attention"], b[k]["attention"])
               for k in a)
    assert _table(two, "quality") == _table(one, "quality") and len(_table(one, "quality")) > 2
    a, b = _parts(one, "quality"), _parts(two, "quality")  # 3 batches: process 1 made one of them
    assert list(a) == list(b) and len(a) == 3 and all(a[k]["verdicts"] == b[k]["verdicts"] for k in a)


def test_classify_resumes_from_its_parts_with_the_same_table(tmp_path):
    from analyses.classify.study import config, run
    cfg = config(n=2, timesteps=2)
    run(tmp_path, config=cfg)
    table, parts = _table(tmp_path), _parts(tmp_path)
    (folder,) = (tmp_path / ".parts" / "classify").iterdir()
    kept = sorted(folder.iterdir())[0]
    for lost in sorted(folder.iterdir())[1:3]:
        lost.unlink()  # as if the run had been killed before these two pairs
    before = kept.stat().st_mtime_ns
    run(tmp_path, config=cfg)
    assert _table(tmp_path) == table
    assert kept.stat().st_mtime_ns == before  # a finished pair is not computed again
    again = _parts(tmp_path)
    assert list(again) == list(parts)
    assert all(torch.equal(again[k]["errors"], parts[k]["errors"]) for k in parts)
