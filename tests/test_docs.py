"""docs/config.md documents every key of the config schema, section by section."""
import re

import pytest

from ernievil2.config import DEFAULTS
from tests.conftest import REPO

CONFIG_DOC = (REPO / "docs" / "config.md").read_text(encoding="utf-8")


def section_text(section):
    """The text under ``## <section>`` up to the next ``## ``."""
    match = re.search(rf"^## {section}\b.*?(?=^## |\Z)", CONFIG_DOC, flags=re.M | re.S)
    return match.group(0) if match else None


def schema_keys(schema, prefix=""):
    for key, value in schema.items():
        if isinstance(value, dict):
            yield from schema_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


@pytest.mark.parametrize("section", sorted(DEFAULTS))
def test_every_schema_key_is_documented(section):
    text = section_text(section)
    assert text is not None, f"docs/config.md has no '## {section}' section"
    schema = DEFAULTS[section]
    keys = list(schema_keys(schema)) if isinstance(schema, dict) else []
    missing = [key for key in keys if f"`{key}`" not in text and f"`{key}:" not in text]
    assert not missing, f"docs/config.md, ## {section}: undocumented keys {missing}"
