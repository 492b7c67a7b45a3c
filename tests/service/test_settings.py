"""The README's settings table is the Settings class's, and the README names no variable it lacks."""

from __future__ import annotations

import re

from service.settings import ROOT, Settings, env_names, markdown_table

README = (ROOT / "README.md").read_text()
TABLE = re.compile(r"<!-- settings table: python -m service.settings -->\n(.*?)\n<!-- end of settings table -->", re.S)


def test_the_readme_settings_table_is_the_settings_class() -> None:
    [table] = TABLE.findall(README)
    assert table == markdown_table()
    for name in Settings.model_fields:
        assert all(f"`{variable}`" in table for variable in env_names(name)), name


def test_the_readme_names_no_variable_the_settings_class_lacks() -> None:
    known = {variable for name in Settings.model_fields for variable in env_names(name)}
    named = set(re.findall(r"\b(XMHASH_[A-Z0-9_]+|REDIS_URL)\b", README))
    assert named and named <= known, named - known
