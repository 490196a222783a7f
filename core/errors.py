"""One small exception hierarchy for the whole engine.

Every error carries a message (what went wrong and why) and an optional ``hint``
(how to fix it). Front ends (``jumpgate.cli``, ``jumpgate.tui``) map these to exit
codes and notifications in one place; the core never prints or exits.
"""

from __future__ import annotations


class JumpgateError(Exception):
    """Base class of every error the engine raises on purpose."""

    #: Process exit code the command-line faces use for this error class.
    exit_code: int = 1
    #: Short machine-readable kind, also used on the wire by the auth API.
    kind: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str]:
        """Wire form used by the auth API (``{"kind", "message", "hint"}``)."""
        out = {"kind": self.kind, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out


class BadParameter(JumpgateError):
    """Bad input from the user: a flag, a file, a resource field."""

    exit_code = 2
    kind = "bad_parameter"


class ConfigError(BadParameter):
    """A configuration file is malformed or names an unknown key."""

    kind = "config"


class NotFound(JumpgateError):
    """The named thing does not exist."""

    exit_code = 3
    kind = "not_found"


class AlreadyExists(JumpgateError):
    """Creating something that is already there."""

    exit_code = 4
    kind = "already_exists"


class CompareFailed(JumpgateError):
    """A compare-and-swap lost a race: the stored value changed underneath."""

    exit_code = 5
    kind = "compare_failed"


class AccessDenied(JumpgateError):
    """RBAC, a lock, an expired or foreign certificate, or a spent token said no."""

    exit_code = 6
    kind = "access_denied"


class ConnectionProblem(JumpgateError):
    """A peer could not be reached or broke the connection."""

    exit_code = 7
    kind = "connection_problem"


class LimitExceeded(JumpgateError):
    """A rate or size limit was hit."""

    exit_code = 8
    kind = "limit_exceeded"


_KINDS: dict[str, type[JumpgateError]] = {
    cls.kind: cls
    for cls in (
        JumpgateError,
        BadParameter,
        ConfigError,
        NotFound,
        AlreadyExists,
        CompareFailed,
        AccessDenied,
        ConnectionProblem,
        LimitExceeded,
    )
}


def from_dict(data: dict[str, str]) -> JumpgateError:
    """Rebuild an error received from the auth API (inverse of :meth:`JumpgateError.to_dict`)."""
    cls = _KINDS.get(data.get("kind", ""), JumpgateError)
    return cls(data.get("message", "unknown error"), hint=data.get("hint"))
