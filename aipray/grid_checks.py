"""Checks across a sweep's grid that need more than one config section, run by the parser
before Ray starts: each failure is one :class:`~aipray.params.ConfigError` line naming the key,
the value and what is allowed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aipray.attacks import ATTACKS
from aipray.data import DATASETS
from aipray.models import MODELS
from aipray.params import ConfigError

if TYPE_CHECKING:
    from aipray.grid import Component, Grid, PerceptualConfig
    from aipray.models.extractor import ExtractorConfig


def check_cold_items(grids: list[Grid], where: str) -> None:
    """AIP's protocol attacks cold items: every dataset must keep some."""
    for grid in grids:
        for ds in grid.datasets:
            if getattr(ds.config, "n_cold", 1) < 1:
                raise ConfigError(
                    f"{where}: datasets.{ds.name}.n_cold: 0 is not allowed with protocol: "
                    "aip; expected an integer >= 1 (its cold items are what it attacks)"
                )


def check_adaptive(raw_attacks: Any, where: str) -> None:
    """``adaptive``, ``eot_samples``, ``bpda`` and ``evade_weight`` only on attacks that can
    optimise through a defence (their Config is an
    :class:`~aipray.attacks.base.AdaptiveConfig`), with a message that names them rather than
    an unknown key."""
    if not isinstance(raw_attacks, dict):
        return  # the attacks' own parse reports it
    able = [n for n in ATTACKS.names() if ATTACKS.get(n).can_be_adaptive()]
    for name, settings in raw_attacks.items():
        if not isinstance(settings, dict) or name not in ATTACKS:
            continue
        for key in ("adaptive", "eot_samples", "bpda", "evade_weight"):
            if key in settings and not ATTACKS.get(name).can_be_adaptive():
                raise ConfigError(
                    f"{where}.{name}.{key}: {settings[key]!r} is not allowed; {name} cannot "
                    f"optimise through a defence (adaptive attacks: {', '.join(able)})"
                )


def check_transfer(raw_attacks: Any, where: str) -> None:
    """``source`` only on attacks crafted against a ranker or its feature network (their
    Config is a :class:`~aipray.attacks.base.TransferConfig`), with a message that says why
    rather than an unknown key."""
    if not isinstance(raw_attacks, dict):
        return  # the attacks' own parse reports it
    able = [n for n in ATTACKS.names() if ATTACKS.get(n).can_transfer()]
    for name, settings in raw_attacks.items():
        if not isinstance(settings, dict) or name not in ATTACKS or "source" not in settings:
            continue
        cls = ATTACKS.get(name)
        if cls.can_transfer():
            continue
        knows = {
            "classifier": "the extractor's classifier, so every model already evaluates the "
            "same images",
            "none": "no model",
        }.get(cls.knowledge, f"its {cls.knowledge}")
        raise ConfigError(
            f"{where}.{name}.source: {settings['source']!r} is not allowed; {name} crafts its "
            f"images against {knows} (source is a setting of {', '.join(able)})"
        )


def check_sources(grids: list[Grid], models: tuple[Component, ...], where: str) -> None:
    """Every transfer attack's ``source`` names models of its grid or of the sweep's
    ``models:`` section (:func:`~aipray.grid.source_models`: one, or an ensemble of distinct
    ones), each one the attack can run against, and an ensemble none of the grid's models it
    is evaluated on (:func:`~aipray.grid.attack_on`)."""
    from aipray.grid import attack_on, source_models

    for grid in grids:
        for attack in grid.attacks:
            name = getattr(attack.config, "source", None)
            if name is None:
                continue
            at = f"{where}.{attack.name}"
            for source in source_models(attack.name, name, grid.models, at, models):
                missing = ATTACKS.get(attack.name).missing(MODELS.get(source.name))
                if missing:
                    raise ConfigError(
                        f"{at}.source: {name!r} is not allowed; {attack.name} needs the model's "
                        f"{missing}, which {source.name!r} does not implement"
                    )
            for model in grid.models:
                attack_on(attack, model, grid.models, models, where=at)


def check_pretrain_possible(grids: list[Grid], where: str, force: bool = False) -> None:
    """``extractor.weights: pretrain`` trains on item categories: fail early on data without."""
    for trial in (t for grid in grids for t in grid.trials()):
        needs = force or trial.needs_extractor
        if needs and not DATASETS.get(trial.dataset.name).has_categories:
            raise ConfigError(
                f"{where}: extractor.weights: 'pretrain' is not allowed with dataset "
                f"{trial.dataset.name!r} (its items have no categories to pretrain on); "
                "allowed: imagenet or the path of a checkpoint"
            )


def check_text_readable(grids: list[Grid], extractor: ExtractorConfig, where: str) -> None:
    """A ranker whose settings read titles (``needs_text``) needs a dataset with titles and an
    extractor with a text tower (``weights: clip``, or a checkpoint that may hold one)."""
    for trial in (t for grid in grids for t in grid.trials()):
        needs = getattr(trial.model.config, "needs_text", None)
        if needs is None or not needs():
            continue
        if not getattr(trial.dataset.config, "titles", None):
            raise ConfigError(
                f"{where}: models.{trial.model.name} reads titles, but "
                f"datasets.{trial.dataset.name} has none; allowed: titles: true (synthetic) or a "
                "titles file (folder), or the model's image-only setting"
            )
        if extractor.weights in ("pretrain", "surrogate", "imagenet"):
            raise ConfigError(
                f"{where}: models.{trial.model.name} reads titles, but extractor.weights: "
                f"{extractor.weights!r} has no text tower; allowed: clip"
            )


def check_perceptual(
    grids: list[Grid], pushes: list[PerceptualConfig], extractors: list[ExtractorConfig], where: str
) -> None:
    """What the category push can run: classifier-targeted attacks whose target is the push's,
    rankers on the extractor's features, no input defence (its defences are the extractors)."""
    for grid in grids:
        for attack in grid.attacks:
            if not _pushes(attack.name):
                allowed = [n for n in ATTACKS.names() if _pushes(n)]
                raise ConfigError(
                    f"{where}: attacks.{attack.name}: not allowed with protocol: perceptual; "
                    f"allowed: {', '.join(allowed)} (classifier-targeted attacks and controls)"
                )
            if getattr(attack.config, "adaptive", False):
                raise ConfigError(
                    f"{where}: attacks.{attack.name}.adaptive: True is not allowed with protocol: "
                    "perceptual; expected false (its defences are extractors, whose own "
                    "gradients every attack already follows)"
                )
            if getattr(attack.config, "target", None) is not None:
                raise ConfigError(
                    f"{where}: attacks.{attack.name}.target: {attack.config.target!r} is not "
                    "allowed with protocol: perceptual; set perceptual.target instead"
                )
        for model in grid.models:
            if not MODELS.get(model.name).uses_extractor:
                allowed = [n for n in MODELS.names() if MODELS.get(n).uses_extractor]
                raise ConfigError(
                    f"{where}: models.{model.name}: not allowed with protocol: perceptual; "
                    f"allowed: {', '.join(allowed)} (rankers on the extractor's features)"
                )
        if any(d.name != "none" for d in grid.defenses):
            raise ConfigError(
                f"{where}: defenses: only none is allowed with protocol: perceptual (its "
                "defences are extractors: list extractor.training values)"
            )
    for push in pushes:
        for key in ("origin", "target"):
            value = getattr(push, key)
            if isinstance(value, str):
                for ext in extractors:
                    names = _known_class_names(ext, grids)
                    if names is not None and value not in names:
                        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                        raise ConfigError(
                            f"{where}: perceptual.{key}: {value!r} is not a class of the "
                            f"extractor; allowed: a class id or one of {shown}"
                        )


def _pushes(name: str) -> bool:
    """Whether an attack can run under the category push: it targets the classifier, or it is
    a control (random noise)."""
    cls = ATTACKS.get(name)
    return cls.knowledge == "classifier" or getattr(cls, "control", False)


def _known_class_names(ext: ExtractorConfig, grids: list[Grid]) -> list[str] | None:
    """Class names known before anything runs: ImageNet's, or a synthetic catalog's."""
    from aipray.models.extractor import imagenet_class_names

    if ext.weights == "imagenet":
        return imagenet_class_names(ext.arch)
    if ext.weights in ("surrogate", "clip"):
        from aipray.data.surrogate import SurrogateConfig

        return list(SurrogateConfig().class_names())
    if ext.weights == "pretrain":
        names: set[str] = set()
        for trial in (t for grid in grids for t in grid.trials()):
            known = getattr(trial.dataset.config, "category_names", None)
            if known is None:
                return None
            names.update(known())
        return sorted(names)
    return None
