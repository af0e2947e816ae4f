"""The training-method registries: name -> :class:`~cytodata.baselines.methods.base.Method` class
(``METHODS``) and name -> its typed config class (``CONFIGS``).

A method module registers its class with ``@METHODS.register("name")``, and a torch-free module
registers the method's config class with ``@CONFIGS.register("name")``. Both registries know
every name from the table below without importing anything: ``METHODS.get(name)`` imports the
method's module (torch, timm), ``CONFIGS.get(name)`` only the config's, so reading or checking a
config (``cytodata train --show``, ``load_config``) never loads torch. The registries sit below
the configs and the methods, so each imports them downward.
"""

from __future__ import annotations

from cytodata._registry import Registry

METHODS: Registry = Registry("training method")
CONFIGS: Registry = Registry("training method")

_PACKAGE = __name__.rpartition(".")[0] + ".methods"
#: method name -> (module registering the method class, torch-free module registering its config
#: class), both below ``methods/``; a new method adds its row here
MODULES = {
    "classifier": ("classifier", "classifier_config"),
    "dino": ("dino.method", "dino_config"),
    "ws-dino": ("dino.ws_dino", "dino_config"),
    "mean-teacher": ("mean_teacher", "mean_teacher_config"),
}
for _name, (_method, _config) in MODULES.items():
    METHODS.register_lazy(_name, f"{_PACKAGE}.{_method}")
    CONFIGS.register_lazy(_name, f"{_PACKAGE}.{_config}")
