"""pagelens API: scans web pages and documents in the background."""

__version__ = "0.1.0"
