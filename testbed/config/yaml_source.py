"""YAML files read with the line of every key path, so that a problem found later by
the schema can name `file:line`.

`read_yaml_documents` gives each `---` document's data and its key lines (`network.uplink`
-> 3); `located` turns a `validation.Invalid` into the one- or two-line message of a
`ScenarioError`. The loader is YAML's SafeLoader (no Python tags) that also refuses a
key given twice in one mapping.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from testbed.config.validation import Invalid, join
from testbed.errors import ScenarioError, reading


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and records each key path's line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.lines: dict[str, int] = {}

    def construct_document(self, node: yaml.Node) -> Any:
        self._walk(node, "", set())
        return super().construct_document(node)

    def _walk(self, node: yaml.Node, at: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already walked
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    self._walk(value, at, seen)
                    continue
                text = key.value if isinstance(key, yaml.ScalarNode) else "?"
                here, line = join(at, text), key.start_mark.line + 1
                ident = (key.tag, str(key.value))
                if ident in first:
                    self.lines[here] = line
                    raise Invalid(
                        here,
                        f"duplicate key (first at line {first[ident]}); "
                        "allowed: each key once in a mapping",
                    )
                first[ident] = line
                self.lines.setdefault(here, line)
                self._walk(value, here, seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                here = f"{at}[{i}]"
                self.lines.setdefault(here, item.start_mark.line + 1)
                self._walk(item, here, seen)


def line_of(at: str, lines: dict[str, int]) -> int | None:
    """The line of key path `at`, or of its nearest ancestor that has one."""
    while at:
        if at in lines:
            return lines[at]
        parent = re.sub(r"(\.[^.\[\]]*|\[\d+\])$", "", at)
        if parent == at:
            return None
        at = parent
    return None


def located(source: Path, err: Invalid, lines: dict[str, int]) -> str:
    """`file:line: key.path: problem`, and the hint on a second line."""
    line = line_of(err.at, lines)
    where = f"{source}:{line}" if line else f"{source}"
    return f"{where}: {err.at}: {err.problem}" + (f"\n  {err.hint}" if err.hint else "")


def read_yaml(path: str | Path) -> tuple[Any, dict[str, int]]:
    """The file's data and the line of each key path, or ScenarioError for a file that
    cannot be read or is not YAML (checked before any schema)."""
    documents = read_yaml_documents(path)
    if len(documents) > 1:
        raise ScenarioError(
            f"{path}: {len(documents)} YAML documents (`---`); allowed here: one scenario "
            "(run_scenario.py runs files of several)"
        )
    return documents[0]


def read_yaml_documents(path: str | Path) -> list[tuple[Any, dict[str, int]]]:
    """Each `---` document's data and key lines (a file may hold several scenarios)."""
    source = Path(path)
    with reading(source, "scenario file"):
        raw = source.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(
            f"{source}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start});"
            " save the scenario as UTF-8"
        ) from None
    loader = _Loader(text)
    documents = []
    try:
        while loader.check_data():
            documents.append((loader.get_data(), loader.lines))
            loader.lines = {}  # key paths restart in the next document
    except Invalid as err:
        raise ScenarioError(located(source, err, loader.lines)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}"
        words = [w for w in (exc.context, exc.problem) if w] or ["unreadable"]
        problem = " ".join("; ".join(str(w) for w in words).split())
        raise ScenarioError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not documents or all(data is None for data, _ in documents):
        raise ScenarioError(
            f"{source}: the file is empty; a scenario needs at least `model:` and `network:`"
        )
    for i, (data, _) in enumerate(documents):
        if data is None:
            raise ScenarioError(f"{source}: document {i + 1} (after a `---`) is empty")
    return documents
