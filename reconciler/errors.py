"""The one exception tree of Mycelium Mesh.

Every error the package raises on purpose is a :class:`MycoError`. Third-party errors are
translated at the seam where they happen (``raise SporeFormatError(...) from exc``), so a
caller never needs to know which library sat underneath. The CLI turns any ``MycoError``
into one line on stderr and an exit code; nothing else reaches the user as a traceback.

Whether to retry is told by the type, as kopf does it: a :class:`TemporaryError` may
succeed later (it carries a suggested ``delay``); everything else is permanent.

::

    MycoError
    ├── UsageError                 bad command-line use (exit 2)
    ├── ConfigError                a bad setting, state directory or identity file
    │   └── KeyFileError           unreadable, malformed or clobbered key file
    ├── IdentityError(reason)      a certificate, token or signed record is refused
    ├── GardenError                a garden could not be read or is invalid
    │   ├── GardenLoadError        one file refused by the loader (size, encoding, tags...)
    │   ├── GardenInvalid          the garden has validation errors (carries them all)
    │   └── GardenSourceError      Git or filesystem trouble reading the garden
    ├── SporeError                 a spore could not be built, verified or extracted
    │   ├── SporeFormatError       not a well-formed spore archive (entries, paths, limits)
    │   ├── IntegrityError         a hash or digest does not match
    │   ├── SignatureError         the signature is missing or does not verify
    │   ├── TrustError             the signer is not trusted for this app name
    │   └── BuildError             (spore.deps) a dependency build failed or was refused
    ├── RepoError                  the content-addressed store
    │   ├── NotFoundError          no object with that digest
    │   └── CorruptObjectError     a stored object no longer matches its digest
    ├── FabricError                the gossip control fabric
    │   └── PacketError            a packet failed authentication or decoding (dropped)
    ├── AgentError                 the node agent: processes, nutrients, intents
    ├── EdgeError                  the edge router
    ├── PlanError                  the reconciler's core or drivers
    ├── ServiceFailed              a daemon's long-running task ended or failed (it stops)
    │   └── ChildFailed            a `myco up` child never got ready or kept crashing
    └── TemporaryError(delay)      may succeed if retried after ``delay`` seconds
        ├── FetchError             a spore or peer could not be reached (yet)
        └── UnavailableError       a service (agent API, repo, lease) is not reachable now
"""

from __future__ import annotations


class MycoError(Exception):
    """Base of every error raised on purpose by Mycelium Mesh."""

    #: The process exit code the CLI uses for this error.
    exit_code: int = 1


class UsageError(MycoError):
    """The command line was used wrongly."""

    exit_code = 2


class ConfigError(MycoError):
    """A setting, state directory or identity file is wrong."""


class KeyFileError(ConfigError):
    """A key file cannot be read, is malformed, or would be overwritten."""


class IdentityError(MycoError):
    """A certificate, token or signed record is refused; ``reason`` is a short code
    (``expired``, ``not-yet-valid``, ``wrong-ca``, ``revoked``, ``bad-signature``,
    ``unauthorized``...) used for counting, the message says it for people."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class GardenError(MycoError):
    """A garden could not be read or is invalid."""


class GardenLoadError(GardenError):
    """One file was refused by the loader; ``path``, ``line`` and ``col`` point at it."""

    def __init__(self, message: str, path: str = "", line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.col = col

    def __str__(self) -> str:
        if self.path:
            return f"{self.path}:{self.line}:{self.col}: {self.message}"
        return self.message


class GardenInvalid(GardenError):
    """The garden has one or more validation errors; ``problems`` holds all of them."""

    def __init__(self, problems: list[object]) -> None:
        super().__init__(f"{len(problems)} error(s) in the garden")
        self.problems = problems


class GardenSourceError(GardenError):
    """The garden's source (a directory or a Git remote) could not be read."""


class SporeError(MycoError):
    """A spore could not be built, verified or extracted."""


class SporeFormatError(SporeError):
    """Not a well-formed spore archive: entries, paths, sizes or ratios are refused."""


class IntegrityError(SporeError):
    """A hash or digest does not match the bytes it should describe."""


class SignatureError(SporeError):
    """The signature record is missing, malformed, or does not verify."""


class TrustError(SporeError):
    """The spore's signer is not trusted for the spore's app name."""


class RepoError(MycoError):
    """The content-addressed spore repository failed."""


class NotFoundError(RepoError):
    """No object with the requested digest."""


class CorruptObjectError(RepoError):
    """A stored object no longer matches its digest."""


class FabricError(MycoError):
    """The gossip control fabric failed."""


class PacketError(FabricError):
    """A packet failed authentication or decoding; it is dropped and counted."""


class AgentError(MycoError):
    """The node agent failed to do what an intent asked."""


class EdgeError(MycoError):
    """The edge router failed."""


class PlanError(MycoError):
    """The reconciler's core or its drivers failed."""


class ServiceFailed(MycoError):
    """A task a daemon needs for as long as it runs (the fabric, a server) ended or failed.

    The process stops with this error rather than going on half alive.
    """


class TemporaryError(MycoError):
    """May succeed if tried again after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class FetchError(TemporaryError):
    """A spore or a peer could not be reached (yet)."""


class UnavailableError(TemporaryError):
    """A service (agent API, repo, lease holder) is not reachable now."""
