"""Prints what an image installs from PyPI for the project: its base dependencies and the named extras, as
pyproject.toml declares them, one requirement a line. `--swap onnxruntime=onnxruntime-gpu` replaces one
distribution by another with the same version specifier (the CUDA build shares the import name, so the CPU
build must never be installed beside it). The versions come from the image's constraints file, not from here.

    python docker/requirements.py pyproject.toml serve signing --swap onnxruntime=onnxruntime-gpu
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: dict, extras: list[str], swaps: dict[str, str]) -> list[str]:
    project = pyproject["project"]
    declared = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in declared]
    if unknown:
        raise SystemExit(f"requirements.py: extras {unknown} are not declared in pyproject.toml ({sorted(declared)})")
    lines = list(project.get("dependencies", []))
    for extra in extras:
        lines += declared[extra]
    out, used = [], set()
    for line in lines:
        match = NAME.match(line)
        if match is None:
            raise SystemExit(f"requirements.py: cannot read the requirement {line!r}")
        name, rest = match.groups()
        key = canonical(name)
        if key in swaps:
            used.add(key)
            name = swaps[key]
        requirement = f"{name}{rest}"
        if requirement not in out:
            out.append(requirement)
    missing = sorted(set(swaps) - used)
    if missing:
        raise SystemExit(f"requirements.py: --swap names {missing}, which the project does not require")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--swap", action="append", default=[], metavar="OLD=NEW")
    args = parser.parse_args(argv)
    swaps = {}
    for swap in args.swap:
        old, sep, new = swap.partition("=")
        if not sep or not old or not new:
            parser.error(f"--swap {swap!r} is not OLD=NEW")
        swaps[canonical(old)] = new
    with open(args.pyproject, "rb") as handle:
        pyproject = tomllib.load(handle)
    print("\n".join(requirements(pyproject, args.extras, swaps)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
