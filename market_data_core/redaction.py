"""The one place where server URLs lose their passwords: :func:`redact_url` for text, and
:class:`SecretUrl` for config fields whose ``repr``/``str``/JSON must never show one.

What counts as a password (RFC 3986 userinfo and libpq/redis-py query parameters):

- ``scheme://user:PASSWORD@host`` and ``scheme://:PASSWORD@host`` -> ``user:***@`` / ``:***@``;
  the userinfo ends at the **last** ``@``, so an unencoded ``@`` inside a password is hidden
  too (a stray ``@`` later in the URL can only hide more, never less);
- ``password=...`` and ``sslpassword=...`` query or keyword parameters -> ``password=***``.

A user name alone (``postgresql://mdp@host``) is not a secret and stays visible.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

__all__ = ["REDACTED", "SecretUrl", "redact_url"]

REDACTED = "***"

_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")  # also sslpassword=


def redact_url(url: str) -> str:
    """``url`` with every password replaced by ``***`` (see the module docstring).

    >>> redact_url("redis://:pw@127.0.0.1:6379/0")
    'redis://:***@127.0.0.1:6379/0'
    >>> redact_url("postgresql://mdp:pw@db/mdp?sslmode=require")
    'postgresql://mdp:***@db/mdp?sslmode=require'
    """
    sep = url.find("://")
    if sep >= 0:
        start = sep + 3
        at = url.rfind("@", start)
        if at >= 0:
            userinfo = url[start:at]
            colon = userinfo.find(":")
            if colon >= 0:
                url = f"{url[: start + colon]}:{REDACTED}{url[at:]}"
    return _PASSWORD_PARAM.sub(rf"\g<1>{REDACTED}", url)


class SecretUrl:
    """A server URL that may hold a password.

    ``repr()``, ``str()``, f-strings and ``model_dump_json()`` show :func:`redact_url` of it;
    code that connects asks for the real URL explicitly with :meth:`get_secret_value`.
    As a pydantic field it accepts a ``str`` (or a ``SecretUrl``); ``model_dump()`` keeps the
    object (so a dump validates back to the same config), ``mode="json"`` gives the redacted
    text. Equality compares the real URLs in constant time.
    """

    __slots__ = ("_url",)

    def __init__(self, url: str) -> None:
        self._url = url

    def get_secret_value(self) -> str:
        """The URL with its password, for the one call that connects."""
        return self._url

    def __str__(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        return f"SecretUrl({redact_url(self._url)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretUrl):
            return NotImplemented
        return hmac.compare_digest(self._url.encode(), other._url.encode())

    def __hash__(self) -> int:
        return hash(self._url)

    def __bool__(self) -> bool:
        return bool(self._url)

    @staticmethod
    def _serialize(value: SecretUrl, info: core_schema.SerializationInfo) -> str | SecretUrl:
        return str(value) if info.mode == "json" else value

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from_str = core_schema.no_info_after_validator_function(cls, core_schema.str_schema())
        return core_schema.json_or_python_schema(
            json_schema=from_str,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), from_str]),
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls._serialize, info_arg=True
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "uri", "writeOnly": True}
