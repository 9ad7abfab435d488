"""Pack what the GPU lane's machine lacks into .dev/site.tar.xz (ignored), for scripts/gpu_check.sh to unpack there.

    .venv/bin/python scripts/gpu_pack.py            # refuses when the tree and the pack pass 64 MiB
    .venv/bin/python scripts/gpu_pack.py --slim     # first takes shapes-zsnr's copies of shapes' files out of the
                                                    # tree (its VAE and tokenizer are byte-identical: 5.6 MiB);
                                                    # gpu_check.sh copies them back there; afterwards, here:
                                                    # git checkout -- lab/models/shapes-zsnr

That machine has Python 3.12 with torch, transformers, numpy, scipy, matplotlib, einops, safetensors and pytest, but
no diffusers, no accelerate (the training stages' loop), no ipywidgets and no network. All that the device tool
sends, the repository included, must stay under 64 MiB, and the repository is about 61 MiB: so diffusers travels
without the pipelines the lab does not load (it keeps Stable Diffusion 1/2, SDXL, SD3 and Flux), compressed, beside
accelerate, ipywidgets and the pure-Python packages they import (accelerate's psutil is imported only on use). The
versions are this .venv's (pure Python, so they run on 3.12 too).
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import diffusers

REPO = Path(__file__).resolve().parents[1]
SITE = Path(diffusers.__file__).resolve().parents[1]
PIPELINES = {"stable_diffusion", "stable_diffusion_xl", "stable_diffusion_3", "flux"}
PACKAGES = ["diffusers", "accelerate", "ipywidgets", "comm", "traitlets", "IPython", "matplotlib_inline", "pexpect",
            "ptyprocess", "prompt_toolkit", "wcwidth", "stack_data", "asttokens", "executing", "pure_eval"]
LIMIT = 64 * 2**20


def wanted(path: Path) -> bool:
    rel = path.relative_to(SITE).parts
    if "__pycache__" in rel or path.suffix == ".pyc":
        return False
    if rel[:2] == ("diffusers", "pipelines") and len(rel) > 3 and rel[2] not in PIPELINES:
        return False  # a pipeline folder the lab does not load (files directly under pipelines/ stay)
    if rel[:2] == ("diffusers", "modular_pipelines") and len(rel) > 3:
        return False  # modular pipelines: imported lazily, on use only
    return True


def slim() -> None:
    """Delete from the working tree the files of lab/models/shapes-zsnr that are byte-identical to lab/models/shapes'
    (the zero-terminal-SNR twin shares the VAE and the tokenizer): gpu_check.sh puts them back on the device."""
    import filecmp

    twin, base = REPO / "lab" / "models" / "shapes-zsnr", REPO / "lab" / "models" / "shapes"
    gone = 0
    for folder in ("vae", "tokenizer"):
        for f in sorted((twin / folder).glob("*")):
            if f.is_file() and filecmp.cmp(f, base / folder / f.name, shallow=False):
                gone += f.stat().st_size
                f.unlink()
    print(f"--slim: {gone / 2**20:.1f} MiB of shapes-zsnr's copies of shapes' files left the tree; after the device "
          "call: git checkout -- lab/models/shapes-zsnr")


def main() -> None:
    if "--slim" in sys.argv[1:]:
        slim()
    out = REPO / ".dev" / "site.tar.xz"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    roots = [SITE / p if (SITE / p).is_dir() else SITE / f"{p}.py" for p in PACKAGES]  # packages or modules
    # their metadata: diffusers reads its own version, and finds accelerate by its metadata
    roots += [*SITE.glob(f"diffusers-{diffusers.__version__}.dist-info"), *SITE.glob("accelerate-*.dist-info")]
    with tarfile.open(tmp, "w:xz", preset=9) as tar:
        for root in roots:
            if not root.exists():
                sys.exit(f"{root.name} is not installed in {SITE}; run scripts/setup.sh --test first")
            for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
                if f.is_file() and wanted(f):
                    tar.add(f, str(f.relative_to(SITE)))
    tmp.replace(out)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    repo = sum((REPO / p).stat().st_size for p in tracked.decode().split("\0") if p and (REPO / p).is_file())
    total = repo + out.stat().st_size  # scripts/gpu_pack_w2.py adds its payload (and the untracked files) too
    print(f"{out.relative_to(REPO)}: {out.stat().st_size / 2**20:.1f} MiB; with the repository "
          f"{total / 2**20:.1f} MiB of the device tool's 64")
    if total > LIMIT:
        sys.exit("over the device tool's limit: run with --slim (shapes-zsnr's copies of shapes' files stay here), "
                 "or leave out more of diffusers")


if __name__ == "__main__":
    main()
