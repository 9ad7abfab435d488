"""Every notebook opened, run and used in a real JupyterLab (headless Chromium; fixtures in conftest.py).

Each test runs all cells through the UI, checks that no cell shows an error, that every widget rendered (no "Error
displaying widget", no raw widget repr) and every picture is visible (images loaded, ipympl canvases drawn), then
uses controls as a person would and checks that the picture they drive changes. Screenshots:
test-artifacts/browser/<notebook>.png.
"""
from __future__ import annotations


def run_and_check(nb, images: int, widgets: int, figures: int = 0) -> dict:
    """Run all cells, then require a clean page with at least the given numbers of images, widget outputs and
    interactive (ipympl) figures."""
    nb.run_all()
    found = nb.inspect()
    assert not found["problems"], f"{nb.path}:\n" + "\n".join(found["problems"])
    assert found["images"] >= images and found["widgets"] >= widgets and found["figures"] >= figures, \
        f"{nb.path}: expected at least {images} images, {widgets} widgets, {figures} ipympl figures; found {found}"
    return found


def test_daam_explorer_word_and_threshold(notebook):
    nb = notebook("daam.ipynb")
    run_and_check(nb, images=6, widgets=1)
    picture = nb.root.locator("img.widget-image")
    assert picture.count() == 1, "daam.ipynb: the Explorer shows one picture"
    shown = nb.digest(picture)

    word = nb.widget("widget-dropdown", "word").locator("select")
    first = word.input_value()
    other = next(w for w in word.locator("option").all_inner_texts() if w != first)
    word.select_option(other)
    shown = nb.wait_changed(picture, shown, f"the Explorer picture after word {first!r} -> {other!r}")

    tau = nb.widget("widget-slider", "tau")
    readout = tau.locator(".widget-readout")
    before = float(readout.inner_text())
    nb.slide(tau, "ArrowLeft")  # one step (0.05) down
    nb.wait_text(readout, f"{before - 0.05:.2f}")
    nb.wait_changed(picture, shown, f"the Explorer picture after tau {before:.2f} -> {before - 0.05:.2f}")


def test_dift_new_pair_then_click_on_image_a(notebook):
    nb = notebook("dift.ipynb")
    run_and_check(nb, images=0, widgets=1, figures=1)
    canvas = nb.root.locator(".jupyter-matplotlib-figure canvas").first
    shown = nb.digest(canvas)
    nb.root.locator("button.widget-button:text-is('new pair')").click()
    shown = nb.wait_changed(canvas, shown, "the figure after 'new pair'")

    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    # Image A fills most of the left third of the figure (three square panels side by side); after 'new pair' no
    # point is chosen, so a click on A draws the query, its best match in B and the similarity map.
    x, y = box["x"] + 0.12 * box["width"], box["y"] + 0.45 * box["height"]
    toolbar = nb.root.locator(".jupyter-matplotlib-toolbar")
    nb.page.mouse.move(x, y)  # ipympl fades its toolbar in while the mouse is over the figure
    nb.wait_until(lambda: float(toolbar.evaluate("el => getComputedStyle(el).opacity")) > 0.9,
                  "the ipympl toolbar did not appear on hover", 10)
    nb.page.mouse.click(x, y)
    nb.wait_changed(canvas, shown, "the figure after a click on image A")


def test_schedules_controls_and_step_scrubber(notebook):
    nb = notebook("schedules.ipynb")
    run_and_check(nb, images=3, widgets=2)
    cell = nb.root.locator(".jp-Cell:has(.widget-dropdown > label.widget-label:text-is('schedule'))")
    picture = cell.locator(".widget-output img")
    assert picture.count() == 1, "schedules.ipynb: the schedule controls' Output shows one figure"
    shown = nb.digest(picture)

    steps = nb.widget("widget-slider", "steps")
    readout = steps.locator(".widget-readout")
    assert readout.inner_text().strip() == "10"
    nb.slide(steps, "ArrowRight")
    nb.wait_text(readout, "11")
    shown = nb.wait_changed(picture, shown, "the figure after steps 10 -> 11")

    cell.locator("button.widget-toggle-button[data-value='trailing']").click()
    shown = nb.wait_changed(picture, shown, "the figure after spacing leading -> trailing")

    nb.widget("widget-dropdown", "schedule").locator("select").select_option("shapes (built-in)")
    nb.wait_changed(picture, shown, "the figure after schedule sd-1.5 -> shapes (built-in)")

    # the step scrubber (classes lab-scrubber-*): one step on, the label and x_t / x0-hat follow
    scrubber = nb.root.locator(".lab-scrubber")
    picture, label = scrubber.locator(".widget-output img"), scrubber.locator(".lab-scrubber-label")
    assert label.inner_text().startswith("step 1/"), label.inner_text()
    shown = nb.digest(picture)
    nb.slide(scrubber.locator(".lab-scrubber-step"), "ArrowRight")
    nb.wait_until(lambda: label.inner_text().startswith("step 2/"), "the scrubber's label did not reach step 2")
    nb.wait_changed(picture, shown, "the scrubber's figure after step 1 -> 2")


def test_svd_transfer_mode(notebook):
    nb = notebook("svd.ipynb")
    run_and_check(nb, images=4, widgets=1)
    picture = nb.root.locator(".widget-output img")
    assert picture.count() == 1, "svd.ipynb: the controls' Output shows one figure"
    shown = nb.digest(picture)

    mode = nb.widget("widget-dropdown", "mode").locator("select")
    assert mode.input_value() == "both"
    mode.select_option("values")
    nb.wait_changed(picture, shown, "the transfer figure after mode both -> values")


def test_tour_prompt_and_step(notebook):
    nb = notebook("tour.ipynb")
    run_and_check(nb, images=4, widgets=3)

    prompt = nb.widget("widget-text", "prompt", within="lab-tour-text").locator("input")
    table = nb.root.locator(".lab-tour-text .widget-html")
    assert "green" not in table.inner_text()
    assert "<|startoftext|>" in table.inner_text(), "the start token shows as text, not swallowed as an HTML tag"
    prompt.fill("a small green hexagon")
    prompt.press("Enter")
    nb.wait_until(lambda: "green" in table.inner_text(), "the token table did not show the new prompt", 60)

    explorer = nb.root.locator(".lab-tour-steps")
    picture = explorer.locator(".widget-output img")
    shown = nb.digest(picture)
    step = nb.widget("widget-slider", "step", within="lab-tour-steps")
    readout = step.locator(".widget-readout")
    assert readout.inner_text().strip() == "1"
    nb.slide(step, "ArrowRight")
    nb.wait_text(readout, "2")
    nb.wait_changed(picture, shown, "the step figure after step 1 -> 2")


def test_p2p_editor_edit_and_refusal(notebook):
    nb = notebook("p2p.ipynb")
    run_and_check(nb, images=6, widgets=1)
    picture = nb.root.locator("img.widget-image")
    assert picture.count() == 1, "p2p.ipynb: the Editor shows one picture"
    shown = nb.digest(picture)

    target = nb.widget("widget-text", "edit").locator("input")
    target.fill(target.input_value().replace("orange", "purple"))  # the last cell's edit says orange
    nb.root.locator("button.widget-button:text-is('edit')").click()
    nb.wait_changed(picture, shown, "the Editor picture after editing 'orange' -> 'purple'")

    target.fill("a large hexagon")  # fewer words than the source: a swap that does not align
    nb.root.locator("button.widget-button:text-is('edit')").click()
    message = nb.root.locator(".jp-Cell:has(img.widget-image) .widget-html")
    nb.wait_until(lambda: "the words the tokenizer sees" in message.inner_text() or "hex+agon" in
                  message.inner_text(), "the Editor did not show the refusal", 60)


def test_classify_picker_scene_and_attribute(notebook):
    nb = notebook("classify.ipynb")
    run_and_check(nb, images=2, widgets=1)
    picture = nb.root.locator("img.widget-image")
    assert picture.count() == 1, "classify.ipynb: the Picker shows one picture"
    shown = nb.digest(picture)

    scene = nb.widget("widget-slider", "scene")
    readout = scene.locator(".widget-readout")
    assert readout.inner_text().strip() == "1"
    nb.slide(scene, "ArrowRight")
    nb.wait_text(readout, "2")
    shown = nb.wait_changed(picture, shown, "the Picker picture after scene 1 -> 2")

    nb.widget("widget-dropdown", "attribute").locator("select").select_option("colour")
    nb.wait_changed(picture, shown, "the Picker picture after attribute shape -> colour")


def test_pag_guide_layers_and_scale(notebook):
    nb = notebook("pag.ipynb")
    run_and_check(nb, images=2, widgets=1)
    picture = nb.root.locator("img.widget-image")
    assert picture.count() == 1, "pag.ipynb: the Guide shows one picture"
    shown = nb.digest(picture)

    nb.widget("widget-dropdown", "layers").locator("select").select_option("mid")
    shown = nb.wait_changed(picture, shown, "the Guide picture after layers up -> mid")

    scale = nb.widget("widget-slider", "PAG scale")
    readout = scale.locator(".widget-readout")
    assert float(readout.inner_text()) == 5.0
    nb.slide(scale, "ArrowRight")  # one step (0.5) up
    nb.wait_text(readout, "5.50")
    nb.wait_changed(picture, shown, "the Guide picture after PAG scale 5.0 -> 5.5")


def test_clockwork_noiser_step_and_reuser_blocks(notebook):
    nb = notebook("clockwork.ipynb")
    run_and_check(nb, images=3, widgets=2)
    pictures = nb.root.locator("img.widget-image")
    assert pictures.count() == 2, "clockwork.ipynb: the Noiser and the Reuser show one picture each"
    noiser, reuser = pictures.nth(0), pictures.nth(1)
    shown = nb.digest(noiser)
    step = nb.widget("widget-slider", "step")
    readout = step.locator(".widget-readout")
    assert readout.inner_text().strip() == "0"
    nb.slide(step, "ArrowRight")
    nb.wait_text(readout, "1")
    nb.wait_changed(noiser, shown, "the Noiser picture after step 0 -> 1")

    shown = nb.digest(reuser)
    nb.widget("widget-dropdown", "blocks").locator("select").select_option("low-res blocks")
    nb.wait_changed(reuser, shown, "the Reuser picture after blocks mid_block -> low-res blocks")
