"""safehub's version, in a module of its own so that every layer can name it without
importing the package's lazy top level (``safehub/__init__.py``)."""

from __future__ import annotations

__version__ = "0.1.0"
