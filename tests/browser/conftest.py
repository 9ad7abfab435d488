"""JupyterLab in headless Chromium: one server and one browser page for the session, one notebook per test.

    taskset -c 1 env LAB_SIZE=small HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/browser -v

The server (this Python's `jupyter lab`, so this Python's ipykernel) runs on 127.0.0.1 with a fixed token over a
temporary copy of notebooks/ (running a notebook autosaves it); its config, data, runtime and IPython folders are
temporary too, so nothing in your home or your notebooks changes. The kernel gets LAB_SIZE=small and HF_HUB_OFFLINE=1.
Chromium is Debian's (/usr/bin/chromium, installed by scripts/setup_browser.sh; LAB_CHROMIUM=path for another),
driven by the Python package playwright. Missing either fails these tests; LAB_SKIP_BROWSER=1 skips them.
Screenshots and the server log go to test-artifacts/browser/.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "lab-browser-test"
VIEWPORT = {"width": 1400, "height": 900}
SETTINGS = {  # JupyterLab user settings for the test server: no network, every cell in the DOM
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}

# Injected once per page: find a notebook panel by path, and report what its outputs look like.
HELPERS = r"""
window.labTest = {
  app: window.jupyterapp,
  panel(path) {
    for (const w of this.app.shell.widgets('main')) if (w.context && w.context.path === path) return w;
    throw new Error(`no open notebook ${path}`);
  },
  kernel(path) {
    const k = this.panel(path).sessionContext.session?.kernel;
    return k ? {name: k.name, status: k.status, connection: k.connectionStatus} : null;
  },
  counts(path) {
    return [...this.panel(path).content.model.cells].filter(c => c.type === 'code').map(c => c.executionCount);
  },
  // Everything a user would see as broken, as a list of strings (empty: all well), and what was found.
  inspect(path) {
    const node = this.panel(path).node, problems = [];
    const text = el => (el.innerText || el.textContent || '').trim();
    const where = el => {
      const cell = el.closest('.jp-Cell');
      const i = cell ? [...node.querySelectorAll('.jp-Cell')].indexOf(cell) : -1;
      return `cell ${i}`;
    };
    let views = 0;  // outputs of the widget-view type, found through the model, checked in the DOM
    this.panel(path).content.widgets.forEach((cell, i) => {
      if (cell.model.type !== 'code') return;
      for (let j = 0; j < cell.model.outputs.length; j++) {
        const output = cell.model.outputs.get(j);
        if (output.type === 'error') {
          const e = output.toJSON();
          problems.push(`cell ${i}: error ${e.ename}: ${e.evalue}`);
        }
        if (!output.data['application/vnd.jupyter.widget-view+json']) continue;
        views++;
        const child = cell.outputArea.widgets[j], el = child && child.node.querySelector('.jp-OutputArea-output');
        if (!el || !el.firstElementChild) problems.push(`cell ${i}: widget output ${j} is empty`);
        else if (el.matches('[data-mime-type="text/plain"]'))  // the widget's text fallback: no widget renderer
          problems.push(`cell ${i}: widget shown as text: ${text(el).slice(0, 120)}`);
        else if (/Error displaying widget|model not found|show javascript error/i.test(text(el)) ||
                 el.querySelector('.jupyter-widgets-error-widget, .widget-error'))
          problems.push(`cell ${i}: widget not rendered: ${text(el).slice(0, 200)}`);
      }
    });
    // tracebacks anywhere, also inside Output widgets (a failing callback), and reprs where a picture should be
    for (const el of node.querySelectorAll('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'))
      if (/Traceback|Error:/.test(text(el))) problems.push(`${where(el)}: stderr ${text(el).slice(0, 400)}`);
    const raw = /^(HBox|VBox|Box|GridBox|Accordion|Tab|Stack|interactive)\(children=|^(Canvas|Output)\(/m;
    const figure = /<Figure size \d+x\d+ with \d+ Axes>/;
    const plain = '[data-mime-type="text/plain"], [data-mime-type="application/vnd.jupyter.stdout"]';
    for (const el of node.querySelectorAll(plain))
      if (raw.test(text(el)) || figure.test(text(el)))
        problems.push(`${where(el)}: a repr instead of a widget or figure: ${text(el).slice(0, 120)}`);
    const images = node.querySelectorAll('.jp-OutputArea-output img');
    for (const img of images) {
      const r = img.getBoundingClientRect();
      if (!img.complete || img.naturalWidth === 0 || r.width === 0 || r.height === 0)
        problems.push(`${where(img)}: image not shown (natural ${img.naturalWidth}, box ${r.width}x${r.height})`);
    }
    const figures = node.querySelectorAll('.jupyter-matplotlib-figure');
    for (const fig of figures) {
      const canvas = fig.querySelector('canvas'), r = canvas ? canvas.getBoundingClientRect() : null;
      if (!canvas || canvas.width === 0 || canvas.height === 0 || r.width === 0 || r.height === 0)
        problems.push(`${where(fig)}: ipympl canvas missing or of zero size`);
      else if (this.blank(canvas)) problems.push(`${where(fig)}: ipympl canvas is blank`);
    }
    return {problems, images: images.length, figures: figures.length, widgets: views};
  },
  blank(canvas) {
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 4; i < d.length; i += 4)
      if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) return false;
    return true;
  },
  // A digest of the pixels an <img> or <canvas> shows: it changes when, and only when, the picture does.
  digest(el) {
    let canvas = el;
    if (el.tagName === 'IMG') {
      canvas = document.createElement('canvas');
      canvas.width = el.naturalWidth; canvas.height = el.naturalHeight;
      canvas.getContext('2d').drawImage(el, 0, 0);
    }
    if (!canvas.width || !canvas.height) return 'empty';
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let h = 2166136261;
    for (let i = 0; i < d.length; i++) h = Math.imul(h ^ d[i], 16777619);
    return `${canvas.width}x${canvas.height}:${(h >>> 0).toString(16)}`;
  },
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="session")
def playwright_api():
    """The playwright module, or a clear failure (LAB_SKIP_BROWSER=1 skips instead)."""
    if os.environ.get("LAB_SKIP_BROWSER") == "1":
        pytest.skip("LAB_SKIP_BROWSER=1: the browser tests are switched off")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("the browser tests need the Python package playwright: bash scripts/setup.sh --test "
                    "(or pip install -e '.[test]'); LAB_SKIP_BROWSER=1 skips them", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: bash scripts/setup_browser.sh "
                    "(or LAB_CHROMIUM=/path/to/chromium); LAB_SKIP_BROWSER=1 skips them", pytrace=False)
    return sync_api


@pytest.fixture(scope="session")
def scratch():
    """A temporary folder for the server's and the browser's config, data and caches; removed at the end."""
    home = Path(tempfile.mkdtemp(prefix="lab-browser-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def jupyterlab(playwright_api, scratch):
    """A JupyterLab server over a temporary copy of notebooks/: yields its base URL (its token is TOKEN)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    home = scratch / "jupyter"
    # Under the repo, so the notebooks find `lab` by walking up from their folder as they do in notebooks/.
    notebooks = Path(tempfile.mkdtemp(prefix="notebooks-", dir=ARTIFACTS))
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(nb, notebooks)
    for name, values in SETTINGS.items():
        path = home / "config" / "lab" / "user-settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ, LAB_SIZE="small", HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"))
    env.pop("MPLBACKEND", None)  # the kernel picks its own (inline), as it does for a person
    env.pop("JUPYTER_PATH", None)
    port = _free_port()
    log = open(ARTIFACTS / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--ServerApp.open_browser=False",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={notebooks}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.expose_app_in_browser=True"],
        env=env, cwd=notebooks, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited ({server.returncode}); see {ARTIFACTS / 'jupyterlab.log'}")
            with contextlib.suppress(OSError):
                _get(f"{url}/api/status?token={TOKEN}")
                break
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in 90 s; see {ARTIFACTS / 'jupyterlab.log'}")
            time.sleep(0.2)
        specs = _get(f"{url}/api/kernelspecs?token={TOKEN}")
        spec = specs["kernelspecs"][specs["default"]]["spec"]
        # "python" in a kernel spec means the server's own interpreter (jupyter_client), i.e. sys.executable here
        python = spec["argv"][0]
        assert python in ("python", "python3") or Path(python).resolve() == Path(sys.executable).resolve(), \
            f"the default kernel {specs['default']} would run {python}, not {sys.executable}"
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(notebooks, ignore_errors=True)


@pytest.fixture(scope="session")
def lab_page(playwright_api, jupyterlab, scratch):
    """One Chromium page with JupyterLab loaded (window.jupyterapp and window.labTest available). The page's console
    errors go to test-artifacts/browser/console.log."""
    home = scratch / "chromium"  # Chromium writes crash-report settings and a dconf cache under $HOME
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"))
    with playwright_api.sync_playwright() as pw, open(ARTIFACTS / "console.log", "w") as console:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, env=env)
        page = browser.new_page(viewport=VIEWPORT)
        page.on("console", lambda m: console.write(f"{m.type}: {m.text}\n") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: console.write(f"pageerror: {e}\n"))
        page.goto(f"{jupyterlab}/lab?token={TOKEN}")
        page.wait_for_function("window.jupyterapp && window.jupyterapp.shell", timeout=90_000)
        page.evaluate("() => window.jupyterapp.restored")
        page.evaluate(HELPERS)
        try:
            yield page
        finally:
            browser.close()


class Notebook:
    """One notebook open in the lab page; methods run it, inspect it, find its widgets and watch its pictures."""

    def __init__(self, page, path: str):
        self.page, self.path = page, path
        self.page.evaluate("async p => { await window.jupyterapp.commands.execute('docmanager:open',"
                           " {path: p, factory: 'Notebook'}) }", path)
        self.page.wait_for_function("p => { try { return labTest.panel(p).context.isReady }"
                                    " catch (e) { return false } }", arg=path, timeout=60_000)
        self.id = self.page.evaluate("p => labTest.panel(p).id", path)
        self.root = page.locator(f'.jp-NotebookPanel[id="{self.id}"]')

    def js(self, expression: str, *args):
        """Evaluate `(path, ...args) => expression` in the page."""
        return self.page.evaluate(f"([path, ...args]) => {expression}", [self.path, *args])

    def dismiss_kernel_dialog(self) -> None:
        dialog = self.page.locator(".jp-Dialog")
        if dialog.count() and "Kernel" in dialog.first.inner_text():
            dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()

    def wait_idle(self, timeout: float = 120) -> None:
        """Until this notebook's kernel exists, is connected and idle, and the status bar says so."""
        deadline = time.monotonic() + timeout
        while True:
            self.dismiss_kernel_dialog()
            k = self.js("labTest.kernel(path)")
            if k and k["status"] == "idle" and k["connection"] == "connected" and \
                    "| Idle" in self.page.locator("#jp-main-statusbar").inner_text():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path}: kernel not idle after {timeout:.0f} s: {k}")
            time.sleep(0.25)

    def run_all(self, timeout: float = 240) -> None:
        """Run every cell (Run > Run All Cells) and wait until each has run and the kernel is idle again."""
        self.wait_idle()
        self.js("window.jupyterapp.shell.activateById(labTest.panel(path).id)")
        ran = self.js("Promise.race([window.jupyterapp.commands.execute('notebook:run-all-cells'),"
                      " new Promise(r => setTimeout(() => r('timeout'), args[0]))])", timeout * 1000)
        assert ran != "timeout", f"{self.path}: Run All did not finish in {timeout:.0f} s"
        self.wait_idle()
        counts = self.js("labTest.counts(path)")
        problems = self.js("labTest.inspect(path)")["problems"]
        assert ran is True and None not in counts, \
            f"{self.path}: Run All stopped (execution counts {counts}): {problems or 'no error output'}"

    def inspect(self, timeout: float = 20) -> dict:
        """What labTest.inspect finds once the page settles (images load and widgets render asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.js("labTest.inspect(path)")
            if not found["problems"] or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    # ---- widgets, found by their description (the label ipywidgets shows in front of them)

    def widget(self, kind: str, description: str, within: str = ""):
        """The ipywidget of CSS class `kind` (widget-slider, widget-dropdown, ...) labelled `description`, optionally
        inside the element of CSS class `within`; exactly one must match."""
        scope = self.root.locator(f".{within}") if within else self.root
        found = scope.locator(f".{kind}:has(> label.widget-label:text-is('{description}'))")
        assert found.count() == 1, f"{self.path}: {found.count()} {kind} labelled {description!r}, expected 1"
        return found

    def slide(self, slider, key: str = "ArrowRight", presses: int = 1) -> None:
        """Move a slider from the keyboard: focus its handle, press `key`."""
        slider.locator(".noUi-handle").first.focus()
        for _ in range(presses):
            self.page.keyboard.press(key)

    def digest(self, locator) -> str:
        """A digest of the pixels shown by the <img> or <canvas> that `locator` finds."""
        return locator.evaluate("el => labTest.digest(el)")

    def wait_until(self, check, what: str, timeout: float = 90):
        """Poll `check()` until it returns something true (returned); fail naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # a picture may be replaced between finding and reading it
                if result := check():
                    return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.path}: {what} (waited {timeout:.0f} s)")
            time.sleep(0.2)

    def wait_changed(self, locator, before: str, what: str, timeout: float = 90) -> str:
        """Wait until the picture at `locator` differs from the digest `before`; return the new digest."""
        return self.wait_until(lambda: (now := self.digest(locator)) != before and now, f"{what} did not change",
                               timeout)

    def wait_text(self, locator, text: str, timeout: float = 30) -> None:
        """Wait until `locator`'s text is `text` (a slider's readout, say)."""
        self.wait_until(lambda: locator.inner_text().strip() == text, f"the text did not become {text!r}", timeout)

    def screenshot(self, name: str) -> Path:
        """The whole notebook: the viewport grows to the notebook's height for the shot."""
        height = self.js("(() => { const outer = labTest.panel(path).node.querySelector('.jp-WindowedPanel-outer');"
                         " outer.scrollTop = 0; return outer.querySelector('.jp-WindowedPanel-inner').scrollHeight"
                         " + window.innerHeight - outer.clientHeight })()")
        self.page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height) + 60, 12_000)})
        self.page.wait_for_timeout(300)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=path, full_page=True)
        self.page.set_viewport_size(VIEWPORT)
        return path

    def close(self) -> None:
        """Save (into the temporary copy), shut the kernel down and close the tab."""
        self.js("(async () => { const p = labTest.panel(path); await p.context.save();"
                " await p.sessionContext.shutdown(); p.dispose(); })()")


@pytest.fixture(scope="session")
def write_notebook(jupyterlab):
    """write(name, [code, ...]): a notebook of code cells in the server's folder (the temporary copy)."""
    def write(name: str, cells: list[str]) -> None:
        nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                           "display_name": "Python 3"}},
              "cells": [{"cell_type": "code", "id": f"c{i}", "source": c, "metadata": {}, "outputs": [],
                         "execution_count": None} for i, c in enumerate(cells)]}
        request = urllib.request.Request(f"{jupyterlab}/api/contents/{name}?token={TOKEN}", method="PUT",
                                         data=json.dumps({"type": "notebook", "content": nb}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
    return write


@pytest.fixture
def notebook(lab_page):
    """open(name) -> Notebook; screenshots it as <name>.png at the end of the test, passed or failed, and closes it."""
    opened = []

    def open_(name: str) -> Notebook:
        nb = Notebook(lab_page, name)
        opened.append(nb)
        return nb

    yield open_
    for nb in opened:
        for step in (lambda: nb.screenshot(Path(nb.path).stem), nb.close):
            try:
                step()
            except Exception as e:  # a failed test may leave the page unable to do either; its own error says why
                warnings.warn(f"{nb.path}: {e}")
