"""What a key may call, by endpoint family: a family is one feature with all the routes that serve it.

A key allowed `jobs` may submit v2 jobs and also poll, fetch and cancel them; allowing the submit path alone
would leave it unable to read its own results. Key files written before families named paths; a path
stands for its family.
"""

from __future__ import annotations

FAMILIES: dict[str, tuple[str, ...]] = {
    "swap": (
        "/v1/seg-swap",
        "/v1/seg-mask",
        "/v1/images/edits",
    ),  # the synchronous swap (also OpenAI-style), and selecting its region
    "jobs": ("/v2/seg-swap", "/v2/requests/"),  # v2: submit, status, result, output, cancel
}
FAMILY_HELP = "; ".join(f"{name}: {', '.join(prefixes)}" for name, prefixes in FAMILIES.items())


def family_of(path: str) -> str | None:
    """The family a request path belongs to (a prefix ending in / covers the routes under it)."""
    for name, prefixes in FAMILIES.items():
        if any(path == prefix or (prefix.endswith("/") and path.startswith(prefix)) for prefix in prefixes):
            return name
    return None


def normalise(endpoint: str) -> str:
    """A family name, given a family name or a path of one; ValueError for anything else."""
    if endpoint in FAMILIES:
        return endpoint
    family = family_of(endpoint)
    if family is None:
        raise ValueError(f"unknown endpoint {endpoint!r}; use one of: {', '.join(FAMILIES)}")
    return family


def allows(endpoints: tuple[str, ...], path: str) -> bool:
    """Whether a key limited to `endpoints` (empty: all) may call `path`."""
    if not endpoints:
        return True
    family = family_of(path)
    return family is not None and family in {normalise(endpoint) for endpoint in endpoints}
