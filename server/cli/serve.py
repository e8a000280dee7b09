"""`segswap serve`: the HTTP API on uvicorn, draining on SIGTERM."""

from __future__ import annotations

import argparse
import logging

from pipelines import require_model_set
from server.cli.common import add_engine_flags, settings_from

log = logging.getLogger("segswap")


def add_serve_command(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the HTTP API")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    add_engine_flags(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.api.app import create_app
    from server.serving.lifecycle import DrainingServer
    from server.serving.logs import configure_json_logging

    settings = settings_from(args, host=args.host, port=args.port)
    configure_json_logging(settings.log_level)
    if not settings.auth_required:
        log.warning(
            "no API keys configured (SEGSWAP_API_KEYS): serving WITHOUT auth, on loopback %s only", settings.host
        )
    if settings.engine == "diffusion":  # fail before binding when the model set is plainly missing
        require_model_set(settings.weights_dir, settings.model_set, settings.ip_adapter)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_grace_s,
    )
    DrainingServer(config, app.state.lifecycle, app.state.work, settings.drain_grace_s).run()
    return 0
