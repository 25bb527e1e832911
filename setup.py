"""Packages: everything under lshsim/, plus the source tree's executor/ and models/ folders
installed as lshsim.executor and lshsim.models (package_dir in setup.cfg). The rest of the
metadata is in setup.cfg."""
from setuptools import find_packages, setup

_MAPPED = {"lshsim.executor": "executor", "lshsim.models": "models"}
_packages = find_packages(include=["lshsim", "lshsim.*"])
for name, folder in _MAPPED.items():
    _packages += [name] + [f"{name}.{sub}" for sub in find_packages(where=folder)]
_packages.append("lshsim.models.configs")  # data only: the catalog's YAML files (package_data in setup.cfg)

setup(packages=_packages)
