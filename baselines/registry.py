"""The training-method registry: name -> :class:`~cytodata.baselines.methods.base.Method` class.

A method module registers its class with ``@METHODS.register("name")``; importing
``cytodata.baselines.methods`` imports every method module. The registry sits below both the
configs and the methods, so each imports it downward.
"""

from __future__ import annotations

from cytodata._registry import Registry

METHODS: Registry = Registry("training method")
