"""Request and response bodies of the API (msgspec Structs, from which OpenAPI is built).

The store's own result types (:class:`~txfast.store.Alert`, :class:`~txfast.store.AlertPage`,
:class:`~txfast.store.LabelRecord`, :class:`~txfast.store.ApiKey`…) are returned as they are;
the types here add what the API says beyond them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar.plugins import OpenAPISchemaPlugin

from txfast.registry import ChampionEvent
from txfast.store import Stats, TransactionDetail

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Schema
    from litestar.typing import FieldDefinition

__all__ = [
    "Action",
    "AlertDetail",
    "ClosedStructSchemaPlugin",
    "ErrorBody",
    "FeedbackIn",
    "FieldError",
    "Health",
    "KeyCreated",
    "KeyIn",
    "Label",
    "ModelInfo",
    "Models",
    "Promoted",
    "Readiness",
    "RiskLevel",
    "Role",
    "Sort",
    "StatsOut",
    "Status",
]

RiskLevel = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
Action = Literal["approve", "review", "alert", "block"]
Status = Literal["open", "confirmed_fraud", "false_positive"]
Sort = Literal["time", "score"]
Label = Literal["fraud", "legit"]
Role = Literal["viewer", "analyst", "admin"]


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid input.

    Attributes:
        field: The parameter or body field (``limit``, ``risk``, ``label``…); ``None`` when
            the error is about the whole body (e.g. malformed JSON).
        source: Where it was: ``query``, ``path``, ``body`` or ``header``.
        message: What is wrong with it.
    """

    field: str | None
    source: str | None
    message: str


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error response: the status, a message, and the invalid fields (400 only)."""

    status_code: int
    detail: str
    errors: list[FieldError] | None = None


class ClosedStructSchemaPlugin(OpenAPISchemaPlugin):
    """``additionalProperties: false`` in the OpenAPI schema of a Struct forbidding unknown fields.

    Litestar's schema of a Struct leaves ``additionalProperties`` out, which allows any other
    field, whereas the API refuses (400) a body with a field its Struct does not declare when
    the Struct says ``forbid_unknown_fields=True`` (:class:`FeedbackIn`, :class:`KeyIn`). The
    schema is made by the plugin that would make it otherwise (Litestar's own for Structs),
    then closed. Register it before Litestar's own (``Litestar(plugins=[...])`` does).
    """

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        """A Struct (not a union of them) that forbids unknown fields."""
        if field_definition.is_union or not field_definition.is_subclass_of(msgspec.Struct):
            return False
        return bool(field_definition.type_.__struct_config__.forbid_unknown_fields)

    def to_openapi_schema(
        self, field_definition: FieldDefinition, schema_creator: SchemaCreator
    ) -> Schema:
        """The Struct's schema, closed."""
        plugin = next(
            p
            for p in schema_creator.plugins
            if p is not self and schema_creator.plugin_supports_field(p, field_definition)
        )
        schema = plugin.to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


class FeedbackIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An analyst's label of a transaction: ``fraud``, or ``legit`` (a false positive)."""

    label: Label
    note: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class KeyIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new API key: who uses it and with which role."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    role: Role


class KeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A new API key with its token: shown once, never stored (only its SHA-256 is)."""

    id: int
    name: str
    role: str
    prefix: str
    token: str


class AlertDetail(TransactionDetail, frozen=True, kw_only=True):
    """Everything stored about a transaction; ``explanation`` is the stored JSON, parsed.

    ``explanation`` holds the top feature contributions the scorer recorded (a JSON document
    whose shape the explainer defines), ``null`` when none was recorded, or the stored text
    itself when it is not JSON.
    """

    explanation: Any = None

    @classmethod
    def of(cls, detail: TransactionDetail) -> AlertDetail:
        """The API view of a stored transaction."""
        fields = msgspec.structs.asdict(detail)
        raw = fields.pop("explanation")
        return cls(**fields, explanation=parse_explanation(raw))


def parse_explanation(raw: str | None) -> Any:
    """The stored explanation as JSON values (the text itself when it is not JSON)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


class StatsOut(Stats, frozen=True, kw_only=True):
    """Dashboard statistics (see :meth:`txfast.store.Store.stats`) and the scorer's runtime.

    Attributes:
        runtime: Throughput and latency of the scorer this API runs in (the ``runtime_stats``
            given to ``create_app``), ``null`` when the API runs alone.
    """

    runtime: dict[str, Any] | None = None


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One registered model version (its ``metadata.json``, summarised)."""

    version: str
    kind: str
    created_at: str
    feature_version: str
    features: int
    threshold: float
    training_rows: int
    metrics: dict[str, float]
    is_champion: bool


class Models(msgspec.Struct, frozen=True, kw_only=True):
    """The served model's registered versions, oldest first, and its champion history."""

    name: str
    champion: str | None
    versions: list[ModelInfo]
    history: list[ChampionEvent]


class Promoted(msgspec.Struct, frozen=True, kw_only=True):
    """The champion after a promotion, and the one before it."""

    name: str
    champion: str
    previous: str | None


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """Liveness: the process answers."""

    status: str = "ok"


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """Readiness: the store answers and the champion model loads.

    Attributes:
        ready: Both checks passed (the response is 503 otherwise).
        store: ``ok``, or why the store failed.
        model: The champion's version, or why it cannot be loaded.
    """

    ready: bool
    store: str
    model: str
