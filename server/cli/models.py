"""`segswap models list|load|unload`: the model sets of a running server (load and unload need an admin key)."""

from __future__ import annotations

import argparse
import os
import time

import httpx

from server.cli.common import CliError
from server.inputs.files import printable
from server.serving.memory_check import gigabytes

LOAD_POLL_S = 1.0
DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_models_command(commands) -> None:
    parser = commands.add_parser("models", help="list, load or unload the model sets of a running server")
    _add_server_flags(parser, DEFAULT_SERVER, os.environ.get("SEGSWAP_API_KEY"))
    after = argparse.ArgumentParser(add_help=False)  # the same flags after the action: `models list --server URL`
    _add_server_flags(after, argparse.SUPPRESS, argparse.SUPPRESS)  # given there, they win; else those before stand
    actions = parser.add_subparsers(dest="models_command", required=True)
    actions.add_parser("list", parents=[after], help="the sets, their state, arch and LoRAs").set_defaults(
        handler=run_list
    )
    load = actions.add_parser("load", parents=[after], help="load a set (an admin key); waits until it is loaded")
    load.add_argument("name")
    load.add_argument("--no-wait", action="store_true", help="return once the load has started")
    load.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for it (default 1800)")
    load.set_defaults(handler=run_load)
    unload = actions.add_parser(
        "unload", parents=[after], help="unload a set (an admin key), after its jobs; frees its memory"
    )
    unload.add_argument("name")
    unload.set_defaults(handler=run_unload)


def _add_server_flags(parser: argparse.ArgumentParser, server: str | None, key: str | None) -> None:
    parser.add_argument("--server", default=server, help=f"the server (default {DEFAULT_SERVER})")
    parser.add_argument("--key", default=key, help="API key (default: SEGSWAP_API_KEY)")


def run_list(args: argparse.Namespace) -> int:
    cards = _call(args, "GET", "/v1/models").get("data")
    if not isinstance(cards, list) or not all(isinstance(card, dict) for card in cards):
        raise CliError(f"{args.server} answered GET /v1/models without a list of model sets in `data`")
    for card in cards:
        default = " (default)" if card.get("default") else ""
        loras = card.get("loras")
        loras = ", ".join(_text(lora) for lora in loras) if isinstance(loras, list) and loras else "-"
        name, state, arch = (_text(card.get(field)) for field in ("id", "state", "arch"))
        print(f"{name}{default}\t{state}\t{arch}\tLoRAs: {loras}")
    return 0


def run_load(args: argparse.Namespace) -> int:
    card = _call(args, "POST", f"/v1/models/{args.name}/load", timeout=60)
    end = time.monotonic() + args.timeout
    while card.get("state") == "loading" and not args.no_wait and time.monotonic() < end:
        time.sleep(LOAD_POLL_S)
        card = _call(args, "GET", f"/v1/models/{args.name}")
    if card.get("state") == "failed":
        raise CliError(f"model set {args.name} failed to load: {_text(card.get('reason'))}")
    print(f"{_text(card.get('id'))}: {_text(card.get('state'))}")
    return 0 if card.get("state") in ("loaded", "loading") else 1


def run_unload(args: argparse.Namespace) -> int:
    done = _call(args, "POST", f"/v1/models/{args.name}/unload", timeout=None)
    seconds, freed = done.get("seconds", 0), done.get("freed_bytes")
    if not isinstance(seconds, int | float) or not isinstance(freed, int | None):
        raise CliError(f"{args.server} answered the unload without numbers for `seconds` and `freed_bytes`")
    freed_text = "not measurable here" if freed is None else f"{gigabytes(freed)} freed"
    print(f"{args.name}: unloaded in {seconds:.1f} s, {freed_text}")
    return 0


def _call(args: argparse.Namespace, method: str, path: str, timeout: float | None = 30) -> dict:
    headers = {"x-api-key": args.key} if args.key else {}
    try:
        response = httpx.request(method, args.server.rstrip("/") + path, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {args.server}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CliError(f"{args.server} answered HTTP {response.status_code} without a JSON object")
    if response.status_code >= 400:
        raise CliError(f"HTTP {response.status_code}: {_text(data.get('error', 'no reason given'))}")
    return data


def _text(value: object) -> str:
    """The server's words, without control characters (a terminal would obey them)."""
    return printable(str(value))
