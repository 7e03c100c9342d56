"""Command-line tools run once per dataset or checkpoint (``python -m tools.NAME --help``); each is a thin CLI over
library functions in :mod:`util`."""
