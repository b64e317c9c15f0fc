"""pagelens: scans web pages and documents in the background (core, API and CLI)."""

from observability import service_version

__version__ = service_version()
