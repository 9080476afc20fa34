"""Fixtures every test folder may use, registered once here."""

pytest_plugins = ["tests.support.pipelines"]
