"""The errors of the kernel layer, typed once by the errno libnftables reports.

libnftables returns the kernel's refusal as text ("Error: Could not process rule: No such file
or directory"); the errno is recovered here, once, from its strerror, and callers catch
:class:`NotFound`, :class:`Exists`, :class:`Busy` or :class:`PermissionDenied` instead of
matching message text (knftables does the same in its ``wrapError``).
"""

from __future__ import annotations

import errno as errno_codes
import json
import os

from nsg_agent.errors import OperationFailed

_KNOWN = (errno_codes.ENOENT, errno_codes.EEXIST, errno_codes.EBUSY, errno_codes.EPERM, errno_codes.EACCES,
          errno_codes.EINVAL, errno_codes.ENOSPC, errno_codes.ENOMEM, errno_codes.EMSGSIZE,
          errno_codes.EOPNOTSUPP, errno_codes.ENOBUFS)


def errno_of(text: str) -> int | None:
    """The errno whose strerror ``text`` carries, None when it carries none."""
    for code in _KNOWN:
        if os.strerror(code) in text:
            return code
    return None


class NftError(OperationFailed):
    """libnftables refused a command. ``command`` is the failing command when known."""

    def __init__(self, message: str, *, error: str = "", command: dict | None = None,
                 index: int | None = None, applied_nothing: bool = True):
        self.error = error.strip()
        self.errno = errno_of(self.error)
        # False when earlier transactions of a staged replace went through: the kernel no
        # longer holds exactly what it held before the call.
        self.applied_nothing = applied_nothing
        self.command = command
        self.index = index
        detail = f": {self.error}" if self.error else ""
        where = ""
        if command is not None:
            where = f" (command #{index}: {json.dumps(command, sort_keys=True)[:300]})"
        super().__init__(f"{message}{detail}{where}")

    def as_dict(self) -> dict:
        return {"message": str(self), "error": self.error, "index": self.index,
                "command": self.command}


class NotFound(NftError):
    """ENOENT: the table, chain, set or element is not there."""


class Exists(NftError):
    """EEXIST: it is there already."""


class Busy(NftError):
    """EBUSY: still referenced (a chain jumped to, a set a rule uses)."""


class PermissionDenied(NftError):
    """EPERM/EACCES: no CAP_NET_ADMIN in the namespace."""


_BY_ERRNO = {errno_codes.ENOENT: NotFound, errno_codes.EEXIST: Exists, errno_codes.EBUSY: Busy,
             errno_codes.EPERM: PermissionDenied, errno_codes.EACCES: PermissionDenied}


def nft_error(message: str, *, error: str = "", **kw) -> NftError:
    """The NftError subclass that ``error`` (libnftables' message) says it is."""
    code = errno_of(error)
    cls = _BY_ERRNO.get(code, NftError) if code is not None else NftError
    return cls(message, error=error, **kw)
