"""Problems: what the renderer found wrong, as values.

A problem names the object and the field, so the same value can become a Kubernetes Event on the
Ingress (controller), a line on stderr (``portcullis render`` / ``portcullis local``) or an
admission rejection (webhook) without anyone re-deriving the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["Error", "Warning"]


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, order=True)
class Problem:
    """``reason`` is a CamelCase Event reason; ``field`` a path such as
    ``metadata.annotations[portcullis.io/tls-mode]`` or ``spec.tls[0].secretName``.

    Severity ``Error``: the setting (or the whole Ingress) was not applied. ``Warning``: applied,
    but something deserves attention (an insecure opt-out, an expired certificate, a fallback).
    """

    obj: ObjectRef
    severity: Severity
    reason: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.obj} {self.field}".rstrip()
        return f"{self.severity}: {where}: {self.message} ({self.reason})"


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "Error" for p in problems)
