"""Models: the registry's versions of the served model, and promoting one (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.exceptions import HTTPException
from litestar.params import PathParameter

from txfast.api.auth import requires
from txfast.api.context import Ctx
from txfast.api.errors import error_responses
from txfast.api.schemas import ModelInfo, Models, Promoted
from txfast.exceptions import NotFoundError, RegistryError
from txfast.registry import ModelVersion
from txfast.store import ApiKey

__all__ = ["ModelsController"]

VERSION_PATTERN = r"^v[1-9][0-9]{0,8}$"
"""A model version in a path: ``v1``, ``v2``… (the registry's directory names)."""


def _info(v: ModelVersion, champion: str | None) -> ModelInfo:
    m = v.metadata
    return ModelInfo(
        version=v.version,
        kind=m.kind,
        created_at=m.created_at,
        feature_version=m.feature_version,
        features=len(m.feature_names),
        threshold=m.threshold,
        training_rows=m.training.rows,
        metrics=dict(m.metrics),
        is_champion=v.version == champion,
    )


class ModelsController(Controller):
    """``/models``: the served model's versions and champion."""

    path = "/models"
    tags = ["models"]
    guards = [requires("viewer")]

    @get(
        "/",
        operation_id="listModels",
        summary="Registered versions and the champion",
        responses=error_responses(401, 503),
        sync_to_thread=True,
    )
    def list_models(self, ctx: Ctx) -> Models:
        """The versions of the served model (``model_name``), oldest first."""
        name, registry = ctx.settings.model_name, ctx.registry
        if name not in registry.names():
            return Models(name=name, champion=None, versions=[], history=[])
        champion = registry.champion_version(name)
        return Models(
            name=name,
            champion=champion,
            versions=[_info(v, champion) for v in registry.versions(name)],
            history=registry.history(name),
        )

    @post(
        "/{version:str}/promote",
        operation_id="promoteModel",
        summary="Make a version the champion (admin)",
        guards=[requires("admin")],
        status_code=200,
        responses=error_responses(400, 401, 403, 404, 409, 503),
        sync_to_thread=True,
    )
    def promote(
        self,
        ctx: Ctx,
        request: Request[ApiKey, Any, Any],
        version: Annotated[
            str, PathParameter(pattern=VERSION_PATTERN, description="v1, v2… (a 400 otherwise).")
        ],
    ) -> Promoted:
        """Point the champion at ``version``; a scorer reloads it without a restart."""
        # ``version`` matched VERSION_PATTERN before this runs (a 400 otherwise), so it is a
        # plain directory name in the registry, never a path.
        name, registry = ctx.settings.model_name, ctx.registry
        if name not in registry.names() or not (registry.root / name / version).is_dir():
            raise NotFoundError(f"no version {version!r} of model {name!r}")
        store = ctx.require_store()
        previous = registry.champion_version(name)
        try:
            registry.promote(name, version)
        except RegistryError as e:
            raise HTTPException(status_code=409, detail=f"cannot promote {version}: {e}") from e
        store.audit(
            request.user.name,
            "model.promote",
            f"model:{name}/{version}",
            {"name": name, "version": version, "previous": previous, "key_id": request.user.id},
        )
        return Promoted(name=name, champion=version, previous=previous)
