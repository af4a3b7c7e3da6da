"""mgpu's version: the one place it is written (``pyproject.toml`` says the same; a test
holds the two equal). ``mgpu --version``, the master's health reply, its ``master.json`` and
its OpenAPI document all read it here."""

__version__ = "0.1.0"
