"""Every error topdeck reports to a user. Each carries one line that says what is wrong and where."""


class TopdeckError(Exception):
    """Base of all user-facing errors: the CLI prints str(error) on one line and exits non-zero."""


class InventoryError(TopdeckError):
    """The inventory (hosts/ and topdeck.toml) is missing, unreadable or invalid."""


class StorePathError(TopdeckError):
    """A value that should be a Nix store path is not one."""


class NarinfoError(TopdeckError):
    """A narinfo is malformed or incomplete."""


class SigningKeyError(TopdeckError):
    """A signing or public key file is unreadable or not in Nix's format."""


class SignatureError(TopdeckError):
    """A signature does not verify."""


class NixError(TopdeckError):
    """A local Nix command failed."""


class CacheError(TopdeckError):
    """The binary cache (B2 or a directory) refused or failed an operation."""


class SSHError(TopdeckError):
    """A host could not be reached or refused the SSH session."""


class HostKeyError(SSHError):
    """A host presented an unknown or changed host key."""


class LabError(TopdeckError):
    """The local lab could not be started, stopped or controlled."""


class Cancelled(TopdeckError):
    """The operator cancelled; what finished before stays valid."""


class PointerError(TopdeckError):
    """A pointer is malformed, unsigned, wrongly signed, or older than one already seen."""
