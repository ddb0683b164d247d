"""Repository-level conftest: gives the plugin's own tests pytest's ``pytester`` fixture."""

pytest_plugins = ("pytester",)
