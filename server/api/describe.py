"""Pieces of the OpenAPI description: an operation, a JSON body, query parameters, the
error shape. server/api/openapi.py puts the document together; a route module may describe
its own paths with these (an `openapi_paths()` function, listed in openapi.py's DESCRIBED)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    status: int
    message: str
    field: str | None = None
    details: list[dict[str, str]] | None = None


class Error(BaseModel):
    """Every error response: `{"error": {...}}`."""

    error: ErrorBody


ERRORS = {
    401: "missing or invalid token",
    403: "the token does not allow this",
    404: "no such document, folder or file",
    409: "conflicts with the current state",
    413: "the body is too large",
    422: "invalid input; `field` names the first problem",
    429: "too many failed sign-ins for this account or address, or too many documents and "
    "folders created this minute; try after Retry-After seconds",
    503: "the database is unavailable (Retry-After): nothing was changed, or the message says "
    "the change was applied to the live document and queued but is not stored yet",
}

# The usual error responses of an operation on one existing thing: READ_ERRORS for reading or
# deleting it, WRITE_ERRORS for changing it with a body.
READ_ERRORS: tuple[int, ...] = (401, 403, 404)
WRITE_ERRORS: tuple[int, ...] = (401, 403, 404, 409, 413, 422)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": ref(model)}}


def _parameter_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: an absent parameter is its null, so drop the null branch."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
    options = [o for o in schema.pop("anyOf", []) if o != {"type": "null"}]
    if len(options) == 1:
        schema.update(options[0])
    elif options:
        schema["anyOf"] = options
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def query(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _parameter_schema(prop),
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


def operation(
    summary: str,
    *,
    ok: tuple[int, str, dict[str, Any] | None],
    body: dict[str, Any] | None = None,
    query: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (401, 403),
    tag: str,
) -> dict[str, Any]:
    status, description, content = ok
    responses: dict[str, Any] = {str(status): {"description": description}}
    if content is not None:
        responses[str(status)]["content"] = content
    for code in (*errors, 503):  # any request may find the database unavailable
        responses[str(code)] = {"description": ERRORS[code], "content": json_body(Error)}
    operation: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if query:
        operation["parameters"] = query
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation
