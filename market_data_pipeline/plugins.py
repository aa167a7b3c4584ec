"""Finding plugins (:mod:`market_data_core.plugins`): an entry point or ``module:attribute``.

A reference with a colon is imported (``importlib.import_module``, then attribute lookup; never
``eval``); one without is the name of an entry point in the group (``mdp.features`` or
``mdp.adapters``) of an installed distribution. Every failure is one ``ConfigError`` naming the
config key and the reference: not found (listing the installed names), found twice, not
importable, not callable.

The plugin's *code identity* goes into the inference engine's ``state_key``, so a checkpoint
written by one version of a plugin is never loaded into another: the distribution's name and
version for an entry point, and for a module the SHA-256 of its source file (the name alone
for a module without one).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from market_data_core.errors import ConfigError

__all__ = ["LoadedPlugin", "load_plugin"]


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A resolved reference: its factory and what identifies its code."""

    ref: str
    factory: Callable[..., Any]
    identity: tuple[str, ...]


def _module_identity(module_name: str) -> str:
    module = importlib.import_module(module_name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        return module_name
    return hashlib.sha256(Path(origin).read_bytes()).hexdigest()


def _from_module(ref: str, key_path: str) -> LoadedPlugin:
    module_name, _, attr = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import failure of user code is a config error
        raise ConfigError(
            f"plugin {ref!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})",
            key_path=key_path,
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"plugin {ref!r}: module {module_name!r} has no {attr!r}", key_path=key_path
            )
        target = getattr(target, part)
    return LoadedPlugin(ref, target, (ref, _module_identity(module_name)))


def _from_entry_point(ref: str, group: str, key_path: str) -> LoadedPlugin:
    found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == ref]
    if not found:
        names = sorted({ep.name for ep in importlib.metadata.entry_points(group=group)})
        raise ConfigError(
            f"no plugin {ref!r} in the entry points of {group} (installed: "
            f"{', '.join(names) or 'none'}); install its package, or give module:attribute",
            key_path=key_path,
        )
    values = {ep.value for ep in found}
    if len(values) > 1:
        raise ConfigError(
            f"plugin {ref!r} is defined twice in {group} ({', '.join(sorted(values))}); "
            "give module:attribute instead",
            key_path=key_path,
        )
    ep = found[0]
    try:
        target = ep.load()
    except Exception as exc:  # any import failure of user code is a config error
        raise ConfigError(
            f"plugin {ref!r} ({ep.value}): cannot load it ({type(exc).__name__}: {exc})",
            key_path=key_path,
        ) from None
    dist = ep.dist
    code = (
        f"{dist.metadata['Name']}=={dist.version}"
        if dist is not None
        else _module_identity(ep.module)
    )
    return LoadedPlugin(ref, target, (group, ref, ep.value, code))


def load_plugin(ref: str, group: str, *, key_path: str) -> LoadedPlugin:
    """Resolve ``ref`` (see the module docstring). Raises ``ConfigError``."""
    loaded = _from_module(ref, key_path) if ":" in ref else _from_entry_point(ref, group, key_path)
    if not callable(loaded.factory):
        raise ConfigError(f"plugin {ref!r} is not callable (a factory)", key_path=key_path)
    return loaded
