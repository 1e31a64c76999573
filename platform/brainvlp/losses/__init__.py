"""Losses, one family per file; their configs, registered by name in ``LOSSES``, live in ``config``.

The package imports nothing itself, so that the configs are read without torch."""
