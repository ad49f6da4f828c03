"""Flask on capa: ``Flask`` and ``Config`` whose values can come from capa configuration, live.

Only ``Flask`` and ``Config`` move to this module (see shims/flask.toml); everything else stays
imported from flask.
"""

from .config import (
    Config,
    ConfigChange,
    ConfigurationUnavailable,
    ConfigValueError,
    Flask,
    parse_content,
)

__all__ = [
    "Config",
    "ConfigChange",
    "ConfigValueError",
    "ConfigurationUnavailable",
    "Flask",
    "parse_content",
]
