"""Reading what the package writes as a strict JSON parser does (shared by the tests)."""
import json


def strict_loads(text: str):
    """``json.loads`` as a strict parser reads: NaN / Infinity are errors."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def strict_load(path):
    """:func:`strict_loads` of a file."""
    with open(path) as f:
        return strict_loads(f.read())


def all_keys(obj):
    """Every mapping key in a JSON value, at any depth."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from all_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from all_keys(v)
