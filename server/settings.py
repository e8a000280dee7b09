"""All server settings: one pydantic-settings class, environment variables prefixed SEGSWAP_.

The CLI's flags override the same fields, so `SEGSWAP_PORT=9000` and `--port 9000` mean the same.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEGSWAP_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    engine: Literal["auto", "composite", "diffusion"] = "auto"
    weights_dir: Path = REPO_WEIGHTS_DIR
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)

    max_body_bytes: int = Field(40 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded image accepted, in pixels")
    fetch_max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest image fetched from a URL")
    fetch_timeout_s: float = Field(15.0, gt=0, description="total time allowed to fetch one image URL")
    log_level: str = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @model_validator(mode="after")
    def _no_open_server_without_keys(self) -> Settings:
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without API keys: set SEGSWAP_API_KEYS "
                "(comma-separated) or bind to 127.0.0.1"
            )
        return self

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
