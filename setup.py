"""Package list for setuptools (everything else is in pyproject.toml).

The trainers live in the top-level folder ``baselines/`` of the repository but install as the
subpackage ``cytodata.baselines``: PyPI has an unrelated top-level ``baselines`` package, and a
wheel of ours must neither overwrite it nor be shadowed by it.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["cytodata", "cytodata.*"])
packages += ["cytodata.baselines"] + [f"cytodata.baselines.{p}" for p in find_packages("baselines")]
package_dir = {"cytodata.baselines": "baselines"}

setup(packages=packages, package_dir=package_dir)
