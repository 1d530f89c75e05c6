"""Reading a config: YAML file, `--set` overrides, deprecated keys moved, one message for all problems."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import LorafitError
from .errors_text import suggest
from .legacy import move_keys, new_key
from .run import RunConfig


def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(loc: tuple) -> type[BaseModel]:
    """The pydantic class at a location like ('optim', 'layer_lrs', 0)."""
    cls: type[BaseModel] = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            break
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        sub = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            break
        cls = sub
    return cls


def _format_errors(err: ValidationError, source: str, set_keys: Sequence[str] = ()) -> str:
    """One line: the config file's problems under its name, each `--set` flag's under that flag (so a
    bad `--set optim.lr=abc` is not blamed on the file)."""
    from_file, from_set = [], []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc)
        flag = max((k for k in set_keys if key == k or key.startswith(k + ".")), key=len, default=None)
        text = e["msg"].removeprefix("Value error, ")
        # a section's own check names its fields itself ("data.head_tokens: ..."): no "'data': " before it
        where = "" if not key or key == flag or text.startswith(key + ".") else f"'{key}': "
        if e["type"] == "extra_forbidden":
            parent = _section_model(loc[:-1])
            guess = suggest(str(loc[-1]), _known_keys(parent))
            hint = f" (did you mean '{'.'.join(map(str, loc[:-1] + (guess,)))}'?)" if guess else \
                f" (known: {', '.join(_known_keys(parent))})"
            msg = f"unknown key{'' if key == flag else f' {key!r}'}{hint}"
        else:
            msg = f"{where}{text}{_list_hint(e, key, flag)}"
        if flag is None:
            from_file.append(msg)
        else:
            from_set.append(f"--set {flag}: {msg}")
    return "; ".join(([f"{source}: " + "; ".join(from_file)] if from_file else []) + from_set)


def _list_hint(e: dict, key: str, flag: str | None) -> str:
    """A scalar where a list belongs is the usual slip (`--set adapter.targets=query`): show the list form."""
    value = e.get("input")
    if e["type"] != "list_type" or not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return ""
    if flag == key:
        return f" (write a list: --set {key}=[{value}])"
    return f" (write a list: {key.rsplit('.', 1)[-1]}: [{value}])"


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: 3e-4, [query, value], null, true."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise LorafitError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=3e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise LorafitError(f"--set {key}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = parse_value(value)
    return raw


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                warn: Optional[Callable[[str], None]] = _stderr) -> RunConfig:
    """Read YAML (or start from defaults), apply dotted overrides, validate everything at once.
    Paths (PATH_FIELDS) come out absolute: the file's are read against its folder, `--set`'s against
    the working directory (resolve_paths). Keys that moved are read at their old place with one line
    each to `warn` (None: silently, as for a finished run's own config.yaml)."""
    raw: dict = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise LorafitError(f"{p}: config file not found")
        try:
            # libyaml's safe loader where there is one: the Python one took ~60 ms a run's config, most of
            # loading an adapter into a mixed base (serve loads them on demand)
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LorafitError(f"{p}: not valid YAML ({first})") from None
        if not isinstance(raw, dict):
            raise LorafitError(f"{p}: the top level must be a mapping of sections (model:, data:, ...)")
        raw = resolve_paths(raw, [p.parent, Path.cwd()])
    raw = move_keys(apply_overrides(raw, overrides or []), warn)
    set_keys = [new_key(item.split("=", 1)[0].strip()) for item in overrides or []]
    fields = [f for f in PATH_FIELDS if any(f == k or f.startswith(k + ".") for k in set_keys)]
    raw = resolve_paths(raw, [Path.cwd()], fields)
    return validate_config(raw, source, set_keys)


def validate_config(raw: dict, source: str = "config", set_keys: Sequence[str] = ()) -> RunConfig:
    try:
        return RunConfig.model_validate(move_keys(raw))
    except ValidationError as e:
        raise LorafitError(_format_errors(e, source, set_keys)) from None


# ---------------------------------------------------------------- paths

PATH_FIELDS = ("model.name", "data.train", "data.test")  # a local path or a hub id
DATA_FIELDS = ("data.train", "data.test")


def resolve_path(value: str, bases: Sequence[Path], data: bool = False) -> str:
    """Absolute form of a path in a config: the first base folder where it exists, else the first base
    when it looks like a path (so a missing file is reported where it was expected); a hub id unchanged."""
    from ..data.tables import looks_like_path

    p = Path(value).expanduser()
    if p.is_absolute():
        return os.path.normpath(p)
    for base in bases:
        if (base / p).exists():
            return os.path.abspath(base / p)
    return os.path.abspath(bases[0] / p) if looks_like_path(value, data) else value


def resolve_paths(raw: dict, bases: Sequence[Path], fields: Sequence[str] = PATH_FIELDS) -> dict:
    """raw with the path fields absolute (see resolve_path). Relative paths in a config file are read
    against its folder first, then the working directory (where configs written before this rule, and
    the shipped ones, meant them); `--set` values against the working directory only. Also applied to
    an old run's recorded config, so that it compares equal to its config.yaml read today."""
    for dotted in fields:
        section, key = dotted.split(".")
        node = raw.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            raw = {**raw, section: {**node, key: resolve_path(node[key], bases, dotted in DATA_FIELDS)}}
    return raw
