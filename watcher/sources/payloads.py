"""The webhook's two body formats as pydantic models: what is validated, and what OpenAPI shows.

A body is checked against these before any path in it is looked at; the models say nothing about
paths beyond "a string", since whether a path is acceptable depends on the roots
(:class:`imgwatch.sources.webhook.AllowedPaths`). Unknown extra keys are allowed: senders add their
own (timestamps, ids), as S3 does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MAX_EVENTS = 10_000
GENERIC_TYPES = ("created", "modified", "deleted", "moved")

_PATH = Field(description="An absolute path inside a watched root or an S3 mount directory.")


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str = _PATH


class CreatedEvent(_Event):
    """A file or directory appeared (or was written completely)."""

    type: Literal["created"]


class ModifiedEvent(_Event):
    """A file's content changed."""

    type: Literal["modified"]


class DeletedEvent(_Event):
    """A file or directory is gone (an image name is a file, anything else a directory)."""

    type: Literal["deleted"]


class MovedEvent(_Event):
    """A file or directory was renamed or moved from ``path`` to ``dest_path``."""

    type: Literal["moved"]
    dest_path: str = Field(description="Where it is now (absolute, inside a root or mount).")


GenericEvent = Annotated[
    CreatedEvent | ModifiedEvent | DeletedEvent | MovedEvent, Field(discriminator="type")
]


class GenericBody(BaseModel):
    """The generic format: a list of filesystem-like events."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"type": "created", "path": "/srv/photos/inbox/beach.jpg"},
                        {"type": "moved", "path": "/srv/photos/a.jpg", "dest_path": "/srv/photos/2024/a.jpg"},
                    ]
                }
            ]
        },
    )

    events: list[GenericEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class S3Bucket(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(description="The bucket, mapped to a directory by the `s3_mounts` setting.")


class S3Object(BaseModel):
    model_config = ConfigDict(extra="allow")
    key: str = Field(description="The object key, URL-encoded as S3 sends it (spaces as '+').")


class S3Entity(BaseModel):
    model_config = ConfigDict(extra="allow")
    bucket: S3Bucket
    object: S3Object


class S3Record(BaseModel):
    """One S3 event notification record, as AWS S3 and MinIO send it."""

    model_config = ConfigDict(extra="allow")

    eventName: str = Field(  # noqa: N815 - S3's own field name
        description="s3:ObjectCreated:* or s3:ObjectRemoved:*; other events are refused.",
        examples=["s3:ObjectCreated:Put"],
    )
    s3: S3Entity


class S3Body(BaseModel):
    """S3/MinIO event notifications."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "Records": [
                        {
                            "eventName": "s3:ObjectCreated:Put",
                            "s3": {"bucket": {"name": "camera-roll"}, "object": {"key": "2024/cat.jpg"}},
                        }
                    ]
                }
            ]
        },
    )

    Records: list[S3Record] = Field(min_length=1, max_length=MAX_EVENTS)


WebhookBody = GenericBody | S3Body
_GENERIC = TypeAdapter(GenericBody)
_S3 = TypeAdapter(S3Body)


class PayloadError(ValueError):
    """The body does not fit its format; the message says where, for a person."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(message)


def validate_payload(payload: dict[str, Any]) -> GenericBody | S3Body:
    """``payload`` (parsed JSON) as the format its top-level key names; :class:`PayloadError` if it
    does not fit, with a message that names the event and the field."""
    generic = "events" in payload
    try:
        return _GENERIC.validate_python(payload) if generic else _S3.validate_python(payload)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False, include_context=True)
        raise PayloadError(_describe(errors[0], generic), [_plain(error) for error in errors]) from None


def _describe(error: Any, generic: bool) -> str:
    loc, kind = tuple(error["loc"]), error["type"]
    if len(loc) == 1:
        if kind == "too_long":
            return f"at most {MAX_EVENTS} events per request"
        return "the event list must be a non-empty JSON array"
    what = f"{'event' if generic else 'record'} {loc[1]}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        where = ".".join(str(part) for part in loc[3 if generic else 2 :])
        return f"{what}: {where or 'it'} must be a JSON object"
    if generic and kind == "union_tag_invalid":
        return f"{what}: unknown type {error['ctx']['tag']!r}; expected one of {', '.join(GENERIC_TYPES)}"
    if generic and kind == "union_tag_not_found":
        return f"{what}: type is missing; expected one of {', '.join(GENERIC_TYPES)}"
    field = ".".join(str(part) for part in loc[3 if generic else 2 :])
    if not generic and field.startswith("s3"):
        return f"{what}: s3.bucket.name and s3.object.key are required strings ({field}: {error['msg']})"
    return f"{what}: {field}: {error['msg']}"


def _plain(error: Any) -> dict[str, Any]:
    return {"loc": list(error["loc"]), "msg": str(error["msg"]), "type": str(error["type"])}
