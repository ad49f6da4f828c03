"""dynaconf on capa: the same names, with settings layered from a capa configuration store, live.

    from capa_compat.dynaconf import Dynaconf, Validator      # was: from dynaconf import ...

    settings = Dynaconf(
        settings_files=["settings.toml"], environments=True, envvar_prefix="MYAPP",
        capa_component="app",          # or CAPA_COMPONENT_FOR_DYNACONF=app in the environment
        capa_group="shop",             # optional: capa_label, capa_prefix, capa_live, capa_runtime
    )

Everything dynaconf does stays dynaconf's: the classes here are its own (LazySettings is a thin
subclass), and the capa part is one loader (capa_compat.dynaconf.loader) added to the loader list,
after the env loader, so values from the store win over files and env vars. Dynaconf environments
map to capa labels. Without a capa component named, these names behave exactly as dynaconf's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dynaconf as _dynaconf
from dynaconf import (
    DEFAULT_SETTINGS_FILES,
    DataDict,
    DynaconfFormatError,
    DynaconfParseError,
    ValidationError,
    Validator,
    add_converter,
    get_history,
    inspect_settings,
    post_hook,
    settings,
)
from dynaconf import default_settings as _default_settings
from dynaconf.contrib import DjangoDynaconf as _DjangoDynaconf
from dynaconf.contrib import FlaskDynaconf as _FlaskDynaconf

from capa_core import Runtime

from . import loader as capa_loader
from .loader import ConfigurationUnavailable, ConfigValueError, bound_loader, is_capa_loader

__all__ = [
    "DEFAULT_SETTINGS_FILES",
    "ConfigValueError",
    "ConfigurationUnavailable",
    "DataDict",
    "DjangoDynaconf",
    "Dynaconf",
    "DynaconfFormatError",
    "DynaconfParseError",
    "FlaskDynaconf",
    "LazySettings",
    "ValidationError",
    "Validator",
    "add_converter",
    "capa_kwargs",
    "get_history",
    "inspect_settings",
    "post_hook",
    "settings",
]

_LOADER_SPELLINGS = ("LOADERS_FOR_DYNACONF", "loaders_for_dynaconf", "loaders", "LOADERS")


def _pop_capa_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name in capa_loader.OPTIONS:
        for spelling in (f"capa_{name.lower()}", f"CAPA_{name}", f"CAPA_{name}_FOR_DYNACONF",
                         f"capa_{name.lower()}_for_dynaconf"):
            if spelling in kwargs:
                options[name] = kwargs.pop(spelling)
    return options


def capa_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Dynaconf keyword arguments with the capa options turned into a loader in the list.

    capa_component= switches the capa loader on, appended to the loader list (after the env
    loader, so capa wins). The CAPA_COMPONENT_FOR_DYNACONF environment variable does the same
    for settings that keep dynaconf's default loader list. Otherwise the arguments are returned
    unchanged.
    """
    kwargs = dict(kwargs)
    options = _pop_capa_options(kwargs)
    runtime = options.get("RUNTIME")
    if isinstance(runtime, Runtime):
        options["RUNTIME"] = capa_loader.runtime_token(runtime)
    explicit = next((k for k in _LOADER_SPELLINGS if k in kwargs), None)
    loaders_key = explicit or "LOADERS_FOR_DYNACONF"
    loaders = kwargs.get(loaders_key, _default_settings.LOADERS_FOR_DYNACONF)
    if loaders in (None, 0, "0", "false", False):
        return kwargs  # every loader is switched off: so is ours
    loaders = [loaders] if isinstance(loaders, str) else list(loaders)
    if any(is_capa_loader(name) for name in loaders):
        return kwargs  # placed by the caller already
    if options.get("COMPONENT"):
        entry = bound_loader(options)
    elif os.environ.get("CAPA_COMPONENT_FOR_DYNACONF") and explicit is None:
        # Switched on from the environment: joins the default loader list. A list given in code
        # is taken as complete; name capa_compat.dynaconf.loader in it to have capa there.
        entry = capa_loader.MODULE
    else:
        return kwargs
    kwargs[loaders_key] = [*loaders, entry]
    return kwargs


class LazySettings(_dynaconf.LazySettings):  # type: ignore[misc]
    """dynaconf.LazySettings, taking capa_* options (see the module docstring)."""

    def __init__(self, wrapped: Any = None, **kwargs: Any) -> None:
        super().__init__(wrapped, **capa_kwargs(kwargs))


Dynaconf = LazySettings


class FlaskDynaconf(_FlaskDynaconf):  # type: ignore[misc]
    """dynaconf's Flask extension, whose settings take capa_* options."""

    def init_app(self, app: Any, **kwargs: Any) -> None:
        if kwargs.pop("compatibility_mode", None) is True:
            kwargs["DYNABOXIFY"] = False
        self.kwargs.update(kwargs)
        self.settings = self.dynaconf_instance or LazySettings(**self.kwargs)
        _dynaconf.settings = self.settings  # as upstream does: rebind the module's settings
        app.config = self.make_config(app)
        app.dynaconf = self.settings
        if self.extensions_list:
            if not isinstance(self.extensions_list, str):
                self.extensions_list = "EXTENSIONS"
            app.config.load_extensions(self.extensions_list)


def DjangoDynaconf(django_settings_module_name: Any = None, **kwargs: Any) -> Any:
    """dynaconf's Django integration; capa_* options add the capa loader."""
    return _DjangoDynaconf(django_settings_module_name, **capa_kwargs(kwargs))
