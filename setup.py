"""The C part of the build: everything else is in pyproject.toml.

``conveyor.client._speedups`` is optional: where it cannot be compiled, the package
installs without it and ``Client.increment`` runs its Python twin (same behaviour,
about twice the cost per call; docs/client.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "conveyor.client._speedups",
            ["src/conveyor/client/_speedups.c"],
            optional=True,
        )
    ]
)
