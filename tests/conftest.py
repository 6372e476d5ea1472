pytest_plugins = ["lwfm_bus.testing.pytest_plugin"]
