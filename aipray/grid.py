"""The values a sweep's grid is made of: a configured :class:`Component` of an axis, one
:class:`TrialSpec` (a grid point) and a :class:`Grid` (one product of axes), with the category
push's :class:`PerceptualConfig`. Built by the sweep parser (:mod:`aipray.config`), checked across
sections by :mod:`aipray.grid_checks`; this module imports neither.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, replace
from typing import Any

from aipray.attacks import ATTACKS
from aipray.attacks.base import EVADE_WEIGHT, AdaptiveConfig, TransferConfig
from aipray.defenses import DEFENSES
from aipray.models import MODELS
from aipray.models.extractor import ExtractorConfig
from aipray.params import ConfigError, Settings, fmt, key_fields, param
from aipray.store import config_key


@dataclass(frozen=True)
class Component:
    """One named, fully configured value of a grid axis (a dataset, a model, ...)."""

    kind: str
    name: str
    config: Any

    @property
    def label(self) -> str:
        """The name with its axis settings, e.g. ``jpeg(quality=75)``, ``dvbpr(dim=20)``, and its
        ``labelled`` settings that differ from their defaults; an attack's ε is its own grid axis
        and not part of the label."""
        axes = [
            (f.name, getattr(self.config, f.name))
            for f in dataclasses.fields(self.config)
            if (
                f.metadata.get("axis")
                or (f.metadata.get("labelled") and getattr(self.config, f.name) != f.default)
            )
            and f.name != "eps"
            # a setting its key leaves out at its default is left out of the label there too
            and (
                f.metadata.get("keyed_at_default", True)
                or getattr(self.config, f.name) != f.default
            )
        ]
        # a switch or an option shows only when on: vbpr(dim=20), vbpr(dim=20,visual_bias=True),
        # expa and expa(patience=100)
        axes = [(k, v) for k, v in axes if v is not False and v is not None]
        if not axes:
            return self.name
        inner = ",".join(f"{k}={fmt(v)}" for k, v in axes)
        return f"{self.name}({inner})"

    def as_dict(self) -> dict[str, Any]:
        """What the component's store keys hash: its name and its settings
        (:func:`~aipray.params.key_fields`)."""
        return {"name": self.name, "config": key_fields(self.config)}

    def key(self) -> str:
        return config_key(self.as_dict())


@dataclass(frozen=True)
class PerceptualConfig(Settings):
    """Perceptual-Rec's category push (``protocol: perceptual``).

    ``mode``: ``poisoning`` (the recommender is retrained on the attacked images, as the
    authors' code runs it) or ``evasion`` (the clean-trained one scores them); a grid axis.
    ``origin`` / ``target``: class ids or names of the extractor's classifier (ImageNet classes
    with ImageNet weights; the catalog's categories for a pretrained extractor). When not given,
    the rule of :func:`aipray.protocol.perceptual.choose_push` picks them from the first stage's
    (BPR's) clean CHR@20 over the catalog's categories: target = the most recommended class,
    origin = the least recommended one holding at least ``min_share`` of the warm items.
    """

    mode: str = param("poisoning", axis=True, choices=("poisoning", "evasion"))
    origin: int | str | None = param(None, min=0)
    target: int | str | None = param(None, min=0)
    min_share: float = param(0.02, min=0, max=1)

    def cross_checks(self) -> list[tuple[str, object, str]]:
        if self.origin is not None and self.origin == self.target:
            return [("target", self.target, f"a class other than the origin {self.origin!r}")]
        return []


PROTOCOLS = ("aip", "perceptual")


def attack_against(attack: Component, defense: Component) -> Component:
    """The attack as it runs against ``defense``: an adaptive attack against no defence is the
    oblivious attack, EOT's ``eot_samples`` count only for an adaptive attack on a randomised
    defence (1 otherwise), ``bpda: approximation`` only for an adaptive attack on a BPDA defence
    with an approximation (the identity's gradient otherwise) and ``evade_weight`` only for one
    on a screen (the detector; its default otherwise). So a grid of ``adaptive: [false, true]``
    × defences holds each distinct attack once, and an oblivious attack keeps its store key
    whatever it says."""
    config = attack.config
    if not isinstance(config, AdaptiveConfig):
        return attack
    defense_cls = DEFENSES.get(defense.name)
    adaptive = config.adaptive and not defense_cls.identity
    samples = config.eot_samples if adaptive and defense_cls.randomised else 1
    approximable = adaptive and defense_cls.gradient == "bpda" and defense_cls.approximable
    bpda = config.bpda if approximable else "identity"
    weight = config.evade_weight if adaptive and defense_cls.screens else EVADE_WEIGHT
    now = (adaptive, samples, bpda, weight)
    if now == (config.adaptive, config.eot_samples, config.bpda, config.evade_weight):
        return attack
    changed = dataclasses.replace(
        config, adaptive=adaptive, eot_samples=samples, bpda=bpda, evade_weight=weight
    )
    return Component(attack.kind, attack.name, changed)


#: what joins the models of an ensemble source (``source: vbpr+dvbpr``); never in a label
ENSEMBLE = "+"


def source_model(
    name: str,
    models: tuple[Component, ...],
    where: str,
    sweep_models: tuple[Component, ...] = (),
    value: str | None = None,
) -> Component:
    """The model that an attack's ``source`` names: among the grid's ``models``, else the
    sweep's top-level ``sweep_models``; by label (``vbpr(dim=20)``) or by name when one model
    has it. A one-line :class:`ConfigError` at ``where`` otherwise, showing ``value`` (the whole
    ``source``, when ``name`` is one model of an ensemble)."""
    unique: dict[str, Component] = {}
    for group in (models, sweep_models):
        matches = [m for m in group if m.label == name] or [m for m in group if m.name == name]
        unique = {m.key(): m for m in matches}
        if unique:
            break
    if len(unique) == 1:
        return next(iter(unique.values()))
    labels = ", ".join(dict.fromkeys(m.label for m in (*models, *sweep_models)))
    shown = value if value is not None else name
    if not unique and value is not None:
        raise ConfigError(
            f"{where}.source: {value!r} is not allowed; {name!r} is none of the sweep's models; "
            f"expected models of its models section joined by {ENSEMBLE}: {labels}"
        )
    if not unique:
        raise ConfigError(
            f"{where}.source: {name!r} is not allowed; expected a model of the sweep's models "
            f"section: {labels}"
        )
    named = ", ".join(m.label for m in unique.values())
    raise ConfigError(
        f"{where}.source: {shown!r} is not allowed; {name!r} names {len(unique)} models "
        f"({named}): give one's label"
    )


def source_models(
    attack: str,
    value: str,
    models: tuple[Component, ...],
    where: str,
    sweep_models: tuple[Component, ...] = (),
) -> tuple[Component, ...]:
    """The models ``source`` names: one, or an ensemble of several joined by ``+``
    (:data:`ENSEMBLE`), each as :func:`source_model` finds it, in a canonical order (by what
    the attack knows of each: :func:`shared_source`, else the label), so that the order they
    are written in changes nothing. A model named twice, or two that the attack knows alike
    (EXPA on two rankers of the extractor's features), is a one-line :class:`ConfigError`."""
    names = [n.strip() for n in value.split(ENSEMBLE)]
    if len(names) == 1:
        return (source_model(names[0], models, where, sweep_models),)
    if not all(names):
        raise ConfigError(
            f"{where}.source: {value!r} is not allowed; expected model names joined by "
            f"{ENSEMBLE} (an ensemble, e.g. vbpr{ENSEMBLE}dvbpr)"
        )
    found: dict[str, Component] = {}
    for name in names:
        model = source_model(name, models, where, sweep_models, value)
        known = shared_source(attack, model) or model.key()
        if known in found:
            twice = " and ".join(dict.fromkeys((found[known].label, model.label)))
            shared = known != model.key()
            why = f"{twice} share the {known}'s features" if shared else f"it names {twice} twice"
            raise ConfigError(
                f"{where}.source: {value!r} is not allowed; {why}: an ensemble names each once"
            )
        found[known] = model
    return tuple(sorted(found.values(), key=lambda m: shared_source(attack, m) or m.label))


def source_label(attack: str, sources: tuple[Component, ...]) -> str:
    """What images crafted on ``sources`` are crafted against, as logged (the param
    ``source``) and shown (``from=``): each model's label, or what every model shares
    (:func:`shared_source`), joined by ``+`` for an ensemble."""
    return ENSEMBLE.join(shared_source(attack, m) or m.label for m in sources)


def shared_source(attack: str, model: Component) -> str | None:
    """What the images of ``attack`` crafted on ``model`` are crafted against when every model
    shares it: ``extractor`` (a feature-network attack, EXPA, on a model whose features are the
    frozen extractor's), ``classifier`` (a classifier attack), ``dataset`` (one that knows no
    model); ``None`` when it is ``model`` itself (INSA, EXPA on DVBPR's own CNN)."""
    knowledge = ATTACKS.get(attack).knowledge
    if knowledge == "feature_network" and MODELS.get(model.name).features_from_extractor:
        return "extractor"
    return {"classifier": "classifier", "none": "dataset"}.get(knowledge)


def attack_on(
    attack: Component,
    model: Component,
    models: tuple[Component, ...],
    sweep_models: tuple[Component, ...] = (),
    where: str | None = None,
) -> tuple[Component, tuple[Component, ...]]:
    """The attack as it runs on ``model``, and the models it is crafted against when that is
    not ``model`` itself (one: a transfer attack; several: an ensemble; none: the direct
    attack). An attack whose ``source`` is the evaluated model is the direct attack (its
    ``source`` dropped), so ``source: [a, b]`` × models ``[a, b]`` holds the two direct trials
    once, and a direct trial keeps its store key; so is one whose source shares what the attack
    knows with the evaluated model (EXPA on VBPR from AlexRank: both use the extractor's
    features, the images are the same). An ensemble's ``source`` is rewritten in its canonical
    order; an ensemble that holds the evaluated model (or what the attack knows of it) is a
    one-line :class:`ConfigError` at ``where``: it is evaluated on held-out models, as Liu et
    al. evaluate theirs."""
    config = attack.config
    if not isinstance(config, TransferConfig) or config.source is None:
        return attack, ()
    at = where if where is not None else f"attacks.{attack.name}"
    sources = source_models(attack.name, config.source, models, at, sweep_models)

    def knows(m: Component) -> str:
        return shared_source(attack.name, m) or m.key()

    if len(sources) > 1:
        if any(knows(s) == knows(model) for s in sources):
            shared = shared_source(attack.name, model)
            whose = f"whose {shared}'s features are" if shared else "which is"
            members = ", ".join(m.label for m in sources)
            raise ConfigError(
                f"{at}.source: {config.source!r} is not allowed on model {model.label}, {whose} "
                "one of its members; expected an ensemble of models other than the evaluated "
                f"one (give it a grid whose models leave out {members})"
            )
        canonical = replace(config, source=ENSEMBLE.join(m.label for m in sources))
        return Component(attack.kind, attack.name, canonical), sources
    if knows(sources[0]) != knows(model):
        return attack, sources
    return Component(attack.kind, attack.name, replace(config, source=None)), ()


@dataclass(frozen=True)
class TrialSpec:
    """One grid point: (dataset, model, attack, ε, defence) under AIP's protocol; under
    Perceptual-Rec's, the defence is the extractor's training and ``push`` holds the mode."""

    dataset: Component
    model: Component
    attack: Component
    defense: Component
    extractor: Component | None = None
    push: Component | None = None
    #: the model the attack is crafted against when it is not ``model`` (a transfer attack,
    #: ``source``: :func:`attack_on`); ``None``: ``model`` itself, or an ensemble
    source: Component | None = None
    #: the models of an ensemble source (two or more, canonical order: :func:`source_models`;
    #: ``source`` is then ``None``); empty otherwise
    ensemble: tuple[Component, ...] = ()

    @property
    def sources(self) -> tuple[Component, ...]:
        """The models the attack is crafted against when it is not ``model``: the one source,
        an ensemble's members, or none (the direct attack)."""
        return self.ensemble or (() if self.source is None else (self.source,))

    @property
    def direct_attack(self) -> Component:
        """The attack without its ``source``: as the direct trial on each source runs it."""
        config = self.attack.config
        if getattr(config, "source", None) is None:
            return self.attack
        return Component(self.attack.kind, self.attack.name, replace(config, source=None))

    @property
    def eps(self) -> float | None:
        return getattr(self.attack.config, "eps", None)

    @property
    def adaptive(self) -> bool:
        """The attack optimises through the trial's defence."""
        return bool(getattr(self.attack.config, "adaptive", False))

    @property
    def needs_extractor(self) -> bool:
        """The ranker is built on the pretrained extractor, or the attack targets its
        classifier."""
        return (
            MODELS.get(self.model.name).uses_extractor
            or ATTACKS.get(self.attack.name).knowledge == "classifier"
        )

    @property
    def extractor_config(self) -> ExtractorConfig:
        return self.extractor.config if self.extractor is not None else ExtractorConfig()

    def key(self) -> str:
        """Identity of the full configuration (two grids may name the same trial)."""
        parts = (self.dataset, self.model, self.attack, self.defense, self.extractor, self.push)
        dicts: list[Any] = [c.as_dict() for c in parts if c is not None]
        if self.source is not None:  # a direct trial keeps its key
            # EXPA on DVBPR from AlexRank or from VBPR: the same images, the same trial
            shared = shared_source(self.attack.name, self.source)
            dicts[2] = self.direct_attack.as_dict()
            dicts.append(shared or self.source.as_dict())
        elif self.ensemble:  # the members in any order: one ensemble, one key
            dicts[2] = self.direct_attack.as_dict()
            known = [shared_source(self.attack.name, m) or m.as_dict() for m in self.ensemble]
            dicts.append(["ensemble", sorted(known, key=config_key)])
        return config_key(dicts)

    def crafted_on(self) -> TrialSpec:
        """The trial whose model the attack is crafted against: the direct trial on the
        source model (itself when the attack is direct); its ranker stage is what the
        attack needs. An ensemble has one per member: :meth:`crafted_on_each`."""
        if self.ensemble:
            raise ValueError(f"{self.name} is crafted on several models: use crafted_on_each")
        if self.source is None:
            return self
        return replace(self, model=self.source, attack=self.direct_attack, source=None)

    def crafted_on_each(self) -> tuple[TrialSpec, ...]:
        """The direct trial on each model the attack is crafted against (an ensemble's
        members, or the one source); none for a direct attack."""
        return tuple(
            replace(self, model=m, attack=self.direct_attack, source=None, ensemble=())
            for m in self.sources
        )

    @property
    def name(self) -> str:
        eps = "" if self.eps is None else f"/eps={fmt(self.eps)}"
        head = f"{self.dataset.label}/{self.model.label}"
        if self.push is not None:
            training = self.extractor_config.training
            return f"{head}/{training}/{self.attack.name}{eps}/{self.push.config.mode}"
        marks = []
        if self.adaptive:
            config = self.attack.config
            extra = [f"eot={config.eot_samples}"] if config.eot_samples > 1 else []
            extra += ["bpda=approximation"] if config.bpda == "approximation" else []
            extra += (
                [f"evade={fmt(config.evade_weight)}"] if config.evade_weight != EVADE_WEIGHT else []
            )
            marks.append(",".join(["adaptive", *extra]))
        if self.sources:
            marks.append(f"from={source_label(self.attack.name, self.sources)}")
        attack = self.attack.name + (f"({','.join(marks)})" if marks else "")
        return f"{head}/{attack}{eps}/{self.defense.label}"


@dataclass(frozen=True)
class Grid:
    """One full product of datasets × models × attacks (each ε) × defences (× extractors ×
    push modes)."""

    name: str
    datasets: tuple[Component, ...]
    models: tuple[Component, ...]
    attacks: tuple[Component, ...]
    defenses: tuple[Component, ...]
    extractors: tuple[Component | None, ...] = (None,)
    pushes: tuple[Component | None, ...] = (None,)
    #: the models a transfer attack's ``source`` may name besides the grid's own (the sweep's
    #: top-level ``models:``)
    sources: tuple[Component, ...] = ()

    def trials(self) -> list[TrialSpec]:
        """Every grid point, the attack as it runs against the point's defence
        (:func:`attack_against`) and on its model (:func:`attack_on`): the same trial may
        appear twice."""
        out = []
        axes = (self.defenses, self.extractors, self.pushes, self.datasets, self.models)
        for f, e, p, d, m in itertools.product(*axes):
            for a in self.attacks:
                attack, sources = attack_on(attack_against(a, f), m, self.models, self.sources)
                single = sources[0] if len(sources) == 1 else None
                ensemble = sources if len(sources) > 1 else ()
                out.append(TrialSpec(d, m, attack, f, e, p, single, ensemble))
        return out
