"""analyses.schedules.flow: each flow-matching schedule checked against diffusers' FlowMatchEulerDiscreteScheduler
with the real SD3 / FLUX.1 scheduler configs, and against the sigmas a tiny SD3 / Flux pipeline call samples with."""
import math

import matplotlib
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from analyses.schedules import flow as F
from tiny_models import generate_dit, one_thread, tiny_dit_pipeline, tiny_pipeline  # noqa: F401

matplotlib.use("Agg")

# scheduler/scheduler_config.json of stabilityai/stable-diffusion-3-medium (SD3.5: the same) and FLUX.1-dev
SD3_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
FLUX_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                   base_image_seq_len=256, max_image_seq_len=4096)


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:  # float64 against diffusers' float32
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 4, 28, 50])
def test_sd3_sigmas_equal_diffusers(n):
    sched = FlowMatchEulerDiscreteScheduler(**SD3_CONFIG)
    sched.set_timesteps(n)
    ours = F.flow_schedule(n, shift=3.0)
    _close(ours.sigmas, sched.sigmas)
    _close(ours.timesteps / 1000, sched.timesteps / 1000)


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_static_shift_equal_diffusers_at_any_shift(shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(10)
    _close(F.flow_schedule(10, shift=shift).sigmas, sched.sigmas)


@pytest.mark.parametrize("px", [256, 512, 1024, 1360])
def test_flux_mu_equals_calculate_shift(px):
    seq = F.image_seq_len(px, px)
    assert F.flux_mu(seq) == calculate_shift(seq, 256, 4096, 0.5, 1.15)


@pytest.mark.parametrize("px,n", [(512, 4), (1024, 28), (768, 50)])
def test_flux_sigmas_equal_diffusers_with_dynamic_shift(px, n):
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG)
    seq = (px // 16) ** 2  # FluxPipeline: latents.shape[1] packed tokens
    sched.set_timesteps(n, sigmas=np.linspace(1.0, 1 / n, n), mu=calculate_shift(seq, 256, 4096, 0.5, 1.15))
    _close(F.flow_schedule(n, mu=F.flux_mu(seq), base="flux").sigmas, sched.sigmas)


def test_shift_formulas():
    assert F.static_shift(0.5, 3.0) == pytest.approx(0.75)
    assert F.time_shift(0.25, math.log(3.0)) == pytest.approx(F.static_shift(0.25, 3.0))  # mu = log(shift)


def test_snr_formulas():
    torch.testing.assert_close(F.flow_snr(torch.tensor([0.5, 0.2])), torch.tensor([1.0, 16.0]))
    torch.testing.assert_close(F.ddpm_snr(torch.tensor([0.5, 0.8])), torch.tensor([1.0, 4.0]))
    s = F.flow_schedule(10, shift=3.0)
    torch.testing.assert_close(s.snr, F.flow_snr(s.sigmas[:-1]))


def test_sampling_starts_from_pure_noise():
    for s in F.published_flow_schedules(28).values():
        assert s.start_sigma == 1.0 and s.start_snr == 0.0 and s.log_snr[0] == -math.inf
        assert s.sigmas[-1] == 0 and (s.sigmas.diff() < 0).all()


def test_flux_shift_grows_with_resolution():
    p = F.published_flow_schedules(28, sizes=(512, 1024))
    assert (p["flux-1024"].sigmas[1:-1] > p["flux-512"].sigmas[1:-1]).all()


@pytest.mark.parametrize("arch", ["sd3", "flux-dev"])
def test_pipeline_schedule_is_the_one_the_call_samples(arch):
    pipe = tiny_dit_pipeline(arch)
    generate_dit(pipe, steps=3, size=64)
    ours = F.pipeline_flow_schedule(pipe, 3, 64, 64)
    _close(ours.sigmas, pipe.scheduler.sigmas.cpu())


def test_pipeline_schedule_refuses_a_non_flow_scheduler():
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        F.pipeline_flow_schedule(tiny_pipeline("sd15"), 3)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="n=0"):
        F.flow_schedule(0)
    with pytest.raises(ValueError, match="base='ddim'.*scheduler, flux"):
        F.flow_schedule(4, base="ddim")
    with pytest.raises(ValueError, match="height=100"):
        F.image_seq_len(100, 512)
    with pytest.raises(ValueError, match="shift=0"):
        F.static_shift(0.5, 0)


def test_plot_flow_snr_draws_every_schedule():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert F.plot_flow_snr(ax, n=10) is ax
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.split()[0] for lab in labels] == ["sd-1.5", "sdxl-base", "sd3", "flux-512", "flux-1024"]
    plt.close(fig)
