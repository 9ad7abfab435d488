"""Prompt-to-prompt: token alignment and its refusals (the built-in model's CLIP tokenizer), and the controlled
generation on tiny SD1.5 / SD2.1 / SDXL pipelines built from their real configs."""
import numpy as np
import pytest
import torch

from analyses import p2p
from analyses.p2p.score import CHECKS, tasks, verdict
from lab.world import render
from devices import batch_close
from resume import rerun_without
from tiny_models import one_thread, tiny_pipeline  # noqa: F401

SRC = "a small red circle to the left of a large blue square on a white background"


def test_swap_maps_each_word_to_the_same_word_and_the_swapped_one_to_its_source(tokenizer):
    a = p2p.align(tokenizer, SRC, SRC.replace("red", "green"), "swap")
    assert a.changed == [("red", "green")]
    assert torch.equal(a.mapper, torch.eye(77)) and not a.own.any()


def test_swap_to_a_longer_word_gives_each_of_its_tokens_the_mean_of_the_source_word(tokenizer):
    a = p2p.align(tokenizer, SRC, SRC.replace("circle", "hexagon"), "swap")  # circle (4) -> hex+agon (4, 5)
    assert a.mapper[4, 4] == 1 and a.mapper[5, 4] == 1  # both hexagon tokens read circle's map
    assert a.mapper[6, 5] == 1  # 'to' (one later in the target) reads 'to' of the source
    assert torch.allclose(a.mapper.sum(1), torch.ones(77))


def test_refine_keeps_the_added_words_own_maps(tokenizer):
    a = p2p.align(tokenizer, "a red circle on a white background", "a red striped circle on a white background",
                  "refine")
    assert a.changed == [("", "striped")]
    own = a.own.nonzero().flatten().tolist()
    assert own == [3]  # 'striped' is its own; 'circle' (target 4) reads the source's 'circle' (3)
    assert a.mapper[4, 3] == 1


def test_swap_of_prompts_that_do_not_align_is_refused_with_the_words_the_tokenizer_sees(tokenizer):
    with pytest.raises(ValueError, match=r"same number of words.*target: a \| large \| hex\+agon"):
        p2p.align(tokenizer, "a small circle", "a large hexagon on white", "swap")


def test_refine_that_replaces_a_word_is_refused(tokenizer):
    with pytest.raises(ValueError, match="replaces 'red' with 'green'.*method='swap'"):
        p2p.align(tokenizer, SRC, SRC.replace("red", "green"), "refine")


def test_a_reweighted_word_not_in_the_prompt_is_refused_with_its_words(tokenizer):
    with pytest.raises(ValueError, match=r"'hexagon' is not in the prompt.*words the tokenizer sees: a \| small"):
        p2p.token_positions(tokenizer, SRC, "hexagon")


def test_an_unknown_method_is_refused_naming_the_methods(tokenizer):
    with pytest.raises(ValueError, match="'swop' is not one of: swap, refine, reweight"):
        p2p.align(tokenizer, SRC, SRC, "swop")


@pytest.fixture(scope="module", params=["sd15", "sd21", "sdxl"])
def pipe(request):
    return tiny_pipeline(request.param)


def _same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to one level of rounding: rows of one batch may differ in the last float bits."""
    batch_close(torch.from_numpy(a).float() / 255, torch.from_numpy(b).float() / 255, atol=1.5 / 255, rtol=0)


def _run(pipe, request, controls, **kw):
    return p2p.generate(pipe, [request], controls, steps=3, seed=0, height=64, width=64, plain=True, **kw)


def test_without_injection_the_edit_is_the_uncontrolled_target(pipe):
    out = _run(pipe, p2p.Request("a red square", "a blue square"), [p2p.Control(0, 0, label="none")])
    assert out.images["none"].shape == (1, 64, 64, 3)
    _same_image(out.images["none"], out.images["plain"])


def test_injecting_every_map_of_the_same_prompt_reproduces_the_source(pipe):
    same = p2p.Request("a red square", "a red square", "reweight", reweight={"red": 1.0})
    out = _run(pipe, same, [p2p.Control(1.0, 1.0, label="all")])
    _same_image(out.images["all"], out.images["source"])


def test_local_blend_with_an_empty_mask_keeps_the_source(pipe):
    req = p2p.Request("a red square", "a blue square", blend=("square",))
    out = _run(pipe, req, [p2p.Control(0.8, 0.4, blend=True, label="blend")], blend_threshold=1.5, blend_start=0.0)
    _same_image(out.images["blend"], out.images["source"])
    assert out.masks["blend"].shape == (1, 8, 8) and float(out.masks["blend"].sum()) == 0


def test_local_blend_with_a_full_mask_is_the_unblended_edit(pipe):
    req = p2p.Request("a red square", "a blue square", blend=("square",))
    out = _run(pipe, req, [p2p.Control(0.8, 0.4, label="edit"), p2p.Control(0.8, 0.4, blend=True, label="blend")],
               blend_threshold=-1.0, blend_start=0.0)
    _same_image(out.images["blend"], out.images["edit"])


def test_reweighting_a_word_changes_the_image(pipe):
    same = p2p.Request("a red square", "a red square", "reweight", reweight={"red": 5.0})
    out = _run(pipe, same, [p2p.Control(1.0, 0.0, label="x5")])
    assert not np.array_equal(out.images["x5"], out.images["source"])


def test_tasks_swap_one_word_of_a_two_object_caption():
    ts = tasks(4)
    assert [t.attribute for t in ts] == ["colour", "shape", "colour", "shape"]
    for t in ts:
        assert len(t.scene.objects) == 2 and t.old != t.new
        assert t.target == t.source.replace(f" {t.old} ", f" {t.new} ", 1) or t.source.count(f" {t.old} ") > 1


def test_verdict_passes_the_rendered_target_and_fails_the_rendered_source():
    import dataclasses

    from lab.world.scenes import caption_of
    task = tasks(1)[0]
    objs = list(task.scene.objects)
    objs[task.index] = dataclasses.replace(objs[task.index], **{task.attribute: task.new})
    edited = dataclasses.replace(task.scene, objects=tuple(objs), caption=caption_of(tuple(objs),
                                                                                    task.scene.background,
                                                                                    task.scene.relation))
    good = verdict(task, render(task.scene), render(edited))
    assert all(good[c] for c in CHECKS) and good["other iou"] == 1.0
    assert not verdict(task, render(task.scene), render(task.scene))["changed"]


def test_world_2_edits_keep_world_2s_rules_and_the_verdict_reads_them():
    import dataclasses

    from lab.world import backgrounds
    from lab.world.scenes import caption_of
    for task in tasks(6, world=2):
        objs = list(task.scene.objects)
        objs[task.index] = dataclasses.replace(objs[task.index], **{task.attribute: task.new})
        assert backgrounds.allowed(task.scene.backdrop, objs[task.index].colour)
        edited = dataclasses.replace(task.scene, objects=tuple(objs), caption=task.target)
        assert task.target == caption_of(tuple(objs), task.scene.background, task.scene.relation)
        good = verdict(task, render(task.scene), render(edited))
        assert all(good[c] for c in CHECKS), (task.target, good)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """(out, section) of the study run once at LAB_SIZE=small."""
    from analyses.p2p.study import run
    out = tmp_path_factory.mktemp("p2p")
    return out, run(out)


def test_the_study_at_small_size_writes_its_figures_and_says_met_or_not(small_run):
    tmp_path, text = small_run
    assert "## Prompt-to-prompt editing" in text and text.count("**met**") + text.count("**not met**") == 2
    assert (tmp_path / "p2p_examples.png").exists() and (tmp_path / "p2p_rates.png").exists()


def test_a_rerun_reads_its_batches_back_and_computes_nothing(small_run):
    from analyses.p2p.study import run
    out, text = small_run
    figure = (out / "p2p_examples.png").read_bytes()
    again, kept = rerun_without(out, "p2p", [], lambda: run(out))
    assert kept == ["0.pkl"]  # one batch of 4 tasks at small size
    assert [line for line in again.splitlines() if "- Time:" not in line] == \
        [line for line in text.splitlines() if "- Time:" not in line]
    assert (out / "p2p_examples.png").read_bytes() == figure  # drawn from the batch's kept images
