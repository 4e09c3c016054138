"""One convention for every configuration record: :class:`Config`.

``UNetConfig``, ``PredictConfig``, ``TrainConfig``, ``AugmentConfig``, ``SynthConfig`` and
``ClusterConfig`` are frozen dataclasses deriving from :class:`Config`, which gives them:

- :meth:`Config.to_dict`: JSON-able builtins (tuples become lists, a nested config a dict), the
  form saved in model files, checkpoints and outputs;
- :meth:`Config.from_dict`: its strict inverse. Unknown keys are a :class:`ConfigError` that names
  them and lists the known ones; a missing field without default is one too; lists become tuples
  where the field's type is a tuple, and a nested config is rebuilt by its own ``from_dict``.
  Keys that an older release wrote and a class has since retired are listed in the class's
  :attr:`Config.RETIRED_KEYS`, each with the reason, and only those are accepted and ignored.

Validation stays in each class's ``__post_init__``, so a config is changed with
``dataclasses.replace(cfg, name=value)``, which validates the result again.

Fields carry flags in their metadata (:func:`flags`), read back with :func:`flagged`: for
example the predict options marked :data:`CHANGES_OUTPUT` are the ones a resumed run must keep.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from slideseg.errors import ConfigError

CHANGES_OUTPUT = "changes_output"
"""Flag of a field whose value changes what is computed (so a resumed run must keep it)."""


def flags(*names: str) -> Mapping[str, bool]:
    """Field metadata with each flag in ``names`` set, for ``dataclasses.field(metadata=...)``.

    >>> dict(flags(CHANGES_OUTPUT))
    {'changes_output': True}
    """
    return types.MappingProxyType(dict.fromkeys(names, True))


def flagged(cls: type[Config], flag: str) -> tuple[str, ...]:
    """The names of the fields of config class ``cls`` whose metadata sets ``flag``, in order.

    >>> @dataclasses.dataclass(frozen=True)
    ... class Example(Config):
    ...     size: int = dataclasses.field(default=1, metadata=flags(CHANGES_OUTPUT))
    ...     verbose: bool = False
    >>> flagged(Example, CHANGES_OUTPUT)
    ('size',)
    """
    return tuple(f.name for f in _fields(cls) if f.metadata.get(flag))


class Config:
    """Base of slideseg's frozen configuration dataclasses: ``to_dict`` and a strict ``from_dict``.

    >>> @dataclasses.dataclass(frozen=True)
    ... class Example(Config):
    ...     size: tuple[int, int] = (1, 2)
    >>> Example().to_dict()
    {'size': [1, 2]}
    >>> Example.from_dict({"size": [3, 4]})
    Example(size=(3, 4))
    >>> Example.from_dict({"sise": [3, 4]})
    Traceback (most recent call last):
    ...
    slideseg.errors.ConfigError: Unknown Example keys ['sise']; known are ['size'].
    """

    RETIRED_KEYS: ClassVar[Mapping[str, str]] = types.MappingProxyType({})
    """Keys that records written by older releases may hold and this class no longer has, each
    with why it went; :meth:`from_dict` accepts and ignores these (and only these)."""

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-able builtins: tuples become lists, nested configs dicts."""
        return {f.name: _plain(getattr(self, f.name)) for f in _fields(type(self))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild a config from :meth:`to_dict` output (or JSON of it), strictly.

        Raises
        ------
        ConfigError
            ``data`` has keys that are neither fields nor :attr:`RETIRED_KEYS`, lacks a field
            that has no default, or holds a value the class's validation refuses.
        """
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{name} is read from a mapping of field names to values, got {type(data).__name__}.")
        known = {f.name: f for f in _fields(cls) if f.init}
        unknown = sorted(str(k) for k in data if k not in known and k not in cls.RETIRED_KEYS)
        if unknown:
            retired = f" (retired, ignored: {sorted(cls.RETIRED_KEYS)})" if cls.RETIRED_KEYS else ""
            raise ConfigError(f"Unknown {name} keys {unknown}; known are {sorted(known)}{retired}.")
        missing = [k for k, f in known.items() if k not in data and _required(f)]
        if missing:
            raise ConfigError(f"{name} needs {', '.join(map(repr, missing))} (no default); got keys {sorted(data)}.")
        hints = _type_hints(cls)
        values = {k: _restore(hints[k], v) for k, v in data.items() if k in known}
        try:
            return cls(**values)
        except TypeError as exc:  # a value of the wrong kind, met by a comparison in __post_init__
            raise ConfigError(f"{name} cannot be built from {values}: {exc}.") from exc


# ------------------------------------------------------------------------------------ internals


def _fields(cls: Any) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_HINTS: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of ``cls`` (annotations are strings under postponed evaluation)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _plain(value: Any) -> Any:
    """``value`` as JSON-able builtins.

    >>> _plain({"a": ((1, 2), [3])})
    {'a': [[1, 2], [3]]}
    """
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _restore(tp: Any, value: Any) -> Any:
    """``value`` read from JSON, shaped as type ``tp`` asks: lists become tuples, dicts configs.

    Anything else is left as it is, for the class's ``__post_init__`` to check.

    >>> _restore(tuple[tuple[int, ...], ...], [[0, 0], [1, 2]])
    ((0, 0), (1, 2))
    >>> _restore(tuple[int, ...] | None, [0, 2]), _restore(tuple[int, ...] | None, "0,2")
    ((0, 2), '0,2')
    """
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        shapes = [a for a in typing.get_args(tp) if _fits(a, value)]
        return _restore(shapes[0], value) if shapes else value
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_restore(args[0], v) for v in value)
        if len(args) == len(value):
            return tuple(_restore(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)  # a wrong length: validation says so
    if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, Mapping):
        return tp.from_dict(value)
    return value


def _fits(tp: Any, value: Any) -> bool:
    """Whether :func:`_restore` has something to do for ``value`` as ``tp``."""
    if typing.get_origin(tp) is tuple:
        return isinstance(value, list | tuple)
    return isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, Mapping)


__all__ = ["CHANGES_OUTPUT", "Config", "flagged", "flags"]
