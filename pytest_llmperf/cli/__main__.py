"""``python -m pytest_llmperf.cli``: the ``llmperf`` command."""

import sys

from pytest_llmperf.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
