"""lab.world.clip: a tiny CLIP learns, resumes where it stopped, and exports a text tower SD can load."""
import json

import numpy as np
import torch

from lab.world import make_scene
from lab.world.clip import Pool, embed_texts, hard_negative, load, swapped
from lab.world.train import main

TINY = ["--width", "32", "--layers", "1", "--batch", "16", "--pool", "64", "--lr", "2e-3"]


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_tiny_clip_loss_falls(tmp_path):
    main(["clip", "--run", str(tmp_path), "--steps", "75", "--refresh", "0", "--eval-n", "0", *TINY])
    losses = [row["loss"] for row in _log(tmp_path) if row.get("stage") == "clip" and "loss" in row]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], losses


def test_clip_stage_resumes_from_its_checkpoint_with_the_same_scenes(tmp_path):
    main(["clip", "--run", str(tmp_path), "--steps", "2", "--refresh", "4", "--eval-n", "0", *TINY])
    first = torch.load(tmp_path / "clip.ckpt")
    main(["clip", "--run", str(tmp_path), "--steps", "3", "--refresh", "4", "--eval-n", "6", *TINY])
    second = torch.load(tmp_path / "clip.ckpt")
    assert (first["step"], second["step"]) == (2, 3)
    assert (first["next_seed"], second["next_seed"]) == (64 + 8, 64 + 12)
    name = "text_model.embeddings.position_embedding.weight"
    assert not torch.equal(first["model"][name], second["model"][name])
    evaluation = [row for row in _log(tmp_path) if row["stage"] == "clip-eval"][-1]
    assert {"top-1 of 6", "colour", "shape", "background"} <= set(evaluation)


def test_a_resumed_pool_holds_exactly_the_scenes_the_run_left():
    going = Pool(40, 0)
    going.refresh(25)
    rebuilt = Pool(40, going.next_seed)
    assert np.array_equal(going.images, rebuilt.images) and np.array_equal(going.ids, rebuilt.ids)


def test_exported_text_tower_loads_as_a_clip_text_model_and_matches(tmp_path):
    from transformers import CLIPModel, CLIPTextModel
    main(["clip", "--run", str(tmp_path), "--steps", "1", "--eval-n", "0", *TINY])
    main(["clip-export", "--run", str(tmp_path), "--out", str(tmp_path / "out")])
    text = CLIPTextModel.from_pretrained(str(tmp_path / "out" / "text_encoder"))
    model = load(tmp_path)
    ids = torch.tensor([[49406, 320, 1215, 3666, 49407, 49407]])
    with torch.no_grad():
        torch.testing.assert_close(text(ids).last_hidden_state, model.text_model(input_ids=ids).last_hidden_state)
    reloaded = CLIPModel.from_pretrained(str(tmp_path / "out" / "clip"))
    captions = ["a small red circle on a navy and white striped background"]
    torch.testing.assert_close(embed_texts(reloaded, captions), embed_texts(model, captions))


def test_swapped_captions_differ_in_exactly_one_attribute():
    scene = next(s for s in (make_scene(i, "test", world=2) for i in range(50)) if len(s.objects) == 2)
    words = scene.caption.split()
    for attribute, expected in (("colour", 2 * 5), ("shape", 2 * 5)):
        captions = swapped(scene, attribute)
        assert len(set(captions)) == expected and scene.caption not in captions
        for c in captions:  # one word changed (an arrow gains or loses "pointing <direction>")
            other = c.split()
            changed = sum(a != b for a, b in zip(words, other))
            assert changed == 1 or (attribute == "shape" and "arrow" in c + scene.caption)
    backgrounds = swapped(scene, "background")
    assert len(set(backgrounds)) == 47 and all(c.startswith(scene.caption.split(" on a ")[0]) for c in backgrounds)


def test_a_hard_negative_is_one_of_the_scenes_shape_or_colour_swaps_and_repeats():
    scenes = [make_scene(i, "train", world=2) for i in range(40)]
    negatives = [hard_negative(s) for s in scenes]
    for scene, negative in zip(scenes, negatives):
        assert negative in swapped(scene, "shape") + swapped(scene, "colour") and negative != scene.caption
    assert negatives == [hard_negative(s) for s in scenes]  # from the scene's seed: a rebuilt pool is the same
    kinds = {"shape" if n in swapped(s, "shape") else "colour" for s, n in zip(scenes, negatives)}
    assert kinds == {"shape", "colour"}


def test_clip_stage_with_negatives_learns_and_remembers_it_on_resume(tmp_path):
    main(["clip", "--run", str(tmp_path), "--steps", "50", "--refresh", "0", "--eval-n", "0", "--negatives", *TINY])
    losses = [row["loss"] for row in _log(tmp_path) if row.get("stage") == "clip" and "loss" in row]
    assert len(losses) == 2 and losses[-1] < losses[0], losses
    assert torch.load(tmp_path / "clip.ckpt")["negatives"] is True
    going = Pool(40, 0, negatives=True)
    going.refresh(25)
    rebuilt = Pool(40, going.next_seed, negatives=True)
    assert np.array_equal(going.negative_ids, rebuilt.negative_ids)
    assert not np.array_equal(going.ids, going.negative_ids)
