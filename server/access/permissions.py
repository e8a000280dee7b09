"""What a key may call, by endpoint family: a family is one feature with all the routes that serve it.

A key allowed `jobs` may submit v2 jobs and also poll, fetch and cancel them; allowing the submit path alone
would leave it unable to read its own results. Key files written before families named paths; a path
stands for its family.

`admin` (loading and unloading model sets) is never implied: a key-file key has it only when its endpoints
name it; the operator's keys (SEGSWAP_API_KEYS, or no keys at all on loopback) have it. Which sets are
served (GET /v1/models) any key may read.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

ADMIN = "admin"

FAMILIES: dict[str, tuple[str, ...]] = {
    "swap": (
        "/v1/seg-swap",
        "/v1/seg-mask",
        "/v1/images/edits",
    ),  # the synchronous swap (also OpenAI-style), and selecting its region
    "jobs": ("/v2/seg-swap", "/v2/requests/"),  # v2: submit, status, result, output, cancel
    ADMIN: ("/v1/models/*/load", "/v1/models/*/unload"),
}
EVERY_KEY = ("/v1/models", "/v1/models/*")
FAMILY_HELP = "; ".join(f"{name}: {', '.join(prefixes)}" for name, prefixes in FAMILIES.items())


def family_of(path: str) -> str | None:
    """The family a request path belongs to (a prefix ending in / covers the routes under it)."""
    for name, prefixes in FAMILIES.items():
        if any(_matches(path, prefix) for prefix in prefixes):
            return name
    return None


def _matches(path: str, prefix: str) -> bool:
    """A path, a prefix ending in / (the routes under it), or a pattern with * (one path segment or more)."""
    if "*" in prefix:
        return fnmatchcase(path, prefix)
    return path == prefix or (prefix.endswith("/") and path.startswith(prefix))


def normalise(endpoint: str) -> str:
    """A family name, given a family name or a path of one; ValueError for anything else."""
    if endpoint in FAMILIES:
        return endpoint
    family = family_of(endpoint)
    if family is None:
        raise ValueError(f"unknown endpoint {endpoint!r}; use one of: {', '.join(FAMILIES)}")
    return family


def allows(endpoints: tuple[str, ...], path: str, operator: bool = False) -> bool:
    """Whether a key limited to `endpoints` (empty: all but admin) may call `path`; `operator`: an operator's
    key, which may call everything. An endpoint of no family (a hand-edited key file, a route since removed)
    allows nothing more."""
    family = family_of(path)
    allowed = {endpoint if endpoint in FAMILIES else family_of(endpoint) for endpoint in endpoints}
    if family == ADMIN:
        return operator or ADMIN in allowed
    if not endpoints or operator or any(_matches(path, pattern) for pattern in EVERY_KEY):
        return True
    return family is not None and family in allowed
