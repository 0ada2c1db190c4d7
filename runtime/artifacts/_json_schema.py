"""Checking parsed JSON against a schema: a type (or tuple of types, ``type(None)`` for null),
a dict of field schemas (every listed field required, others allowed) or a one-item list (the
schema of every item). What a manifest, a checkpoint header and a program entry are checked
with; each failure is one ``ArtifactError`` line naming the field.

>>> check_schema({"n": 1, "names": ["a"]}, {"n": int, "names": [str]}, "")
>>> check_schema({"n": True}, {"n": int}, "layout")
Traceback (most recent call last):
...
luxc.runtime.files._errors.ArtifactError: manifest field layout.n must be int; found bool
"""

from __future__ import annotations

from typing import Any

from luxc.runtime.files._errors import ArtifactError


def _type_names(t: Any) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in types)


def check_schema(value: Any, schema: Any, where: str) -> None:
    """Raise one ``ArtifactError`` line naming the first field of ``value`` (parsed JSON) that
    ``schema`` does not describe: ``where`` is the path of ``value`` in the manifest (``""``
    for the whole). ``bool`` is never taken for ``int``."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ArtifactError(f"manifest field {where or '(top)'} must be an object; found "
                                f"{type(value).__name__}")
        for key, sub in schema.items():
            name = f"{where}.{key}" if where else key
            if key not in value:
                raise ArtifactError(f"manifest field {name} is missing")
            check_schema(value[key], sub, name)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise ArtifactError(f"manifest field {where} must be a list; found "
                                f"{type(value).__name__}")
        for i, item in enumerate(value):
            check_schema(item, schema[0], f"{where}[{i}]")
    else:
        bad_bool = isinstance(value, bool) and bool not in (schema if isinstance(schema, tuple)
                                                            else (schema,))
        if bad_bool or not isinstance(value, schema):
            raise ArtifactError(f"manifest field {where} must be {_type_names(schema)}; found "
                                f"{type(value).__name__}")
