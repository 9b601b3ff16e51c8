#!/usr/bin/env python3
"""The OpenAPI documents as the services serve them: docs/openapi/*.yaml (edited by hand) as
JSON beside them (docs/openapi/*.json, embedded in the gateway's and the proxy's binaries and
served at /openapi.json). Every operation must have an operationId (generated clients name
their methods after them).

  scripts/openapi.py          write the JSON files
  scripts/openapi.py --check  fail if a JSON file is not what its YAML says (the test command)
"""
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
check = "--check" in sys.argv[1:]
problems = []
for src in sorted((ROOT / "docs" / "openapi").glob("*.yaml")):
    doc = yaml.safe_load(src.read_text())
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options") and not op.get("operationId"):
                problems.append(f"{src.name}: {method.upper()} {path} has no operationId")
    ids = [op.get("operationId") for item in doc.get("paths", {}).values() for op in item.values() if isinstance(op, dict)]
    ids = [i for i in ids if i]
    if len(ids) != len(set(ids)):
        problems.append(f"{src.name}: operationIds repeat")
    out = src.with_suffix(".json")
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    if check:
        if not out.exists() or out.read_text() != text:
            problems.append(f"{out.relative_to(ROOT)} is not what {src.name} says: run scripts/openapi.py")
    else:
        out.write_text(text)
if problems:
    print("openapi:", *problems, sep="\n  - ")
    sys.exit(1)
print("openapi: the served documents match docs/openapi/*.yaml" if check else "openapi: written")
