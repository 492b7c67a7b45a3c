"""The one compiled part: the in-bucket scan kernel ``index._hamming`` (everything else is in pyproject.toml)."""

import platform

from setuptools import Extension, setup

# popcount is one instruction on every x86-64 CPU since 2008, but compilers only use it when asked.
POPCNT = ["-mpopcnt"] if platform.machine().lower() in ("x86_64", "amd64") else []

setup(ext_modules=[Extension("index._hamming", ["index/_hamming.c"], extra_compile_args=["-O3", *POPCNT])])
