"""conveyor moves metrics, events and errors out of Python applications without
blocking them, with bounded memory, and without losing data at fork, at exit, under
overload or while a destination is down.

The messaging core lives in :mod:`conveyor.ring`.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
