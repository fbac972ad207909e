"""The version, in one place: the package, its metadata (pyproject.toml
reads it) and ``eco_trio --version`` all take it from here."""

__version__ = "0.1.0"
