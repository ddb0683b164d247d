"""What a run tells people: the terminal summary, the report folder, the study view.

* ``record``: one perf test's result as a JSON-ready record (what every report reads).
* ``rows``: one verdict row per test, shared by the terminal, Markdown and study tables.
* ``terminal``: the end-of-run summary pytest prints.
* ``files``: the report folder (``summary.json``, Markdown, logs, per-run files).
* ``study``: the study's tables (backends, knobs, the optimization chain) from a report folder.
"""
