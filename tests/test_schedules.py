"""Tests for analyses.schedules: each own implementation is checked against diffusers' on real scheduler objects."""
import json

import diffusers
import matplotlib
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale_zero_terminal_snr
from matplotlib.figure import Figure

from analyses import schedules as S

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}
CONFIGS = {
    "sd": SD,
    "linear": {"beta_schedule": "linear"},
    "cosine": {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
    "sd-zero-snr": {**SD, "rescale_betas_zero_snr": True},
    "trained": {"trained_betas": torch.linspace(1e-4, 0.03, 200).tolist(), "num_train_timesteps": 200},
}


# --- Schedule ---------------------------------------------------------------------------------------------------------
def test_sd_scaled_linear_known_values():
    s = S.schedule_of(SD)
    assert float(s.sqrt_alphas_cumprod[-1]) == pytest.approx(0.068265, abs=1e-6)
    assert s.terminal_snr == pytest.approx(0.004682, abs=1e-6)
    assert s.num_train_timesteps == 1000 and s.alphas_cumprod.shape == (1000,)


def test_schedule_fields_are_consistent():
    s = S.schedule_of(SD)
    torch.testing.assert_close(s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2, torch.ones(1000,
                               dtype=torch.float64))
    torch.testing.assert_close(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod))
    torch.testing.assert_close(s.log_snr.exp(), s.snr)
    assert (s.log_snr.diff() < 0).all()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_schedule_of_config_matches_diffusers_alphas_cumprod(name, cls):
    ours = S.schedule_of({"_class_name": cls.__name__, **CONFIGS[name]})
    theirs = cls.from_config(CONFIGS[name]).alphas_cumprod
    torch.testing.assert_close(ours.alphas_cumprod, theirs.double(), atol=1e-6, rtol=0)


def test_schedule_of_accepts_instance_class_pipeline_and_json_path(tmp_path):
    path = tmp_path / "sched.json"
    path.write_text(json.dumps({"_class_name": "DDIMScheduler", **SD}))
    instance = DDIMScheduler.from_config(SD)
    fake_pipe = type("Pipe", (), {"scheduler": instance})()
    forms = [S.schedule_of(SD), S.schedule_of(instance), S.schedule_of(DDIMScheduler, SD), S.schedule_of(fake_pipe),
             S.schedule_of(path), S.schedule_of(str(path))]
    for s in forms:
        torch.testing.assert_close(s.alphas_cumprod, forms[0].alphas_cumprod)
    assert S.schedule_of(path).name == "sched" and S.schedule_of(instance).name == "DDIMScheduler"


def test_schedule_of_config_takes_missing_fields_from_its_class():
    assert S.schedule_of({"_class_name": "EulerDiscreteScheduler", **SD}).timestep_spacing == "linspace"
    assert S.schedule_of({"_class_name": "DDIMScheduler", **SD}).timestep_spacing == "leading"


def test_schedule_of_rejects_unknown_beta_schedule():
    with pytest.raises(ValueError, match="'cubic'.*scaled_linear"):
        S.schedule_of({"beta_schedule": "cubic"})


def test_schedule_of_rejects_missing_json(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        S.schedule_of(tmp_path / "nope.json")


# --- timestep spacing -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("T,offset", [(1000, 0), (1000, 1), (500, 1), (37, 0)])
def test_spaced_timesteps_match_ddim_set_timesteps(spacing, T, offset):
    scheduler = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    for n in (1, 3, 7, 10, 20, 36, 50, 100, 250):
        if n > T:
            continue
        scheduler.set_timesteps(n)
        ours = S.spaced_timesteps(n, spacing, num_train_timesteps=T, steps_offset=offset)
        assert torch.equal(ours, scheduler.timesteps), (spacing, T, offset, n)


def test_spaced_timesteps_trailing_returns_n_where_diffusers_overshoots():
    scheduler = DDIMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(61)
    ours = S.spaced_timesteps(61, "trailing")
    assert len(scheduler.timesteps) == 62 and scheduler.timesteps[-1] == -1  # diffusers 0.42 quirk
    assert len(ours) == 61 and torch.equal(ours, scheduler.timesteps[:61])


def test_sd_first_timesteps_for_10_steps():
    firsts = {sp: int(S.spaced_timesteps(10, sp, steps_offset=1)[0]) for sp in S.SPACINGS}
    assert firsts == {"leading": 901, "linspace": 999, "trailing": 999}


def test_first_step_snr_is_terminal_snr_only_when_sampling_starts_at_t_max():
    s = S.published_schedules()["sd-1.5"]
    assert S.first_step_snr(s, 10, "trailing") == pytest.approx(s.terminal_snr)
    assert S.first_step_snr(s, 10, "leading") == pytest.approx(float(s.snr[901]))
    assert S.first_step_snr(s, 10, "leading") > 3 * s.terminal_snr


def test_spaced_timesteps_rejects_bad_spacing_and_out_of_range():
    with pytest.raises(ValueError, match="'lead'.*leading, linspace, trailing"):
        S.spaced_timesteps(10, "lead")
    with pytest.raises(ValueError, match="t=1000"):
        S.spaced_timesteps(1000, "leading", steps_offset=1)


# --- published configs ----------------------------------------------------------------------------------------------
def test_published_schedules_are_sd_scaled_linear_with_their_own_settings():
    pub = S.published_schedules()
    assert set(pub) == {"sd-1.5", "sd-2.1", "sdxl-base"}
    for s in pub.values():
        assert s.terminal_snr == pytest.approx(0.004682, abs=1e-6)
    assert pub["sd-2.1"].prediction_type == "v_prediction" and pub["sd-1.5"].prediction_type == "epsilon"
    assert [pub[n].config["_class_name"] for n in ("sd-1.5", "sd-2.1", "sdxl-base")] == [
        "PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler"]
    assert all(int(S.sampled_timesteps(s, 10)[0]) == 901 for s in pub.values())


@pytest.mark.parametrize("name", ["sd-1.5", "sd-2.1", "sdxl-base"])
def test_published_configs_load_into_their_diffusers_class(name):
    config = S.published_configs()[name]
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    assert scheduler.config.steps_offset == 1
    torch.testing.assert_close(S.schedule_of(scheduler).alphas_cumprod, S.published_schedules()[name].alphas_cumprod)


# --- Lin et al. fixes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd", "linear", "cosine", "trained"])
def test_rescale_zero_terminal_snr_matches_diffusers(name):
    betas = S.betas_from_config(CONFIGS[name])
    torch.testing.assert_close(S.rescale_zero_terminal_snr(betas), diffusers_rescale_zero_terminal_snr(betas.clone()),
                               atol=1e-6, rtol=0)


def test_zero_terminal_snr_schedule_keeps_first_alpha_bar_and_ends_at_zero():
    s, z = S.schedule_of(SD), S.with_zero_terminal_snr(SD)
    assert z.terminal_snr == 0.0 and z.log_snr[-1] == float("-inf")
    assert float(z.alphas_cumprod[0]) == pytest.approx(float(s.alphas_cumprod[0]), rel=1e-6)


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 5, 7)])
def test_rescale_cfg_matches_diffusers(phi, shape):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    cond = torch.randn(shape, generator=g)
    guided = cond + 6.0 * torch.randn(shape, generator=g)
    torch.testing.assert_close(S.rescale_cfg(guided, cond, phi), rescale_noise_cfg(guided, cond, phi))


def test_rescale_cfg_defaults_to_phi_0_7():
    g = torch.Generator().manual_seed(1)
    cond, guided = torch.randn(2, 3, 4, 4, generator=g), 5 * torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(S.rescale_cfg(guided, cond), S.rescale_cfg(guided, cond, 0.7))


# --- signal leak and frequency bands ----------------------------------------------------------------------------------
def _images(n=8, c=3, size=32, seed=0):
    """Images whose channel means differ (as real images' do), plus texture."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, c, 1, 1, generator=g) * 1.2 - 0.6  # (N, C, 1, 1)
    return (means + 0.3 * torch.randn(n, c, size, size, generator=g)).clamp(-1, 1)  # (N, C, H, W) in [-1, 1]


def test_signal_leak_measured_matches_sqrt_alpha_bar_at_last_timestep():
    leak = S.signal_leak(_images(), SD, generator=torch.Generator().manual_seed(0))
    assert leak.t == 999 and leak.predicted == pytest.approx(0.068265, abs=1e-6)
    assert leak.measured == pytest.approx(leak.predicted, abs=0.01)
    assert abs(leak.measured - leak.predicted) < 4 * leak.stderr + 1e-3
    assert leak.correlation > 0.5  # the channel means are still clearly readable through the noise


def test_signal_leak_measured_matches_at_a_middle_timestep():
    leak = S.signal_leak(_images(seed=1), SD, t=500, draws=16, generator=torch.Generator().manual_seed(1))
    assert leak.measured == pytest.approx(leak.predicted, abs=0.01)


def test_signal_leak_vanishes_with_zero_terminal_snr():
    leak = S.signal_leak(_images(), S.with_zero_terminal_snr(SD), generator=torch.Generator().manual_seed(0))
    assert leak.predicted == 0.0 and abs(leak.measured) < 0.01


def test_signal_leak_rejects_equal_means_and_bad_shape():
    with pytest.raises(ValueError, match="same channel means"):
        S.signal_leak(torch.zeros(2, 3, 8, 8), SD)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\); got shape \(3, 8, 8\)"):
        S.signal_leak(torch.zeros(3, 8, 8), SD)


def test_band_energy_constant_image_is_all_low():
    torch.testing.assert_close(S.band_energy(torch.full((2, 3, 16, 16), 0.3)),
                               torch.tensor([[1.0, 0, 0]] * 2, dtype=torch.float64))


def test_band_energy_checkerboard_is_all_high():
    i = torch.arange(16)
    board = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float().expand(1, 3, 16, 16)  # (1, 3, 16, 16) of +-1
    torch.testing.assert_close(S.band_energy(board), torch.tensor([[0.0, 0, 1]], dtype=torch.float64))


def test_band_energy_mid_frequency_stripes_are_mid():
    rows = torch.cos(2 * torch.pi * 0.25 * torch.arange(16.0))  # radius 0.25 / sqrt(0.5) = 0.35 -> band 1 of 3
    torch.testing.assert_close(S.band_energy(rows[:, None].expand(1, 1, 16, 16)),
                               torch.tensor([[0.0, 1, 0]], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("size", [(16, 16), (15, 9)])
def test_band_energy_fractions_sum_to_one(size):
    e = S.band_energy(torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0)), bands=5)
    assert e.shape == (4, 5) and (e >= 0).all()
    torch.testing.assert_close(e.sum(1), torch.ones(4, dtype=torch.float64))


def test_band_energy_of_white_noise_is_each_band_share_of_the_full_frequency_grid():
    fy, fx = torch.meshgrid(torch.fft.fftfreq(32), torch.fft.fftfreq(32), indexing="ij")  # (32, 32) full grid
    band = ((fy**2 + fx**2).sqrt() / 0.5**0.5 * 3).floor().clamp(max=2)
    share = torch.stack([(band == k).double().mean() for k in range(3)])  # (3,) white noise: equal energy per bin
    e = S.band_energy(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))).mean(0)
    torch.testing.assert_close(e, share, atol=0.02, rtol=0)


# --- Beta timestep selection and custom timesteps -------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 10, 50, 300, 1000])
def test_beta_timesteps_distinct_descending_in_range(n):
    t = S.beta_timesteps(n)
    assert len(t) == n and len(set(t.tolist())) == n and (t.diff() < 0).all()
    assert 0 <= int(t.min()) and int(t.max()) == 999


def test_beta_timesteps_spend_more_steps_at_both_ends_than_uniform():
    beta, uniform = S.beta_timesteps(20), S.uniform_timesteps(20)
    for ts in (beta, uniform):
        assert int(ts[0]) == 999 and int(ts[-1]) == 0
    assert ((beta < 100).sum() > (uniform < 100).sum()) and ((beta >= 900).sum() > (uniform >= 900).sum())


def test_beta_timesteps_with_a_1_is_uniform():
    assert torch.equal(S.beta_timesteps(11, a=1.0), S.uniform_timesteps(11))


def test_custom_timesteps_support_follows_set_timesteps_signature():
    assert S.supports_custom_timesteps(DDPMScheduler()) and S.supports_custom_timesteps(EulerDiscreteScheduler())
    assert not S.supports_custom_timesteps(PNDMScheduler())
    assert {"DDPMScheduler", "EulerDiscreteScheduler"} <= set(S.custom_timestep_schedulers())


def test_check_custom_timesteps_error_names_schedulers_that_support_them():
    scheduler = DDIMScheduler()
    if S.supports_custom_timesteps(scheduler):
        pytest.skip("this diffusers' DDIMScheduler accepts custom timesteps")
    with pytest.raises(ValueError, match="DDIMScheduler.*DDPMScheduler.*EulerDiscreteScheduler"):
        S.check_custom_timesteps(scheduler, S.beta_timesteps(5))


def test_check_custom_timesteps_rejects_unordered_or_out_of_range():
    with pytest.raises(ValueError, match="strictly descending"):
        S.check_custom_timesteps(DDPMScheduler(), [10, 500, 0])
    with pytest.raises(ValueError, match=r"0\.\.999; got \[1000"):
        S.check_custom_timesteps(DDPMScheduler(), [1000, 0])


def _tiny_sd_pipeline(scheduler):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=2, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2)
    return StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_run_with_timesteps_samples_at_the_given_timesteps():
    scheduler = DDPMScheduler.from_config({**SD, "steps_offset": 1, "clip_sample": False})
    pipe = _tiny_sd_pipeline(scheduler)
    ts = S.beta_timesteps(4)
    out = S.run_with_timesteps(pipe, ts, prompt_embeds=torch.randn(1, 3, 8), guidance_scale=1.0, height=16, width=16,
                               output_type="latent")
    assert out.images.shape == (1, 4, 8, 8)
    assert pipe.scheduler is scheduler and torch.equal(scheduler.timesteps, ts)


# --- plots ----------------------------------------------------------------------------------------------------------
def test_plot_snr_draws_one_line_per_schedule_on_the_given_ax():
    rc = dict(matplotlib.rcParams)
    ax = Figure().add_subplot()
    out = S.plot_snr({"SD": SD, "SD zero-SNR": S.with_zero_terminal_snr(SD)}, ax=ax)
    assert out is ax and len(ax.lines) == 2
    assert dict(matplotlib.rcParams) == rc


def test_plot_spacings_marks_each_spacing_and_extras():
    ax = Figure().add_subplot()
    out = S.plot_spacings(S.published_schedules()["sd-1.5"], 10, ax=ax, extra={"beta": S.beta_timesteps(10)})
    assert out is ax and len(ax.collections) == 4
    assert [c.get_offsets().shape[0] for c in ax.collections] == [10, 10, 10, 10]


def test_plots_make_their_own_ax_when_none_given():
    import matplotlib.pyplot as plt

    ax = S.plot_snr({"SD": SD})
    assert ax is not None and len(ax.lines) == 1
    plt.close(ax.figure)
