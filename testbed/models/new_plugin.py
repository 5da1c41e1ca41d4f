"""`python -m testbed.models.new_plugin NAME [--dir DIR]`: write a plugin package that works
as it is (a tiny model with split points, synthetic data, `train.py` writing `weights.pt`,
a `pyproject.toml` registering it in `deepcod_testbed.plugins` with its package data), so
that a new plugin starts from something the testbed already runs. Never overwrites.

The files are the templates in `plugin_template/`, with `$name` and `$class_name` filled in.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path
from string import Template

from testbed.errors import ScenarioError, TestbedError

TEMPLATES = Path(__file__).parent / "plugin_template"
# file written (relative to the project folder, `{name}` the package) -> its template
FILES = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "{name}/__init__.py": "__init__.py.tmpl",
    "{name}/model.py": "model.py.tmpl",
    "{name}/data.py": "data.py.tmpl",
    "{name}/train.py": "train.py.tmpl",
}


def check_name(name: str) -> None:
    """A plugin's name is its package's and its entry point's: a new lowercase identifier."""
    from testbed.models import plugins

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ScenarioError(
            f"plugin name {name!r}: allowed: a lowercase Python identifier (my_model)"
        )
    if name in plugins.available():
        raise ScenarioError(f"plugin name {name!r} is taken by a registered plugin")


def write_skeleton(name: str, folder: Path) -> Path:
    """Write the project `folder/name/`; returns it. ScenarioError (exit 2) for a bad or
    taken name, or when the folder exists (nothing is written then)."""
    check_name(name)
    project = Path(folder) / name
    if project.exists():
        raise ScenarioError(f"{project}: exists; not overwritten (choose another --dir or name)")
    fill = {"name": name, "class_name": "".join(p.title() for p in name.split("_")) + "Plugin"}
    for target, template in FILES.items():
        path = project / target.format(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((TEMPLATES / template).read_text()).substitute(fill))
    return project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a model plugin package skeleton.")
    parser.add_argument("name", help="the plugin's name (its package and entry point)")
    parser.add_argument(
        "--dir", type=Path, default=Path("."), help="where to create NAME/ (default: here)"
    )
    args = parser.parse_args(argv)
    try:
        project = write_skeleton(args.name, args.dir)
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(
        f"wrote {project}; next: cd {project} && python -m {args.name}.train && "
        "pip install -e . (see its README.md)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
