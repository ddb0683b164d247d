"""The gate: is tonight's run as fast as the reference? (pure decisions, no pytest, no I/O but baselines)

* ``decision``: the statistics: per-metric comparison, tolerances, the verdict of a run.
* ``baseline``: the committed baseline format (versioned JSON), loading, validation, atomic writes.
* ``identity``: the match key: what makes a baseline the reference for this test.
* ``check``: one test's reference and verdict, put together from the three.
"""
