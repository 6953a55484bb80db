"""The release, in one place (a leaf: the CLI and the package root both read it)."""

__version__ = "0.1.0"
