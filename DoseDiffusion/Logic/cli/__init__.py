"""The ``dosediffusion`` command line."""
