"""Packaging promises: the extras hold what the code imports, the commands' default output folders are ignored."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _extra(name: str) -> list[str]:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(rf"^{name} = \[(.*?)\]$", text, re.M)
    assert match, name
    return re.findall(r'"([A-Za-z0-9_.-]+)', match.group(1))


def _imported_by_the_package(module: str) -> bool:
    pattern = re.compile(rf"^\s*(import|from) {module}\b", re.M)
    return any(pattern.search(p.read_text()) for p in (REPO / "src").rglob("*.py"))


def test_the_tasks_extra_pulls_no_package_the_code_does_not_import():
    for package in _extra("tasks"):
        module = {"tensorboard": "torch.utils.tensorboard"}.get(package, package)
        assert _imported_by_the_package(module), f"[tasks] installs {package}, which no module imports"


def test_default_output_folders_are_ignored():
    from unicornn.cli import build_parser

    ignored = set((REPO / ".gitignore").read_text().split())
    defaults = set()
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():  # every command and sub-command
        stack = [action]
        while stack:
            p = stack.pop()
            for a in p._actions:
                if a.dest == "out" and a.default:
                    defaults.add(a.default)
                if getattr(a, "choices", None) and isinstance(a.choices, dict):
                    stack.extend(a.choices.values())
    defaults.add("sweeps")  # sweep's default ./sweeps/TASK
    assert defaults == {"runs", "claims", "sweeps"}
    assert {f"{d}/" for d in defaults} <= ignored
