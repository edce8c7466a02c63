"""The alerts API (Litestar): ``create_app(settings)``; ``txfast serve`` runs it.

See :func:`txfast.api.app.create_app` for the options and the README's "Alerts API"
section for the endpoints.
"""

from txfast.api.app import create_app
from txfast.api.context import ApiContext, RuntimeStats
from txfast.api.server import ApiServer, yield_cpu_to_api

__all__ = ["ApiContext", "ApiServer", "RuntimeStats", "create_app", "yield_cpu_to_api"]
