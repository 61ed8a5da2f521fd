"""SIMPLON parameters as value objects: typed, access-checked, range-checked, serialised as the DCU does."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["Param", "ParamError", "ParamTree"]

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "int": (int,), "uint": (int,), "float": (int, float), "bool": (bool,), "list": (list,),
    "dict": (dict,),
}


class ParamError(Exception):
    """A refused GET/PUT; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Param:
    value: Any
    value_type: str
    access_mode: str = "rw"
    min: float | None = None
    max: float | None = None
    allowed_values: list[Any] | None = None
    unit: str | None = None

    def value_object(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "value_type": self.value_type, "access_mode": self.access_mode}
        for key in ("min", "max", "allowed_values", "unit"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def check(self, name: str, value: Any) -> Any:
        """The value to store, or a ParamError that names the parameter and what is wrong with ``value``."""
        if "w" not in self.access_mode:
            raise ParamError(403, f"{name} is read-only")
        # NOTE: bool is an int in Python; a JSON true must not pass as a number, nor 1 as a bool
        if not isinstance(value, _PY_TYPES[self.value_type]) or (isinstance(value, bool)
                                                                  and self.value_type != "bool"):
            raise ParamError(400, f"{name} takes a {self.value_type}, got {type(value).__name__} {value!r}")
        number: Any = value  # NOTE: isinstance() against a tuple from a dict narrows to object; the type is known
        if self.value_type == "uint" and number < 0:
            raise ParamError(400, f"{name} takes a uint, got {value!r}")
        if self.min is not None and number < self.min or self.max is not None and number > self.max:
            raise ParamError(400, f"{name}={value!r} is outside [{self.min}, {self.max}]")
        if self.allowed_values is not None and value not in self.allowed_values:
            raise ParamError(400, f"{name}={value!r} is not one of {self.allowed_values}")
        return float(number) if self.value_type == "float" else value


@dataclass
class ParamTree:
    """One task of one module (e.g. detector config): parameters by name, names may contain ``/``."""

    what: str
    params: dict[str, Param] = field(default_factory=dict)

    def get(self, name: str) -> Param:
        try:
            return self.params[name]
        except KeyError:
            raise ParamError(404, f"unknown {self.what} parameter {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self.params[name].value

    def set(self, name: str, value: Any) -> None:
        """Store ``value`` without checks: the simulator's own updates (status, side effects)."""
        self.params[name].value = value

    def put(self, name: str, value: Any) -> list[str]:
        """Check and store a client's value; the names whose values it changed (itself first)."""
        param = self.get(name)
        param.value = param.check(name, value)
        return [name]

    def values(self) -> dict[str, Any]:
        return {name: p.value for name, p in self.params.items()}
