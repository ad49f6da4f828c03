"""Catalog settings with dynaconf: catalog.toml per environment, CATALOG_* variables on top."""

from pathlib import Path

from dynaconf import Dynaconf, Validator

settings = Dynaconf(
    envvar_prefix="CATALOG",
    settings_files=[str(Path(__file__).with_name("catalog.toml"))],
    environments=True,
    env_switcher="CATALOG_ENV",
    validators=[
        Validator("PAGE_SIZE", must_exist=True, gte=1),
        Validator("BANNER", must_exist=True, len_min=1),
    ],
)
