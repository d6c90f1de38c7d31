"""Hypothesis strategies for HTTP requests, made from the server's own OpenAPI document
(runtime/server_schema.py): bodies valid by the schema, then broken on purpose (a field of the
wrong type, a required field dropped, an unknown field, any JSON at all, bytes that are not
JSON). Text mixes ordinary characters with control characters, lone surrogates (as JSON
escapes) and long runs without spaces. Used by tests/test_api_fuzz.py (a bounded number of
cases in CI) and benchmarks/reliability.py (2,000 requests)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

WIDE = 2**70  # integers beyond int64 where the schema leaves a side open

CHARS = st.one_of(st.characters(), st.characters(max_codepoint=0x1F),  # control characters
                  st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # lone surrogates
                  st.sampled_from("ab \n\t<|>"))
TEXT = st.one_of(st.text(CHARS, max_size=40), st.builds(lambda c, n: c * n, st.sampled_from("ax\u00e9\u4e2d"),
                                                        st.integers(100, 3000)))  # one long "word"


def any_json(depth: int = 2) -> st.SearchStrategy:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-WIDE, WIDE), st.floats(allow_nan=False), TEXT)
    if depth <= 0:
        return leaves
    inner = any_json(depth - 1)
    return st.one_of(leaves, st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4))


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy:
    """Values valid by `schema` (the subset pydantic writes: $ref, anyOf, enum/const, the JSON
    types with bounds, objects with required / optional properties)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(components[name], components))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of(*(from_schema(s, components) for s in schema.get("anyOf", schema.get("oneOf"))))
    kind = schema.get("type")
    if kind is None:
        return any_json(1)
    if kind == "string":
        return TEXT
    if kind == "integer":
        low, high = schema.get("minimum", -WIDE), schema.get("maximum", WIDE)
        return st.one_of(st.integers(low, min(high, max(low, 0) + 100)), st.integers(low, high))
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum"),
                         exclude_min="exclusiveMinimum" in schema, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), components), max_size=4)
    if kind == "object":
        props = schema.get("properties", {})
        if not props:
            extra = schema.get("additionalProperties", {})
            values = from_schema(extra, components) if isinstance(extra, dict) else any_json(1)
            return st.dictionaries(st.one_of(TEXT, st.integers(-10, 60000).map(str)), values, max_size=3)
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries({k: from_schema(v, components) for k, v in props.items() if k in required},
                                     optional={k: from_schema(v, components) for k, v in props.items()
                                               if k not in required})
    raise ValueError(f"schema type {kind!r} is not covered")


def broken(valid: st.SearchStrategy, schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy:
    """`valid` bodies with one thing wrong."""
    props = list(schema.get("properties", {}))

    def retype(body: dict, key: str, value: Any) -> dict:
        return {**body, key: value}

    def drop(body: dict, key: str) -> dict:
        return {k: v for k, v in body.items() if k != key}

    return st.one_of(
        st.builds(retype, valid, st.sampled_from(props), any_json(1)),  # a field of any type
        st.builds(drop, valid, st.sampled_from(sorted(schema.get("required", props)))),
        st.builds(retype, valid, TEXT.filter(lambda k: k not in props), any_json(0)),  # an unknown field
    )


# fields whose schema admits much that the server refuses (an empty conversation, content parts
# the chat template does not take, best_of other than n): half of the valid bodies use these instead, so that many
# requests get as far as generating
TYPICAL = {"/v1/chat/completions": {"messages": st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}), min_size=1, max_size=3),
    "max_tokens": st.integers(1, 8)},
    "/v1/completions": {"prompt": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3)), "best_of": st.none(),
                        "max_tokens": st.integers(1, 8)}}


def request_bodies(openapi: dict[str, Any], path: str, model: str = "tiny") -> st.SearchStrategy[bytes]:
    """Request bodies for POST `path` as bytes: mostly schema-valid (with `model` the served
    one), some broken, some not JSON at all."""
    components = openapi["components"]["schemas"]
    ref = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = components[ref["$ref"].rsplit("/", 1)[-1]]
    typical = TYPICAL.get(path, {})
    valid = st.one_of(from_schema(schema, components),
                      st.tuples(from_schema(schema, components), st.fixed_dictionaries(typical)).map(
                          lambda pair: {**pair[0], **pair[1]}))
    valid = valid.map(lambda b: {**b, "model": model})  # broken() tries other models
    as_json = st.one_of(valid, valid, valid, broken(valid, schema, components), any_json(2))
    return st.one_of(as_json.map(lambda b: json.dumps(b).encode()), st.binary(max_size=64))
