"""The package version, in a module of its own so that the modules report.json is built in can
read it without importing the package's public face (which imports them lazily)."""
from __future__ import annotations

__version__ = "0.1.0"
