"""Validates YAML files against kaname's JSON Schema (draft 2020-12).

Usage: python3 schema_validate.py SCHEMA FILE...

The schema is checked against the draft 2020-12 meta-schema first, then
each file with jsonschema's Draft202012Validator. YAML is read as YAML 1.2's
core schema reads it, as kaname and yaml-language-server do: only
true/false are booleans (`on`, `off`, `yes` are strings), no timestamps.

Prints `ok FILE` or, for each error, `invalid FILE: /json/pointer: message`.
Exits 0 when every file is valid, 1 when one is not, 2 when the tools are
missing or the schema itself is not a valid schema.
"""

import json
import re
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:
    print(
        f"schema_validate.py: Python module {e.name!r} is missing; install it with "
        "python3 -m pip install 'jsonschema==4.26.0' 'PyYAML==6.0.3' (.ci/run does)",
        file=sys.stderr,
    )
    sys.exit(2)


class Core12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core schema resolution."""


Core12Loader.yaml_implicit_resolvers = {}
for tag, pattern, first in [
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
    ("merge", r"^<<$", ["<"]),
]:
    Core12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), first)


def pointer(path):
    return "/" + "/".join(str(p) for p in path)


def describe(error):
    """The error's message, with the closest branch's for a oneOf/anyOf."""
    message = error.message
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        message += f" ({pointer(best.absolute_path)}: {best.message})"
    return message


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        print(f"schema_validate.py: {argv[1]} is not a valid draft 2020-12 schema: {e.message}", file=sys.stderr)
        return 2
    validator = jsonschema.Draft202012Validator(schema)
    status = 0
    for path in argv[2:]:
        try:
            with open(path, encoding="utf-8") as f:
                doc = yaml.load(f, Loader=Core12Loader)
        except yaml.YAMLError as e:
            status = 1
            print(f"invalid {path}: not YAML: {' '.join(str(e).split())}")
            continue
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        if not errors:
            print(f"ok {path}")
        for error in errors:
            status = 1
            print(f"invalid {path}: {pointer(error.absolute_path)}: {describe(error)}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
