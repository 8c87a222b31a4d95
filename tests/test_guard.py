"""Stage D's step-size guard (`neuralgs_ns.compress.guard`): its decision rule on made-up
loss sequences, and in a real fine-tuning run with a learning rate far too large."""

import functools
import math

import pytest
import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig

from neuralgs_ns.compress.guard import FineTuneGuard
from neuralgs_ns.compress.run import compress
from test_portable_splatfacto import trained_run, write_blender_scene  # noqa: F401 (fixture)

VIEW_LOSSES = torch.tensor([0.02, 0.05, 0.03, 0.08])  # views of very different difficulty


def feed(guard, factors):
    """Steps cycling over the views, each at `factor` x its stage C loss; the steps that restarted."""
    return [i for i, factor in enumerate(factors)
            if guard.update(i % len(VIEW_LOSSES), factor * float(VIEW_LOSSES[i % len(VIEW_LOSSES)]))]


def test_a_falling_loss_never_restarts_however_different_its_views():
    guard = FineTuneGuard(VIEW_LOSSES)
    assert feed(guard, [1.0 - 0.004 * i for i in range(200)]) == []
    assert not guard.watching  # the window has passed: the snapshot can go


def test_a_rise_that_comes_back_below_the_fit_does_not_restart():
    # Adam's first steps on lego-200: the loss rises by a tenth or more, then falls for good.
    guard = FineTuneGuard(VIEW_LOSSES, window=100)
    assert feed(guard, [1.0 + 0.04 * i for i in range(15)] + [1.56 - 0.01 * i for i in range(85)] + [0.7] * 50) == []


def test_a_rise_that_stays_above_the_fit_restarts_at_the_end_of_each_window():
    guard = FineTuneGuard(VIEW_LOSSES, window=100)
    assert feed(guard, [1.3] * 300) == [99, 199]
    assert guard.restarts == 2 and not guard.watching  # at most max_restarts
    assert guard.last_trigger_ratio == pytest.approx(1.3)
    assert "after 100 steps" in guard.last_trigger_reason


def test_a_blowup_most_views_share_restarts_at_once():
    guard = FineTuneGuard(VIEW_LOSSES, span=10)
    restarts = feed(guard, [0.9] * 20 + [3.0, 3.0, 0.9] * 10)
    assert restarts and 20 + 5 <= restarts[0] < 20 + 12  # once most of the last 10 steps are 3x
    assert "rose to" in guard.last_trigger_reason


def test_a_few_outlying_views_among_good_ones_do_not_restart():
    # On a 50k .ply, single views 55-110x above their reference, among views below theirs,
    # made a moving average restart runs and leave stage D at a tenth or a hundredth of its rate.
    guard = FineTuneGuard(VIEW_LOSSES)
    assert feed(guard, [0.9] * 20 + [110.0] + [0.9] * 3 + [56.0] + [0.9] * 3 + [3.0, 4.0] + [0.9] * 80) == []


def test_a_nan_loss_restarts_at_once():
    guard = FineTuneGuard(VIEW_LOSSES)
    assert feed(guard, [1.0, 1.0, math.nan]) == [2]
    assert math.isnan(guard.last_trigger_ratio)


def test_a_short_stage_d_keeps_only_the_blowup_test():
    guard = FineTuneGuard(VIEW_LOSSES)
    guard.fit_to(300)  # a large scene's stage D
    assert feed(guard, [1.3] * 300) == []  # no settle test
    guard = FineTuneGuard(VIEW_LOSSES)
    guard.fit_to(300)
    assert feed(guard, [0.9] * 20 + [3.0] * 20) != []  # a blow-up still restarts
    guard = FineTuneGuard(VIEW_LOSSES)
    guard.fit_to(1500)  # the 150k scene's default
    assert feed(guard, [1.3] * 300) == []
    guard = FineTuneGuard(VIEW_LOSSES)
    guard.fit_to(4500)
    assert feed(guard, [1.3] * 300) == [99, 199]  # a long one keeps both


def test_every_view_needs_a_positive_reference_loss():
    with pytest.raises(ValueError):
        FineTuneGuard(torch.tensor([0.1, 0.0]))


def _fine_tune(trained_run, tmp_path, lr, guard, settle_min_steps=0):  # noqa: F811
    """A tiny compress run of 40 stage D steps at learning rate `lr`: (training losses, guard
    ratios as (ratio fed, restarted)), recorded as the run goes. The guard watches 15 steps;
    `settle_min_steps` 0 keeps its settle test in so short a run."""
    import neuralgs_ns.method_configs as method_configs
    import neuralgs_ns.models.neuralgs as neuralgs_model
    from neuralgs_ns.models.neuralgs import NeuralGSModel

    make_trainer = method_configs.neuralgs_trainer

    def with_lr(preset="auto"):
        config = make_trainer(preset)
        config.optimizers["field"]["optimizer"] = AdamOptimizerConfig(lr=lr, eps=1e-15)
        config.optimizers["field"]["scheduler"].lr_final = lr
        return config

    losses, ratios = [], []
    original_update, original_loss = FineTuneGuard.update_ratio, NeuralGSModel.get_loss_dict

    def update(self, ratio):
        restarted = original_update(self, ratio)
        ratios.append((ratio, restarted))
        return restarted

    def loss_dict(self, *args, **kwargs):
        out = original_loss(self, *args, **kwargs)
        if torch.is_grad_enabled():
            losses.append(float(out["main_loss"]))
        return out

    tmp_path.mkdir()
    data = trained_run["config_path"].parent.parent.parent.parent.parent / "scene"
    with pytest.MonkeyPatch.context() as mp:
        # A window that ends within the 40 steps (at lr 0.3 this scene's loss settles 1.4-1.5x
        # above the stage C fit's: too large a rate, but no blow-up).
        mp.setattr(neuralgs_model, "FineTuneGuard",
                   functools.partial(FineTuneGuard, window=15, settle_min_steps=settle_min_steps))
        mp.setattr(method_configs, "neuralgs_trainer", with_lr)
        mp.setattr(FineTuneGuard, "update_ratio", update)
        mp.setattr(NeuralGSModel, "get_loss_dict", loss_dict)
        report = compress(trained_run["checkpoint"], tmp_path / "s.ngs", data=data, preset="cpu", device="cpu",
                          fit_iterations=200, fine_tune_iterations=40, run_dir=tmp_path / "runs",
                          model_options={"fine_tune_guard": guard, "field_width": 64})
    assert report.fine_tune_iterations == len(losses) == 40  # restarts do not add steps
    return losses, ratios


def test_a_learning_rate_far_too_large_restarts_from_the_stage_c_fit(trained_run, tmp_path):  # noqa: F811
    losses, ratios = _fine_tune(trained_run, tmp_path / "guarded", lr=0.3, guard=True)
    restarts = [i for i, (_, restarted) in enumerate(ratios) if restarted]
    assert restarts, "the guard never restarted"
    # The step after a restart runs on the stage C weights again, so its loss is the
    # reference loss of its view, exactly (the same renderer, weights and precision).
    assert ratios[restarts[0] + 1][0] == pytest.approx(1.0, abs=1e-6)
    unguarded, _ = _fine_tune(trained_run, tmp_path / "unguarded", lr=0.3, guard=False)
    assert sum(losses[-8:]) < sum(unguarded[-8:])


def test_the_model_fits_the_guard_to_stage_d(trained_run, tmp_path):  # noqa: F811
    # The run above restarts on the settle test; with the default settle_min_steps the model
    # tells the guard its 40 steps are a short stage D, and the same run never restarts.
    _, ratios = _fine_tune(trained_run, tmp_path / "short", lr=0.3, guard=True, settle_min_steps=2000)
    assert len(ratios) >= 15 and not any(restarted for _, restarted in ratios)
