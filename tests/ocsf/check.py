#!/usr/bin/env python3
"""Validates Warden's OCSF export against the published OCSF 1.8.0 schema.

The schema is the one served at https://schema.ocsf.io/1.8.0/export/v2/schema, as packaged
on PyPI by `ocsf-json-schema` (which also turns a class plus profiles into a JSON Schema).
Beyond the JSON Schema (types, enums, required attributes, no unknown attributes), it checks
the schema's object constraints (`at_least_one`, `just_one`) and the uid arithmetic.

    python3 -m venv .venv && .venv/bin/pip install ocsf-json-schema==1.2.0 jsonschema
    .venv/bin/python tests/ocsf/check.py [EVENTS.jsonl ...]

With no file it checks the golden export of crates/core/tests/fixtures/ocsf-events.jsonl.
Exit 0 when every event is valid, 1 otherwise.
"""
import json
import pathlib
import sys

import jsonschema
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

VERSION = "1.8.0"
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "crates/core/tests/fixtures/ocsf-events.jsonl"


def constraint_problems(raw, attrs, value, path):
    """Walks `value` with the schema's attribute table, checking object constraints."""
    problems = []
    for name, v in value.items():
        spec = attrs.get(name)
        if spec is None or "object_type" not in spec:
            continue
        obj = raw["objects"].get(spec["object_type"])
        if obj is None or spec["object_type"] == "object":
            continue
        items = v if isinstance(v, list) else [v]
        for i, item in enumerate(items):
            where = f"{path}.{name}" + (f"[{i}]" if isinstance(v, list) else "")
            if not isinstance(item, dict):
                continue
            cons = obj.get("constraints", {})
            if "at_least_one" in cons and not any(k in item for k in cons["at_least_one"]):
                problems.append(f"{where}: needs at least one of {cons['at_least_one']}")
            if "just_one" in cons and sum(k in item for k in cons["just_one"]) != 1:
                problems.append(f"{where}: needs exactly one of {cons['just_one']}")
            problems += constraint_problems(raw, obj["attributes"], item, where)
    return problems


def main(paths):
    raw = get_ocsf_schema(version=VERSION)
    if raw.get("version") != VERSION:
        sys.exit(f"the packaged schema is {raw.get('version')}, not {VERSION}")
    schema = OcsfJsonSchemaEmbedded(raw)
    by_uid = {c["uid"]: name for name, c in raw["classes"].items()}
    validators = {}
    count = 0
    bad = 0
    for path in paths:
        for lineno, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            count += 1
            ev = json.loads(line)
            where = f"{path}:{lineno}"
            cls = by_uid.get(ev.get("class_uid"))
            if cls is None:
                print(f"{where}: unknown class_uid {ev.get('class_uid')}")
                bad += 1
                continue
            profiles = tuple(sorted(ev.get("metadata", {}).get("profiles", [])))
            key = (cls, profiles)
            if key not in validators:
                s = schema.get_class_schema(cls, list(profiles))
                validators[key] = jsonschema.Draft202012Validator(s)
            problems = [f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
                        for e in validators[key].iter_errors(ev)]
            problems += constraint_problems(raw, raw["classes"][cls]["attributes"], ev, "")
            if ev.get("type_uid") != ev.get("class_uid", 0) * 100 + ev.get("activity_id", -1):
                problems.append("type_uid is not class_uid * 100 + activity_id")
            if ev.get("category_uid") != raw["classes"][cls]["category_uid"]:
                problems.append("category_uid does not match the class")
            if ev.get("metadata", {}).get("version") != VERSION:
                problems.append(f"metadata.version is not {VERSION}")
            for p in problems:
                print(f"{where} ({cls}): {p}")
            bad += bool(problems)
    print(f"{count} events checked against OCSF {VERSION}: {count - bad} valid, {bad} invalid")
    return 0 if bad == 0 and count > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or [str(DEFAULT)]))
