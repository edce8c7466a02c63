"""API keys: ``Authorization: Bearer <token>`` authenticates, roles authorise.

The authentication middleware looks the token up in the store (its SHA-256, compared in
constant time; see :meth:`txfast.store.Store.lookup_api_key`) and sets ``request.user`` to
the :class:`~txfast.store.ApiKey`; a missing, unknown or revoked key is a 401. Route guards
(:func:`requires`) then check the key's role: a viewer reads, an analyst also labels, an
admin also promotes models and manages keys; a lower role is a 403.

Routes marked ``opt={"exclude_from_auth": True}`` (health, readiness, metrics, the dashboard
and its files) and the OpenAPI schema need no key. The schema says so: its top-level security
requirement is the bearer key, and the open operations in it override it with ``security: []``
(``operation_class=OpenOperation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.openapi.spec import Operation

from txfast.store import ApiKey
from txfast.store.base import ROLES

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.handlers import BaseRouteHandler

    from txfast.api.context import ApiContext

__all__ = ["EXCLUDE_FROM_AUTH", "ApiKeyAuth", "OpenOperation", "requires"]

EXCLUDE_FROM_AUTH = {"exclude_from_auth": True}
"""Route ``opt`` of the routes that need no key (give those in the schema
``operation_class=OpenOperation``)."""


@dataclass
class OpenOperation(Operation):
    """The OpenAPI operation of a route that needs no key: ``security: []``.

    An empty list overrides the document's top-level requirement (the bearer key); Litestar's
    route ``security`` cannot say it (it leaves an empty list out).
    """

    def __post_init__(self) -> None:
        if self.security is None:
            self.security = []


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="txfast"'}

_RANK = {role: i for i, role in enumerate(ROLES)}


class ApiKeyAuth(AbstractAuthenticationMiddleware):
    """Authenticates ``Authorization: Bearer <token>`` against the store's API keys."""

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        """The key of the request's bearer token.

        Raises:
            NotAuthorizedException: Without a bearer token, or for an unknown or revoked one.
        """
        header = connection.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if not header:
            raise NotAuthorizedException(
                "missing API key: send the header 'Authorization: Bearer <token>'",
                headers=_CHALLENGE,
            )
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException(
                "malformed Authorization header: use 'Bearer <token>'", headers=_CHALLENGE
            )
        ctx: ApiContext = connection.app.state["ctx"]
        key = ctx.cached_key(token)
        if key is not None:  # looked up a moment ago: no store read, no thread hop
            return AuthenticationResult(user=key, auth=None)
        store = ctx.require_store()
        key = await anyio.to_thread.run_sync(store.lookup_api_key, token)
        if key is not None:
            ctx.remember_key(token, key)
        if key is None:
            raise NotAuthorizedException("invalid API key", headers=_CHALLENGE)
        if key.revoked:
            raise NotAuthorizedException("revoked API key", headers=_CHALLENGE)
        return AuthenticationResult(user=key, auth=None)


def requires(role: str) -> Any:
    """A route guard letting through keys of ``role`` or a higher one.

    Args:
        role: ``viewer``, ``analyst`` or ``admin``.
    """
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}")
    needed = _RANK[role]

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        # Not ``connection.user``: it raises (a 500) where the middleware set no user, e.g.
        # for the OPTIONS requests authentication lets through.
        key = connection.scope.get("user")
        if not isinstance(key, ApiKey):  # a route or method excluded from authentication
            raise NotAuthorizedException("missing API key", headers=_CHALLENGE)
        if _RANK.get(key.role, -1) < needed:
            raise PermissionDeniedException(
                f"this needs the {role} role; key {key.name!r} has the {key.role} role"
            )

    guard.__name__ = f"requires_{role}"
    return guard
