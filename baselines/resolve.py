"""``load_config``: a shipped config name, YAML path or mapping + ``--set`` overrides -> the
registered method's typed config (``CONFIGS`` picks the config class from the config's
``method``; only the config class's torch-free module is imported, never the method's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from cytodata.errors import RecipeError
from cytodata.recipe import _from_dict

from .config import TrainConfig, check, read_config_mapping, set_dotted, to_dict
from .registry import CONFIGS


def load_config(config: "str | Path | Mapping[str, Any] | TrainConfig",
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Load and validate a config; ``overrides`` are dotted keys -> values (``--set``)."""
    if isinstance(config, TrainConfig):
        config = to_dict(config)
    data, where = read_config_mapping(config)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    method = data.get("method", TrainConfig.method)
    try:
        cls = CONFIGS.get(method)
    except ValueError as exc:
        raise RecipeError(f"{where}: method: {exc}") from None
    cfg = _from_dict(cls, data, where)
    check(cfg, where)
    return cfg
