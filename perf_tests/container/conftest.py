"""The container tier: build the simulated engine's image before its first server starts (nothing is pulled)."""

from __future__ import annotations

import pytest

from pytest_llmperf.engines.container import find_runtime


@pytest.fixture(scope="session", autouse=True)
def llmperf_sim_image(request: pytest.FixtureRequest) -> str:
    runtime = find_runtime(request.config.getoption("llmperf_container_runtime"))
    if runtime is None:
        pytest.skip("container tier: no podman or docker on PATH (Debian: apt-get install podman runc)")
    from pytest_llmperf.sim.image import LOCAL_TAG, build_sim_image

    try:
        return build_sim_image(runtime, tag=LOCAL_TAG)
    except Exception as exc:  # the runtime cannot run here: say why, as a skip of this tier
        pytest.skip(f"container tier: could not build the simulated engine's image with {runtime}: {exc}")
