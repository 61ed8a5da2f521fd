"""The status page's files: shipped in the package (a wheel install has them), and nothing fetched from elsewhere."""
from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path

import hidra_core

PACKAGE = Path(hidra_core.__file__).parent
STATIC = PACKAGE / "rest" / "static"
SETUP = PACKAGE.parent / "setup.cfg"


def test_every_status_page_file_is_package_data_so_a_wheel_install_serves_it() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(SETUP.read_text())
    patterns = [p.strip() for p in parser["options.package_data"]["hidra_core"].split(",")]
    files = [str(p.relative_to(PACKAGE)) for p in STATIC.rglob("*") if p.is_file()]
    assert {"rest/static/index.html", "rest/static/page.js", "rest/static/page.css"} <= set(files)
    assert [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in patterns)] == []


def test_the_status_page_loads_nothing_from_another_origin() -> None:
    for path in STATIC.rglob("*"):
        text = path.read_text()
        assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+/", text) == [], path.name  # no CDN, no web font
        assert "@import" not in text and "url(" not in text, path.name
