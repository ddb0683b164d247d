"""Repository-level conftest, deliberately empty of plugins: `pytest perf_tests --help` shows the llmperf
options and nothing of the plugin's own test tooling (pytester is loaded by tests/conftest.py, for `pytest tests`).
"""
