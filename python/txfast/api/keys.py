"""API keys: create, list and revoke them (admin); ``GET /me``: the caller's own key."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody

from txfast.api.auth import requires
from txfast.api.context import Ctx
from txfast.api.errors import bad_request, error_responses
from txfast.api.schemas import KeyCreated, KeyIn
from txfast.exceptions import StoreError
from txfast.store import ApiKey

__all__ = ["KeysController", "MeController"]


class KeysController(Controller):
    """``/keys`` (admin only)."""

    path = "/keys"
    tags = ["keys"]
    guards = [requires("admin")]

    @post(
        "/",
        operation_id="createKey",
        summary="Create an API key",
        responses=error_responses(400, 401, 403, 503),
        sync_to_thread=True,
    )
    def create(
        self, ctx: Ctx, request: Request[ApiKey, Any, Any], data: JSONBody[KeyIn]
    ) -> KeyCreated:
        """A new key; its ``token`` is in this response only (the store keeps its SHA-256)."""
        store = ctx.require_store()
        name = data.name.strip()
        if not name or not name.isprintable():
            raise bad_request("name", "must be printable and not blank", source="body")
        if any(k.name == name and not k.revoked for k in store.list_api_keys()):
            raise bad_request("name", f"an active key is already named {name!r}", source="body")
        try:
            key_id, token = store.create_api_key(name, data.role, actor=request.user.name)
        except StoreError as e:
            if "already named" in str(e):  # created meanwhile by another request
                raise bad_request("name", str(e), source="body") from e
            raise
        key = store.lookup_api_key(token)
        assert key is not None and key.id == key_id
        return KeyCreated(id=key.id, name=key.name, role=key.role, prefix=key.prefix, token=token)

    @get(
        "/",
        operation_id="listKeys",
        summary="Every API key",
        responses=error_responses(401, 403, 503),
        sync_to_thread=True,
    )
    def list_keys(self, ctx: Ctx) -> list[ApiKey]:
        """Every key, revoked ones included (``revoked_at`` set), oldest first."""
        return ctx.require_store().list_api_keys()

    @delete(
        "/{key_id:int}",
        operation_id="revokeKey",
        summary="Revoke an API key",
        status_code=200,
        responses=error_responses(400, 401, 403, 404, 503),
        sync_to_thread=True,
    )
    def revoke(self, ctx: Ctx, request: Request[ApiKey, Any, Any], key_id: FromPath[int]) -> ApiKey:
        """Revoke a key at once (idempotent); its requests get 401 from now on."""
        key = ctx.require_store().revoke_api_key(key_id, actor=request.user.name)
        ctx.forget_keys()
        return key


class MeController(Controller):
    """``/me``: the key making the request (any role); the dashboard's sign-in check."""

    path = "/me"
    tags = ["keys"]
    guards = [requires("viewer")]

    @get(
        "/",
        operation_id="whoAmI",
        summary="The calling API key",
        responses=error_responses(401, 503),
        sync_to_thread=False,
    )
    def me(self, request: Request[ApiKey, Any, Any]) -> ApiKey:
        """The key of the ``Authorization`` header: id, name, role and prefix (no token)."""
        return request.user
