"""The page audit: search-engine and AI-visibility checks, each with evidence and a fix.

Two pure steps, so each can run wherever the pipeline puts CPU work:
- `facts.page_facts(html, url)` reads the HTML once: meta tags, links, structured data (extruct)
  and the main content (trafilatura). It runs in the parse pool's child processes, which import
  only it (this package's __init__ stays empty for that reason);
- `run.run_audits(facts, context)` turns those facts, the fetch (status, redirects, headers), the
  origin's robots.txt/llms.txt (worker/robots.py) and the rule insights into an AuditReport, with
  the main content's readability (readability.py).
"""
