"""Charging a request's cost to keys with a balance: reserved before the work, refunded if no image results.

The answer carries the balance in `x-remaining-credits` (the access log middleware sets the header from
`request.state.remaining_credits`).
"""

from __future__ import annotations

import asyncio

from fastapi import Request

from server.access.credits import CreditLedger
from server.access.keys import Caller
from server.errors import NotAcceptable


async def reserve(request: Request, caller: Caller, cost: int, images: int = 1) -> int:
    """Take `images` x `cost` (credits per image) from the caller's balance: the amount charged (0 for keys without
    one); 406 if not covered."""
    ledger: CreditLedger | None = request.app.state.credits
    each, cost = cost, cost * images
    balance = None if ledger is None or not cost else await asyncio.to_thread(ledger.balance, caller.key_id)
    if balance is None:
        request.state.metered = True
        return 0
    left = await asyncio.to_thread(ledger.reserve, caller.key_id, cost)
    if left is None:
        request.state.remaining_credits = balance
        price = f"an image costs {cost}" if images == 1 else f"{images} images cost {cost} ({images} x {each} each)"
        raise NotAcceptable(f"insufficient credits: this key has {balance}, {price}")
    request.state.remaining_credits = left
    request.state.metered = True  # paid work (a selection: server/api/masks.py) may start now
    return cost


async def refund(request: Request, caller: Caller, charged: int) -> None:
    if charged:
        ledger: CreditLedger = request.app.state.credits
        request.state.remaining_credits = await asyncio.to_thread(ledger.refund, caller.key_id, charged)
