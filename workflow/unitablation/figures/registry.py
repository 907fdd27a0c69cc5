"""The table of figures: every module of this package that declares a `SPEC` and a `render`.

A figure module holds `SPEC = FigureSpec(...)` (its name, scope, inputs, config keys, caption)
and `render(job) -> Figure`, which reads its tables through the `FigureJob` and draws. The
registry finds the modules itself (pkgutil), so adding a figure means adding its module (and
its test); the rules (workflow/rules/figures.smk), the report captions, the final targets and
the tests read this table. Knows nothing of Snakemake: the rules hand it config values.

Scopes and their outputs (the paths users and the report rely on):
`layer`: results/figures/{model}/{layer}/{name}.png, one per studied (model, layer);
`model`: results/figures/{model}/{name}.png, one per model;
`study`: results/figures/comparison/{name}.png, one for the whole study.
An input pattern's placeholders that are wildcards of the scope are filled with the job's
values; the others are expanded, in the order they appear, over what config lists: `model` over
the models, `layer` over the model's studied layers, `basis` over the bases; such an input is a
list of paths. `concept_inputs` exist only for models with a concept set (`{concept_set}`: its
Broden folder).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from string import Formatter
from types import ModuleType
from typing import Any, Literal

import pandas as pd
from matplotlib.figure import Figure

from unitablation.table_io import read_table

Scope = Literal["layer", "model", "study"]
#: Wildcards of each scope's outputs.
SCOPE_WILDCARDS: dict[str, tuple[str, ...]] = {
    "layer": ("model", "layer"),
    "model": ("model",),
    "study": (),
}
#: Output stem of each scope, relative to the working directory.
SCOPE_STEMS: dict[str, str] = {
    "layer": "results/figures/{model}/{layer}/{figure}",
    "model": "results/figures/{model}/{figure}",
    "study": "results/figures/comparison/{figure}",
}
#: The config key every figure reads: the PNG's resolution.
DPI_KEY = "figures.dpi"
SUFFIXES = ("png", "pdf")


@dataclass(frozen=True)
class FigureSpec:
    """One figure: what it is called, what it is drawn for, what it reads, how it is captioned."""

    name: str
    scope: Scope
    #: Input name -> path pattern (see the module docstring for the placeholders).
    inputs: Mapping[str, str]
    #: Dotted config keys the figure reads (figures.dpi always): the rule's params, no more.
    config_keys: tuple[str, ...] = (DPI_KEY,)
    #: reStructuredText caption of the report; {model} and {layer} are filled per figure.
    caption: str = ""
    #: Inputs only for a model with a concept set.
    concept_inputs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a spec the rules could not serve, naming the figure."""
        if self.scope not in SCOPE_WILDCARDS:
            raise ValueError(f"figure {self.name}: unknown scope {self.scope!r}")
        if DPI_KEY not in self.config_keys:
            raise ValueError(f"figure {self.name}: config_keys must name {DPI_KEY}")
        for pattern in [*self.inputs.values(), *self.concept_inputs.values()]:
            unknown = set(placeholders(pattern)) - set(EXPANDABLE) - {"concept_set"}
            if unknown:
                raise ValueError(f"figure {self.name}: unknown placeholders {unknown} in {pattern}")


@dataclass(frozen=True)
class Study:
    """What the config lists, as the input patterns expand over it."""

    models: tuple[str, ...]
    layers: Mapping[str, tuple[str, ...]]
    bases: tuple[str, ...]
    #: Each model's Broden-layout concept folder, None without a concept set.
    concept_sets: Mapping[str, str | None]


#: Placeholders an input pattern may expand, with the values each takes.
EXPANDABLE: dict[str, Callable[[Study, Mapping[str, str]], Sequence[str]]] = {
    "model": lambda study, _: study.models,
    "layer": lambda study, values: study.layers[values["model"]],
    "basis": lambda study, _: study.bases,
}


def placeholders(pattern: str) -> list[str]:
    """The {placeholders} of a path pattern, in order of appearance."""
    return [name for _, name, _, _ in Formatter().parse(pattern) if name]


def expand(pattern: str, fixed: Mapping[str, str], study: Study) -> list[str]:
    """Every path of a pattern: `fixed` values filled, the other placeholders expanded in order."""
    values = [dict(fixed)]
    for name in dict.fromkeys(placeholders(pattern)):
        if name in fixed:
            continue
        values = [{**v, name: x} for v in values for x in EXPANDABLE[name](study, v)]
    return [pattern.format(**v) for v in values]


def job_inputs(spec: FigureSpec, wildcards: Mapping[str, str], study: Study) -> dict[str, Any]:
    """A figure job's named inputs: a path, or a list where the pattern expands."""
    fixed = {name: wildcards[name] for name in SCOPE_WILDCARDS[spec.scope]}
    patterns = dict(spec.inputs)
    concept_set = study.concept_sets.get(fixed["model"]) if "model" in fixed else None
    if concept_set is not None:
        patterns.update(spec.concept_inputs)
        fixed["concept_set"] = concept_set
    inputs: dict[str, Any] = {}
    for name, pattern in patterns.items():
        paths = expand(pattern, fixed, study)
        expands = set(placeholders(pattern)) - set(fixed)
        inputs[name] = paths if expands else paths[0]
    return inputs


def job_settings(spec: FigureSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a figure's config keys, by dotted key; KeyError names a missing key."""
    settings = {}
    for key in spec.config_keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(f"figure {spec.name} reads config key {key}, which is not set")
            node = node[part]
        settings[key] = node
    return settings


def outputs(spec: FigureSpec, study: Study) -> list[str]:
    """Every file a figure writes (PNG, PDF) for a study, config order."""
    stem = SCOPE_STEMS[spec.scope].replace("{figure}", spec.name)
    return [f"{path}.{suffix}" for path in expand(stem, {}, study) for suffix in SUFFIXES]


def caption(spec: FigureSpec, wildcards: Mapping[str, str]) -> str:
    """A figure's report caption with its {model} and {layer} filled in."""
    text = spec.caption
    for name in SCOPE_WILDCARDS[spec.scope]:
        text = text.replace("{" + name + "}", wildcards[name])
    return text


@dataclass(frozen=True)
class FigureJob:
    """What a figure's `render` reads: its inputs, its settings and the job's wildcards."""

    spec: FigureSpec
    inputs: Mapping[str, Any]
    settings: Mapping[str, Any]
    wildcards: Mapping[str, str]

    def path(self, name: str) -> str:
        """The one path of an input."""
        value = self.inputs[name]
        if not isinstance(value, str):
            raise ValueError(f"figure {self.spec.name}: input {name} is a list, not one path")
        return value

    def optional(self, name: str) -> str | None:
        """The path of an input that may be absent (concept inputs without a concept set)."""
        return self.path(name) if name in self.inputs else None

    def paths(self, name: str) -> list[str]:
        """The paths of an input, in expansion order (one path as a list of one)."""
        value = self.inputs[name]
        return [value] if isinstance(value, str) else [str(v) for v in value]

    def layer_tables(self, name: str) -> tuple[pd.DataFrame, list[str], str | None]:
        """An input of one table per layer, stacked: the rows, the layers (config order, those
        with rows) and the model named in them (None when no layer has rows)."""
        tables = [read_table(path) for path in self.paths(name)]
        table = pd.concat(tables, ignore_index=True)
        layers = [str(t["layer"].iloc[0]) for t in tables if len(t)]
        model = str(table["model"].iloc[0]) if len(table) else None
        return table, layers, model

    def keyed(self, name: str, placeholder: str) -> dict[str, str]:
        """An expanded input's paths by the value its `placeholder` took, in order."""
        pattern = {**self.spec.inputs, **self.spec.concept_inputs}[name]
        regex = _pattern_regex(pattern, {k: self.wildcards[k] for k in self.fixed()})
        keyed = {}
        for path in self.paths(name):
            match = regex.fullmatch(path)
            if match is None:
                raise ValueError(f"figure {self.spec.name}: {path} does not match {pattern}")
            keyed[match[placeholder]] = path
        return keyed

    def fixed(self) -> tuple[str, ...]:
        """The wildcards of this figure's scope."""
        return SCOPE_WILDCARDS[self.spec.scope]


def _pattern_regex(pattern: str, fixed: Mapping[str, str]) -> re.Pattern[str]:
    """A regex matching a pattern's paths, one named group per expanded placeholder."""
    parts, seen = [], set()
    for literal, name, _, _ in Formatter().parse(pattern):
        parts.append(re.escape(literal))
        if not name:
            continue
        if name in fixed:
            parts.append(re.escape(fixed[name]))
        elif name in seen:
            parts.append(f"(?P={name})")
        else:
            parts.append(f"(?P<{name}>[^/]+)")
            seen.add(name)
    return re.compile("".join(parts))


@cache
def _modules() -> tuple[ModuleType, ...]:
    """Every module of the package that declares a figure, in name order."""
    package = importlib.import_module(__package__)
    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__package__}.{info.name}")
        if isinstance(getattr(module, "SPEC", None), FigureSpec):
            if not callable(getattr(module, "render", None)):
                raise TypeError(f"figure module {module.__name__} has a SPEC but no render()")
            found.append(module)
    names = [m.SPEC.name for m in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"figure names declared twice: {duplicates}")
    return tuple(found)


def figures(scope: str | None = None) -> tuple[FigureSpec, ...]:
    """Every registered figure (of one scope), in name order."""
    return tuple(m.SPEC for m in _modules() if scope is None or m.SPEC.scope == scope)


def figure(name: str) -> FigureSpec:
    """The spec of one figure; KeyError names the registered ones."""
    for spec in figures():
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in figures())
    raise KeyError(f"unknown figure {name!r}; registered: {known}")


def render(job: FigureJob) -> Figure:
    """Draw a figure job with its module's `render`."""
    (module,) = [m for m in _modules() if m.SPEC.name == job.spec.name]
    return module.render(job)


def rule_name(scope: str) -> str:
    """The Snakemake rule that draws a scope's figures."""
    return f"figure_{scope}"


# One job per scope's wildcards draws all figures of that scope (a figure job is mostly the
# Python start): its named inputs, outputs and logs carry each figure's name, its params the
# union of its figures' config keys, so that a figure group reruns when one of its figures would.

#: Separates a figure's name from its own input name in a group job's input names.
INPUT_SEPARATOR = "__"


def output_key(name: str, suffix: str) -> str:
    """A group job's output name of one figure's PNG or PDF."""
    return f"{name}_{suffix}"


def group_inputs(scope: str, wildcards: Mapping[str, str], study: Study) -> dict[str, Any]:
    """A group job's named inputs: each figure's own (job_inputs), prefixed with its name."""
    return {
        f"{spec.name}{INPUT_SEPARATOR}{key}": value
        for spec in figures(scope)
        for key, value in job_inputs(spec, wildcards, study).items()
    }


def figure_inputs(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """One figure's inputs out of its group job's, under their own names again."""
    prefix = f"{name}{INPUT_SEPARATOR}"
    return {key[len(prefix) :]: value for key, value in inputs.items() if key.startswith(prefix)}


def group_settings(scope: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of every config key a scope's figures read (the union), by dotted key."""
    settings: dict[str, Any] = {}
    for spec in figures(scope):
        settings.update(job_settings(spec, config))
    return dict(sorted(settings.items()))


def figure_settings(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """One figure's settings (its config_keys, no more) out of its group's."""
    return {key: settings[key] for key in figure(name).config_keys}


def group_captions(scope: str, wildcards: Mapping[str, str]) -> dict[str, str]:
    """Each figure's report caption of a group job, by figure name."""
    return {spec.name: caption(spec, wildcards) for spec in figures(scope)}
