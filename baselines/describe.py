"""``cytodata train --list`` and ``--show``: what each shipped config is, and every resolved key
with its default and the comment that cites its source.

Each config states its own ``description`` (one line) and ``kind`` (``paper``: a published
recipe whose every value cites the authors' code or paper; ``ours``: the project's own), so a new
config appears here by adding those two fields, nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from .config import CONFIG_DIR, config_names, read_config_mapping, to_dict

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.-]*)\s*:(?P<rest>.*)$")


def yaml_comments(text: str) -> dict[str, str]:
    """``{"dotted.key": "comment"}`` for block-style YAML lines ``key: value  # comment``.

    A comment alone on the lines right below a key continues that key's comment; flow mappings
    (``a: {b: 1}``) give their comment to ``a``.
    """
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in text.splitlines():
        m = _KEY.match(line)
        stripped = line.strip()
        if m is None:
            if stripped.startswith("#") and last is not None and line.startswith(" " * (last[1] + 1)):
                out[last[0]] = (out.get(last[0], "") + " " + stripped.lstrip("# ")).strip()
            else:
                last = None
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [m["key"]])
        rest = m["rest"]
        comment = ""
        if "#" in rest:
            value, comment = _split_comment(rest)
        else:
            value = rest
        if comment:
            out[dotted] = comment
        if not value.strip():
            stack.append((indent, m["key"]))
        last = (dotted, indent)
    return out


def _split_comment(rest: str) -> tuple[str, str]:
    """``" 1e-3  # Adam lr"`` -> (value, comment), ignoring ``#`` inside quotes."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[:i], rest[i + 1:].strip()
    return rest, ""


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "storage_options":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def list_configs() -> list[dict]:
    """One row per shipped config: ``name``, ``kind``, ``method``, ``description``."""
    rows = []
    for name in config_names():
        data, _ = read_config_mapping(name)
        rows.append({"name": name, "kind": str(data.get("kind") or ""),
                     "method": str(data.get("method", "classifier")),
                     "description": " ".join(str(data.get("description") or "").split())})
    return rows


def format_list(rows: list[dict]) -> str:
    """The ``--list`` table: name, kind (paper / ours / not stated), method, description."""
    width = max(len(r["name"]) for r in rows) if rows else 4
    lines = []
    for r in rows:
        kind = {"paper": "paper", "ours": "ours"}.get(r["kind"], "kind?")
        lines.append(f"{r['name']:<{width}}  {kind:<5}  {r['method']:<12}  {r['description']}")
    return "\n".join(lines)


def show_config(name: str) -> list[dict]:
    """Every resolved key of config ``name``: ``key``, ``value``, ``default``, ``set`` (whether
    the config file sets it) and ``source`` (the comment beside it in the file).
    """
    from .registry import CONFIGS  # the config class's module only: no method, no torch
    from .resolve import load_config

    cfg = load_config(name)
    data, where = read_config_mapping(name)
    text = Path(where).read_text(encoding="utf-8") if Path(where).is_file() else ""
    comments = yaml_comments(text)
    defaults = _flat(to_dict(CONFIGS.get(cfg.method)()))
    given = _flat(data)
    rows = []
    for key, value in _flat(to_dict(cfg)).items():
        source = comments.get(key, "")
        if not source:  # a flow mapping's comment covers its keys
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            source = comments.get(parent, "") if parent in given or parent + "." in "".join(given) else ""
        rows.append({"key": key, "value": value, "default": defaults.get(key),
                     "set": key in given, "source": source})
    return rows


def format_show(name: str) -> str:
    """``--show`` text: ``key = value  [default D]  # source``; keys the file sets are marked *."""
    rows = show_config(name)
    data, where = read_config_mapping(name)
    width = max(len(r["key"]) for r in rows)
    head = [f"# {name} ({where}); kind: {data.get('kind') or 'not stated'}",
            f"# {' '.join(str(data.get('description') or '').split())}",
            "# * = set by the config file (else the default); after # the file's comment (source)"]
    lines = []
    for r in rows:
        value = yaml.safe_dump(r["value"], default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        default = yaml.safe_dump(r["default"], default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        mark = "*" if r["set"] else " "
        line = f"{mark} {r['key']:<{width}} = {value}"
        if r["set"] and r["value"] != r["default"] and r["key"] != "method":
            line += f"  [default {default}]"
        if r["source"]:
            line += f"  # {r['source']}"
        lines.append(line)
    return "\n".join(head + lines)


def config_fields() -> list[str]:
    """Top-level fields every config may set (for docs)."""
    from .config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


__all__ = ["CONFIG_DIR", "list_configs", "format_list", "show_config", "format_show", "yaml_comments"]
