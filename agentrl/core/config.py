"""Typed dataclass configs that map one-to-one onto YAML files, with `key.sub=value` overrides.

Every section of a YAML file is a dataclass field; nested sections are nested dataclasses. Loading checks
every key and value against the dataclass types, so a misspelt key, a wrong type or a missing required
value fails with a `ConfigError` that names the key, the file (or the command-line override) and the
closest valid key.

    cfg = load_config(ExperimentConfig, "configs/quickstart.yaml", ["rollout.group_size=8"])
    print(dump_config(cfg))
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from agentrl.core.registry import closest

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key, its source and a fix."""


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Build `cls` from a YAML file (optional) and then `key.sub=value` overrides, in that order."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data = read_yaml(path)
    for override in overrides or []:
        key, value = parse_override(override)
        set_dotted(data, key, value, cls, source=f"override {override!r}")
    return from_dict(cls, data, source=source)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (plain YAML keeps the last silently, so a
    repeated section would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                lines = f"lines {seen[key]} and {key_node.start_mark.line + 1}"
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} appears twice ({lines})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML config file.

    A top-level `base: other.yaml` (relative to this file) starts from that file's mapping: this file's
    sections merge into it key by key, and any value that is not a mapping (lists included) replaces the
    base's. Bases may have bases of their own.
    """
    p = Path(path)
    if not p.is_file():
        where = f" (the base of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {str(p)!r} does not exist{where}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: 'base' must be the path of another config file, got {base!r}")
    base_path = (p.parent / base).resolve()
    chain = (*_chain, p.resolve())
    if base_path in chain:
        cycle = " -> ".join(str(x) for x in (*chain, base_path))
        raise ConfigError(f"{p}: 'base' files form a cycle: {cycle}")
    return merge_mappings(read_yaml(base_path, chain), data)


def merge_mappings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in: nested mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, str]:
    """Split `a.b.c=value` into (`a.b.c`, raw value text)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key, value


def set_dotted(data: dict[str, Any], key: str, raw: str, cls: type, source: str) -> None:
    """Write an override into the raw mapping, typing the value by the dataclass field it targets."""
    parts = key.split(".")
    current_cls: Any = cls
    node = data
    for depth, part in enumerate(parts):
        hints = _field_types(current_cls)
        if part not in hints:
            prefix = ".".join(parts[:depth])
            _raise_unknown(part, hints, prefix, source)
        target = hints[part]
        if depth == len(parts) - 1:
            node[part] = _parse_override_value(raw, target)
            return
        sub_cls = _dataclass_in(target)
        if sub_cls is None and _is_mapping(target):
            _set_in_mapping(node, parts[depth:], raw)
            return
        if sub_cls is None:
            section = ".".join(parts[: depth + 1])
            raise ConfigError(f"{source}: {section!r} is not a section, it has no sub-keys")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
        current_cls = sub_cls


def from_dict(cls: type[C], data: Any, source: str = "<dict>", prefix: str = "") -> C:
    """Validate a raw mapping against dataclass `cls` and build it."""
    where = prefix or "<top level>"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where!r} must be a mapping, got {type(data).__name__} {data!r}")
    hints = _field_types(cls)
    for key in data:
        if key not in hints:
            _raise_unknown(str(key), hints, prefix, source)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], dotted, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required value {dotted!r} ({_type_name(hints[f.name])})")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (what `dump_config` writes)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def _field_types(cls: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _raise_unknown(key: str, hints: dict[str, Any], prefix: str, source: str) -> None:
    dotted = f"{prefix}.{key}" if prefix else key
    hint = closest(key, hints)
    suggestion = f"; did you mean {(prefix + '.' + hint) if prefix else hint!r}?" if hint else ""
    valid = ", ".join(sorted(hints))
    raise ConfigError(f"{source}: unknown key {dotted!r}{suggestion} Valid keys here: {valid}")


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) is dict or any(typing.get_origin(a) is dict for a in typing.get_args(tp))


def _set_in_mapping(node: dict[str, Any], keys: list[str], raw: str) -> None:
    """`a.b.c=v` into a free-form mapping field (`env.kwargs.world_seed=1`, `algorithm.loss.kl_coef=0`):
    intermediate keys become nested mappings and the value is read as YAML."""
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = _parse_override_value(raw, Any)


def _parse_override_value(raw: str, target: Any) -> Any:
    if _accepts_plain_str(target):
        stripped = raw.strip()
        if stripped in ("null", "~", "None") and _is_optional(target):
            return None
        return raw
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _accepts_plain_str(tp: Any) -> bool:
    if tp is str:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return len(args) == 1 and args[0] is str
    return False


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    def fail() -> typing.NoReturn:
        raise ConfigError(
            f"{source}: {key!r} must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        fail()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = closest(str(value), [str(c) for c in choices])
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        raise ConfigError(
            f"{source}: {key!r} must be one of {list(choices)}, got {value!r}{suggestion}"
        )
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, prefix=key)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        (item_tp, *_rest) = typing.get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if isinstance(tp, type) and not isinstance(value, tp):
        fail()
    return value
