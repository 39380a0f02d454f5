"""Docs follow code: the configuration table lists every setting with its real default."""

import re

from shared.settings import Settings, as_environment_value
from tests.conftest import REPO


def test_configuration_table_matches_the_settings_object():
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `(LOOKALIKE_[A-Z_]+)` \| `([^`]*)` \|", text, re.MULTILINE))
    expected = {f"LOOKALIKE_{name.upper()}": as_environment_value(field.default)
                for name, field in Settings.model_fields.items()}
    assert rows == expected


def test_readme_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    quickstart = readme.index("## Quickstart")
    assert readme.index("make run") > quickstart and readme.index("make test") > quickstart


def test_every_error_code_is_in_the_api_docs_with_its_status():
    from shared.errors import CATALOGUE

    text = (REPO / "docs" / "api.md").read_text()
    documented = {}
    for status, codes in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", text, re.MULTILINE):
        for code in re.findall(r"`([a-z_]+)`", codes):
            documented[code] = int(status)
    assert documented == CATALOGUE
