"""`segswap keys add|list|revoke|credit`: the key file (hashes only) and credit balances."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.access.credits import CreditLedger, open_ledger
from server.access.keys import add_key, read_key_file, revoke_key
from server.access.permissions import FAMILY_HELP
from server.cli.common import CliError
from server.settings import Settings

MAX_BALANCE = 2**31 - 1  # the ledger's column is an INTEGER: 32 bits in PostgreSQL
MAX_RATE = 2**63 - 1  # TOML's integers are 64 bits


def add_keys_commands(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys-file", type=Path, help="key file (default: SEGSWAP_KEYS_FILE, else keys.toml in the data directory)"
    )
    commands = parser.add_subparsers(dest="keys_command", required=True)
    add = commands.add_parser("add", help="create a key; prints it once")
    add.add_argument("id", help="a name for the key (shown in logs and metrics)")
    add.add_argument("--rate", type=rate, help="requests per minute allowed, 1 or more (default: unlimited)")
    add.add_argument("--credits", type=balance, help="starting credit balance (default: not metered)")
    add.add_argument(
        "--endpoint",
        action="append",
        default=[],
        help=f"endpoint family the key may use, repeatable (default: all but admin). Families: {FAMILY_HELP}",
    )
    add.set_defaults(handler=run_add)
    commands.add_parser("list", help="list keys (ids, limits, balances; never the keys)").set_defaults(handler=run_list)
    revoke = commands.add_parser("revoke", help="revoke a key (takes effect without restart)")
    revoke.add_argument("id")
    revoke.set_defaults(handler=run_revoke)
    credit = commands.add_parser("credit", help="set a key's credit balance")
    credit.add_argument("id")
    credit.add_argument("balance", type=balance, help="the new balance, 0 or more")
    credit.set_defaults(handler=run_credit)


def _keys_file(args: argparse.Namespace) -> Path:
    settings = Settings()
    return args.keys_file or settings.keys_file or settings.default_keys_file


def _ledger() -> CreditLedger:
    return open_ledger(Settings())  # SEGSWAP_DATABASE_URL: the replicas' shared ledger


def run_add(args: argparse.Namespace) -> int:
    path = _keys_file(args)
    try:
        secret = add_key(path, args.id, args.rate, tuple(args.endpoint))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.credits is not None:
        _ledger().set_balance(args.id, args.credits)
    print(secret)
    settings = Settings()
    serve_with = "" if path == (settings.keys_file or settings.default_keys_file) else f"SEGSWAP_KEYS_FILE={path} "
    print(
        f"key '{args.id}' added to {path}; it is shown only now. `{serve_with}segswap serve` requires a key",
        file=sys.stderr,
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    ledger = _ledger()
    for record in read_key_file(_keys_file(args)).values():
        balance = ledger.balance(record.id)
        print(
            f"{record.id:20} {'REVOKED' if record.revoked else 'active':8} "
            f"rate={record.rate_per_minute or '-'}/min credits={'-' if balance is None else balance} "
            f"endpoints={','.join(record.endpoints) or 'all'} created={record.created}"
        )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    try:
        revoke_key(_keys_file(args), args.id)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"key '{args.id}' revoked", file=sys.stderr)
    return 0


def run_credit(args: argparse.Namespace) -> int:
    if args.id not in read_key_file(_keys_file(args)):
        raise CliError(f"no key with id '{args.id}'")
    _ledger().set_balance(args.id, args.balance)
    print(f"key '{args.id}' now has {args.balance} credits", file=sys.stderr)
    return 0


def balance(text: str) -> int:
    """A credit balance: a whole number from 0 to what the ledger stores."""
    return _whole_number(text, 0, MAX_BALANCE)


def rate(text: str) -> int:
    """A rate limit: 1 request per minute or more (the limiter reads 0 as no limit, and a negative rate refuses all)."""
    return _whole_number(text, 1, MAX_RATE, " of requests per minute", "; leave --rate out for no limit")


def _whole_number(text: str, low: int, high: int, unit: str = "", hint: str = "") -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise argparse.ArgumentTypeError(f"must be a whole number{unit} from {low} to {high} (got {shown!r}){hint}")
    return value
