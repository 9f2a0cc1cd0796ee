"""The middleware's options from one TOML file (``serve --config``, or ``load_config`` in Python).

The file's top-level keys are :class:`~advisor_middleware.config.AdvisorConfig`'s options, but
two: ``[[profiles]]`` tables are ``advisor_profiles``, and ``policy = "module:function"`` names
the ``advisor_policy`` hook by its import path. docs/operators.md has a complete example.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any, cast

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .config import AdvisorConfig, AdvisorOptions

__all__ = ["ConfigFileError", "load_config"]

_FILE_NAMES = {"advisor_profiles": "profiles", "advisor_policy": "policy"}
"""Options whose key in the file is another name."""
_OPTION_NAMES = {in_file: option for option, in_file in _FILE_NAMES.items()}

_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required key missing"}


class ConfigFileError(ValueError):
    """A settings file that cannot be used; its message is one line: the file, the key, what is wrong."""


def load_config(path: str | os.PathLike[str]) -> AdvisorOptions:
    """The options in the TOML file at ``path``, checked, for ``AdvisorMiddleware(app, **options)``.
    Raises :class:`ConfigFileError` for a file that is missing, not TOML, or holds a wrong option."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"{name}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{name}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{name}: not valid TOML: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    options = {_option_name(name, key): value for key, value in data.items()}
    if isinstance(options.get("advisor_policy"), str):
        options["advisor_policy"] = _import_policy(name, options["advisor_policy"])
    try:
        config = AdvisorConfig.model_validate(options)
    except ValidationError as exc:
        raise ConfigFileError(f"{name}: {_describe(exc.errors()[0])}") from None
    return cast(AdvisorOptions, {key: getattr(config, key) for key in config.model_fields_set})


def _option_name(name: str, key: str) -> str:
    if key in _FILE_NAMES:
        raise ConfigFileError(f"{name}: {key}: unknown key (in a file it is {_FILE_NAMES[key]})")
    return _OPTION_NAMES.get(key, key)


def _import_policy(name: str, target: str) -> Any:
    from uvicorn.importer import import_from_string

    try:
        return import_from_string(target)
    except Exception as exc:  # importlib's own refusals too (a relative path is a TypeError)
        raise ConfigFileError(f"{name}: policy: cannot import {target!r}: {exc}") from None


def _describe(error: ErrorDetails) -> str:
    """``profiles[1].models: List should have at least 1 item...``: where and what, in one line."""
    where = ""
    for part in error["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        else:
            where += ("." if where else "") + _FILE_NAMES.get(str(part), str(part))
    if error["type"] == "value_error":
        message = str((error.get("ctx") or {}).get("error", error["msg"]))
    else:
        message = _MESSAGES.get(error["type"], error["msg"])
    return f"{where or 'top level'}: {' '.join(message.split())}"
