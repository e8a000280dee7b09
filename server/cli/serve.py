"""`segswap serve`: the HTTP API on uvicorn, draining on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import socket

from pipelines import require_model_set
from pipelines.models.model_sets import COMPOSITE
from server.cli.common import CliError, add_engine_flags, settings_from

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
    from server.serving.header_deadline import header_deadline_protocol
    from server.serving.lifecycle import DrainingServer
    from server.serving.logs import configure_json_logging

    settings = settings_from(args, host=args.host, port=args.port)
    _check_port_free(settings.host, settings.port)
    configure_json_logging(settings.log_level)
    if not settings.auth_required:
        log.warning(
            "no API keys configured (SEGSWAP_API_KEYS, SEGSWAP_KEYS_FILE or %s): serving WITHOUT auth, on "
            "loopback %s only",
            settings.default_keys_file,
            settings.host,
        )
    elif settings.keys_file is not None:
        log.info("API keys: from %s", settings.keys_file)
    if settings.engine == "diffusion" or len(settings.model_set_names) > 1:  # fail before binding: a set missing
        for name in [name for name in settings.model_set_names or [None] if name != COMPOSITE]:
            require_model_set(settings.weights_dir, name, settings.ip_adapter)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.drain_grace_s,
        http=header_deadline_protocol(settings.header_timeout_s),
    )
    lifecycle = app.state.lifecycle
    DrainingServer(config, lifecycle, app.state.sets, settings.drain_grace_s).run()
    if lifecycle.failure:
        raise CliError(f"the engine failed to load: {lifecycle.failure_detail}")
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading anything when the address is taken (uvicorn would say so only after start-up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
