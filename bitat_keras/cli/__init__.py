"""The ``bitat-keras`` command line: ``demo`` and ``convert``."""
