"""Renders the configuration reference (Markdown) from the pydantic models, so the docs cannot drift."""
from __future__ import annotations

import inspect
import re
import types
from typing import Any, Iterable, Literal, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from hidra_core.config import DriverChoice, InstanceConfig
from hidra_core.host.drivers import ROLES
from hidra_core.host.plugins import _dist_name, entry_points_of

__all__ = ["FIRST_PARTY", "render"]

#: distributions whose drivers the committed reference (docs/config-reference.md) documents
# NOTE: an explicit list, not "whatever is installed": the committed file must not change with the contrib
# examples, the fake distributions on the test path or a user's own plugins being importable.
FIRST_PARTY = ("hidra-databuffer", "hidra-eiger", "hidra-files", "hidra-hdf5", "hidra-inotify", "hidra-watchdog",
               "hidra-zmq")

_ROLE_SECTIONS = {
    "event source": ("Event source", ("sender.source.{}",)),
    "fetcher": ("Fetcher", ("sender.fetcher.{}",)),
    "transport": ("Transport", ("sender.transports.{}", "receiver.transports.{}")),
    "writer": ("Writer", ("receiver.{}",)),
}
_CONSTRAINTS = ((Gt, "gt", "> {}"), (Ge, "ge", ">= {}"), (Lt, "lt", "< {}"), (Le, "le", "<= {}"),
                (MinLen, "min_length", "length >= {}"), (MaxLen, "max_length", "length <= {}"))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model of a nested section (``Optional`` unwrapped), or None for a plain value."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in get_args(annotation))
    if origin is Union or origin is types.UnionType:
        return " \\| ".join(_type(a) for a in get_args(annotation))
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type(a) for a in get_args(annotation))}]"
    if annotation is DriverChoice:
        return "driver"
    if _model_of(annotation) is not None:
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: Any) -> str:
    parts = []
    for item in field.metadata:
        for kind, attr, text in _CONSTRAINTS:
            if isinstance(item, kind):
                parts.append(text.format(getattr(item, attr)))
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            parts.append(f"matching `{pattern}`")
    return (", " + ", ".join(parts)) if parts else ""


def _yaml(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip().replace("|", "\\|")


def _default(field: Any, path: str) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel) and not isinstance(value, DriverChoice):
        return f"see `{path}`"
    return f"`{_yaml(value)}`"


def _doc(obj: Any) -> str:
    """A docstring as Markdown: reST literals become code spans, paragraphs stay apart."""
    text = inspect.cleandoc(obj.__doc__ or "") if obj is not None else ""
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n") if p.strip())


def _meaning(field: Any, path: str) -> str:
    text = field.description or ""
    model = _model_of(field.annotation)
    if model is DriverChoice:
        text += f"; `type` names the driver, its options go in `{path}.<type>`"
    elif model is not None and not text:
        text = _doc(model).split("\n\n")[0]
    return _escape(text)


def _escape(text: str) -> str:
    """Plain text for a table cell: no pipes, no line breaks, no accidental emphasis."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("\n", " ")


def _table(model: type[BaseModel], path: str) -> list[str]:
    if not model.model_fields:
        return ["No options (any key is refused).", ""]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        sub = f"{path}.{name}" if path else name
        kind = _type(field.annotation) + _constraints(field)
        lines.append(f"| `{name}` | {kind} | {_default(field, sub)} | {_meaning(field, sub)} |")
    return [*lines, ""]


def _sections(model: type[BaseModel], path: str = "") -> list[tuple[str, type[BaseModel]]]:
    """``(dotted path, model)`` of a model and of every nested section below it, depth first."""
    found = [(path, model)]
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        if sub is not None and sub is not DriverChoice:
            found += _sections(sub, f"{path}.{name}" if path else name)
    return found


def _kernel() -> list[str]:
    out = ["## Kernel", ""]
    for path, model in _sections(InstanceConfig):
        out += [f"### `{path}`" if path else "### Top level", ""]
        doc = _doc(model) if model.__doc__ != BaseModel.__doc__ else ""
        out += [doc, ""] if doc else []
        out += _table(model, path)
    return out


def _drivers(distributions: Iterable[str] | None) -> list[str]:
    wanted = None if distributions is None else set(distributions)
    out = ["## Drivers", "",
           "A driver's options go in a section named after it, next to the key that chooses it:",
           "`sender: {source: {type: inotify, inotify: {path: /data}}}`. Drivers of one distribution that share",
           "a config model (the transports of one library, say) are listed together.", ""]
    for role, (group, _base) in ROLES.items():
        title, section = _ROLE_SECTIONS[role]
        grouped: dict[tuple[str, str], list[str]] = {}
        loaded: dict[tuple[str, str], Any] = {}
        for ep in entry_points_of(group):
            dist = _dist_name(ep)
            if wanted is not None and dist not in wanted:
                continue
            try:
                config_class = ep.load().config_class
                key = (dist, f"{config_class.__module__}.{config_class.__qualname__}")
                loaded[key] = config_class
            except Exception as exc:  # documented as broken rather than silently left out
                key = (dist, f"failed: {type(exc).__name__}: {exc}")
            grouped.setdefault(key, []).append(ep.name)
        for (dist, what), names in sorted(grouped.items(), key=lambda item: item[1]):
            label = "s" if len(names) > 1 else ""
            out += [f"### {title}{label} {', '.join(f'`{n}`' for n in names)}", ""]
            placeholder = names[0] if len(names) == 1 else "<name>"
            where = " and ".join(f"`{s.format(placeholder)}`" for s in section)
            out += [f"From distribution `{dist}`. Options in {where}"
                    + (f" (`<name>`: {', '.join(names)})." if len(names) > 1 else "."), ""]
            config_class = loaded.get((dist, what))
            if config_class is None:
                out += [f"**Could not be loaded** ({what}).", ""]
                continue
            doc = _doc(config_class) if config_class.__doc__ != BaseModel.__doc__ else ""
            out += [doc, ""] if doc else []
            for path, model in _sections(config_class, section[0].format(placeholder)):
                # NOTE: a driver's nested sections (the databuffer's disk tier, say) get tables of their own
                out += [f"Section `{path}`:", "", *_table(model, path)] if model is not config_class else _table(
                    model, path)
    return out


def render(distributions: Iterable[str] | None = FIRST_PARTY) -> str:
    """The reference as Markdown: kernel sections, then the drivers of ``distributions`` (None: all installed)."""
    scope = ("the first-party distributions " + ", ".join(f"`{d}`" for d in distributions)
             if distributions is not None else "every installed distribution")
    out = ["# Configuration reference", "",
           "Generated by `hidra config reference` from the config models of the kernel and of the drivers of",
           f"{scope}.",
           "`tests/test_docs.py` fails when this file and the models disagree. Unknown keys are refused at",
           "start-up with the file, section and key named. Relative paths are relative to the working directory.",
           "Any key can be overridden on the command line with `--set section.key=value` (the value is parsed as",
           "YAML). Defaults are shown in YAML.", ""]
    out += _kernel()
    out += _drivers(distributions)
    return "\n".join(out).rstrip("\n") + "\n"
