"""deploy's version, in a leaf of its own so that every layer can read it without importing the API."""

__version__ = "0.1.0"
