"""What a run's config tells the core: the model spec and the evaluation settings (nothing else of the run config).

The core (models, objectives, evaluation, analysis) takes plain arguments; this module is
where a run config becomes them, written once for the run, the commands and the tests.
"""

from __future__ import annotations

from lvae.core.evaluate import CurveSettings, EvalSettings
from lvae.core.models import ModelSpec
from lvae.run.config import Config


def model_spec(cfg: Config) -> ModelSpec:
    """The model a (validated) run config describes: the first `layers` of model.latent_sizes and
    model.hidden_sizes, batch_norm, likelihood and the other model.* keys."""
    m = cfg.model
    return ModelSpec(name=str(m.name), latent_sizes=tuple(m.latent_sizes[:cfg.layers]),
                     hidden_sizes=tuple(m.hidden_sizes[:cfg.layers]), mlp_depth=m.mlp_depth,
                     batch_norm=cfg.batch_norm, likelihood=str(cfg.likelihood), min_variance=m.min_variance,
                     head_batch_norm=m.head_batch_norm, vae_mirror_encoder_widths=m.vae_mirror_encoder_widths,
                     init=str(m.init))


def eval_settings(cfg: Config) -> EvalSettings:
    """The evaluation a run config asks for: eval.*, the training objective's samples for the training-set
    bound, the binarization seed of the training subset, and the run's seed for the noise."""
    return EvalSettings(iw_samples=cfg.eval.iw_samples, test_subset=cfg.eval.test_subset,
                        train_subset=cfg.eval.train_subset, train_iw_samples=cfg.train.iw_samples,
                        train_mc_samples=cfg.train.mc_samples, binarization_seed=cfg.data.binarization_seed,
                        seed=cfg.seed, memory_budget_mb=cfg.eval.memory_budget_mb, allow_tf32=cfg.eval.allow_tf32,
                        compile=cfg.eval.compile, progress=cfg.train.progress)


def curve_settings(cfg: Config) -> CurveSettings:
    """One point of the training curves as eval.curve_* asks (the run's seeds choose noise and binarization)."""
    return CurveSettings(iw_samples=cfg.eval.curve_iw_samples, images=cfg.eval.curve_images,
                         binarization_seed=cfg.data.binarization_seed, seed=cfg.seed,
                         memory_budget_mb=cfg.eval.memory_budget_mb)
