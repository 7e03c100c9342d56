"""Shared helpers: atomic writes, one-line errors, console output, the config system, command lines."""
