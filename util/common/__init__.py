"""Shared helpers: atomic writes, one-line errors, console output, the config system, command lines, processes and
devices (torchrun, seeding, mixed precision), random network inputs."""
