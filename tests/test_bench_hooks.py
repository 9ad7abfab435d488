"""benchmarks/bench_hooks.py on diffusion transformers runs on the CPU as the GPU lane will run it at real size, so a
lent GPU's minutes are not spent finding out that it does not (scripts/gpu_check.sh, step 3)."""
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import one_thread, tiny_dit_pipeline  # noqa: F401 (one_thread: autouse)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_hooks  # noqa: E402  (benchmarks/bench_hooks.py)


def test_dit_bench_writes_a_smoke_section_where_observing_is_bit_identical(tmp_path):
    md = tmp_path / "hooks.md"
    bench_hooks.main(["--model", "sd3-tiny", "--size", "64", "--steps", "1", "--repeats", "1", "--threads", "1",
                      "--device", "cpu", "--arms", "daam", "--section", str(md)])
    text = md.read_text()
    assert "## Measured: sd3-tiny, CPU, fp32 (SMOKE RUN" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["plain"].endswith("| yes |")
    assert rows["image->text sum (DAAM)"].endswith("| yes |")  # observing changes nothing


@pytest.mark.parametrize("arch, params", [("sd3", 2.03e9), ("flux-dev", 11.9e9)])
def test_full_width_dits_match_their_text_encoders(arch, params):
    """sd3-full / flux-full: the published transformer config, made on the device asked for (here meta, free), and
    text encoders whose widths are the ones that config expects."""
    pipe = tiny_dit_pipeline(arch, full_width=True, device="meta", dtype=torch.bfloat16)
    cfg = pipe.transformer.config
    assert sum(p.numel() for p in pipe.transformer.parameters()) == pytest.approx(params, rel=0.01)
    assert {p.device.type for p in pipe.transformer.parameters()} == {"meta"}
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}
    if arch == "sd3":
        clips = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
        assert (clips, pipe.text_encoder_3.config.d_model) == (cfg.pooled_projection_dim, cfg.joint_attention_dim)
    else:
        widths = (pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.d_model)
        assert widths == (cfg.pooled_projection_dim, cfg.joint_attention_dim)
