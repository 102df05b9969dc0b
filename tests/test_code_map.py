"""The README's Code map names every package of src/homepot/ and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

import homepot

PACKAGE = Path(homepot.__file__).parent
README = PACKAGE.parents[1] / "README.md"


def _code_map() -> str:
    text = README.read_text()
    section = text.split("## Code map", 1)[1]
    return section.split("```", 2)[1]


def test_the_code_map_lists_exactly_the_packages_and_modules_of_the_tree() -> None:
    listed = set(re.findall(r"^  (\w+(?:/|\.py))", _code_map(), flags=re.MULTILINE))
    present = {
        f"{path.name}/" for path in PACKAGE.iterdir() if (path / "__init__.py").exists()
    } | {path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"}
    assert listed == present
