"""``txfast serve`` and ``txfast keys``: click commands registered on the main group.

They do not import :mod:`txfast.cli` (which registers them): the settings are loaded the same
way here, and a :class:`~txfast.exceptions.TxfastError` becomes a one-line error.
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import click

from txfast.config import Settings, load_settings
from txfast.exceptions import TxfastError

__all__ = ["keys", "serve"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

_store_option = click.option(
    "--store", default=None, help="Store URL [default: duckdb:var/txfast.duckdb]."
)
_config_option = click.option(
    "--config", type=click.Path(exists=True, dir_okay=False), help="Settings TOML."
)


def _settings(config: str | None, **overrides: Any) -> Settings:
    return load_settings(config, overrides=overrides)


def _actor() -> str:
    """Who runs a key command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


class _Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TxfastError as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from e


class _Group(click.Group):
    command_class = _Command


@click.command(cls=_Command, context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@_store_option
@click.option("--registry", default=None, help="Model registry [default: var/registry].")
@click.option("--name", default=None, help="Model name in the registry [default: default].")
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="An origin allowed to call the API from a browser (repeatable; '*' for any).",
)
@_config_option
def serve(
    host: str,
    port: int,
    store: str | None,
    registry: str | None,
    name: str | None,
    cors_origins: tuple[str, ...],
    config: str | None,
) -> None:
    """Serve the alerts API (without a scorer) until interrupted.

    Every endpoint but /health, /ready, /metrics and /schema needs an API key
    (`txfast keys create`). On DuckDB the scorer and the API must share one process
    (`txfast run … --api`); against PostgreSQL any number of API processes can serve.

    \b
    Examples:
      txfast serve --store duckdb:var/txfast.duckdb --registry var/registry
      txfast serve --host 0.0.0.0 --port 8080 --store postgresql://txfast@db/txfast
      txfast serve --cors-origin https://dashboard.example.com
    """
    import uvicorn

    from txfast.api.app import create_app

    settings = _settings(config, store=store, registry=registry, model_name=name)
    app = create_app(settings, cors_origins=list(cors_origins) or None)
    click.echo(f"serving the alerts API on http://{host}:{port} (OpenAPI: /schema)", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        lifespan="on",
        ws="none",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )


@click.group(cls=_Group, context_settings=CONTEXT)
def keys() -> None:
    """Manage the API keys.

    Roles: a viewer reads, an analyst also labels, an admin also promotes models and manages
    keys.
    """


@keys.command("create")
@click.option(
    "--role",
    required=True,
    type=click.Choice(["viewer", "analyst", "admin"]),
    help="What the key may do.",
)
@click.option("--name", required=True, help="Who or what uses it (the audit log's actor).")
@_store_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
def keys_create(role: str, name: str, store: str | None, config: str | None, as_json: bool) -> None:
    """Create an API key and print its token, once: only its SHA-256 is stored.

    \b
    Examples:
      txfast keys create --role admin --name ops
      txfast keys create --role analyst --name alice --store postgresql://txfast@db/txfast
    """
    from txfast.store import open_store

    settings = _settings(config, store=store)
    with open_store(settings.store, migrate=settings.store_migrate) as s:
        key_id, token = s.create_api_key(name, role, actor=_actor())
    if as_json:
        click.echo(json.dumps({"id": key_id, "name": name.strip(), "role": role, "token": token}))
        return
    click.echo(f"created API key {key_id} ({role}) for {name.strip()!r}; its token, shown once:")
    click.echo(token)
    click.echo("use it as: Authorization: Bearer <token>", err=True)


@keys.command("list")
@_store_option
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def keys_list(store: str | None, config: str | None, as_json: bool) -> None:
    """List the API keys (tokens are never shown again; the prefix identifies one)."""
    import msgspec

    from txfast.store import open_store

    settings = _settings(config, store=store)
    with open_store(settings.store, migrate=settings.store_migrate) as s:
        rows = s.list_api_keys()
    if as_json:
        for k in rows:
            click.echo(msgspec.json.encode(k).decode())
        return
    if not rows:
        click.echo("no API keys; create one with: txfast keys create --role admin --name NAME")
        return
    click.echo(f"{'id':>4}  {'role':<8} {'prefix':<12} {'created (UTC)':<17} {'state':<24} name")
    for k in rows:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        click.echo(
            f"{k.id:>4}  {k.role:<8} {k.prefix + '…':<12} {k.created_at:%Y-%m-%d %H:%M} "
            f"{state:<24} {k.name}"
        )


@keys.command("revoke")
@click.argument("key_id", type=click.IntRange(1))
@_store_option
@_config_option
def keys_revoke(key_id: int, store: str | None, config: str | None) -> None:
    """Revoke API key KEY_ID (see `txfast keys list`); its requests get 401 at once."""
    from txfast.store import open_store

    settings = _settings(config, store=store)
    with open_store(settings.store, migrate=settings.store_migrate) as s:
        key = s.revoke_api_key(key_id, actor=_actor())
    click.echo(f"revoked API key {key.id} ({key.role}) of {key.name!r}")
