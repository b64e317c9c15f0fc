"""The `pagelens` command: its HTTP client and report rendering, `pagelens run` and the embedded servers."""
