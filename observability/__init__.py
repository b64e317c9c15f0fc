"""Tracing, metrics and logs for the API and the worker.

This package imports nothing from `app` or `worker`: what it needs from their settings is passed in.
"""

import functools
from importlib import metadata


@functools.cache
def service_version() -> str:
    """The installed pagelens version (resource attribute and `pagelens_build_info`)."""
    try:
        return metadata.version("pagelens")
    except metadata.PackageNotFoundError:
        return "0+unknown"
