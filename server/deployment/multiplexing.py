"""Routing by model set across replicas, with Ray Serve's model multiplexing.

A client names the set in the `serve_multiplexed_model_id` header (or `serve-multiplexed-model-id`). Ray's
proxy sends the request to a replica that holds that set, or, when none does, to one that holds the fewest
sets. That replica loads the set before the request runs (`SetMultiplexer.hold`) and Ray's multiplexer keeps
at most `max_sets` of them per replica, unloading the least recently used one to make room for another.
Each replica reports what it holds to Ray's controller, which tells the proxies.

The default set (the first of SEGSWAP_MODEL_SET) is every replica's and never goes through the multiplexer:
requests without the header run on it wherever Ray sends them. A request with the header runs on the
header's set when its body names none; a body naming another set is a 400 (server/serving/served_sets.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ray import serve
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.serving.served_sets import LOADED, LOADING, ServedSet, ServedSets, routed_set
from server.serving.set_loading import SetLoader

log = logging.getLogger("segswap")

LOAD_POLL_S = 0.1


class HeldSet:
    """A set this replica holds for Ray's multiplexer, which caches these and evicts the least recently used.

    Ray evicts by calling the object's `__del__` (in a thread, for a plain function), then replaces it on the
    instance with a no-op. The unload is bound on the instance, not defined on the class, because Python's
    garbage collector calls the class's `__del__`: a set is unloaded when Ray evicts it, never by a collection.
    """

    def __init__(self, loader: SetLoader, served: ServedSet):
        self.loader, self.served = loader, served
        self.__del__ = self._unload

    def _unload(self) -> None:
        try:
            self.loader.unload(self.served.name)  # after its queued and running jobs
        except Exception:  # raised into Ray's eviction, it would fail the request that brought the next set
            log.exception("model set %s: the multiplexer's unload failed", self.served.name)


class SetMultiplexer:
    def __init__(self, loader: SetLoader, sets: ServedSets, max_sets: int):
        self.loader, self.sets = loader, sets

        async def load_set(name: str) -> HeldSet:
            return await self._load(name)

        # Wrapping a function made here, not a method, so that `max_sets` can come from the deployment's
        # arguments; Ray keeps its cache on this function, and so does not unload the sets itself when the
        # replica stops: the app's shutdown stops every set.
        self._held = serve.multiplexed(max_num_models_per_replica=max_sets)(load_set)

    async def hold(self, name: str) -> None:
        """Hold set `name` on this replica before a request for it runs. A failed load is left to the app, which
        answers the request as it would without Ray (503 with the reason); a name not served is its 400."""
        if name == self.sets.default.name or name not in self.sets.names:
            return
        try:
            await self._held(name)
        except Exception as exc:
            log.warning("model set %s: not held on this replica: %s", name, exc)

    async def _load(self, name: str) -> HeldSet:
        served = await asyncio.to_thread(self.loader.load, name, True)  # may unload idle sets to fit first
        while served.state == LOADING:
            await asyncio.sleep(LOAD_POLL_S)
        if served.state != LOADED:
            raise RuntimeError(f"model set {name!r} is {served.state}: {served.reason}")
        return HeldSet(self.loader, served)


class RouteBySet:
    """Before the app sees a request routed by set, the replica holds that set, and the app runs the request
    on it (`routed_set`). Every answer names the replica that gave it: `x-segswap-replica`."""

    def __init__(self, app: ASGIApp, hold: Callable[[str], Awaitable[None]], replica: str):
        self.app, self.hold, self.replica = app, hold, replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = serve.get_multiplexed_model_id()  # Ray's proxy read it from the request's header

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["x-segswap-replica"] = self.replica
            await send(message)

        token = routed_set.set(name or None)
        try:
            if name:
                await self.hold(name)
            await self.app(scope, receive, send_with_replica)
        finally:
            routed_set.reset(token)
