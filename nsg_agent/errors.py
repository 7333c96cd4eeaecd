"""The agent's errors, each carrying its exit code, and the problems found in user input.

    NsgAgentError           exit 3 unless a subclass says otherwise
      InvalidInput          exit 2: the file or the arguments are wrong (LoadError, lab names)
      OperationFailed       exit 3: the kernel refused, a namespace is missing, no permission

``nsg_agent.cli`` maps them to exit codes; anything else that escapes a command is a bug and
exits 3 with one line (``--debug`` shows the traceback).
"""

from __future__ import annotations

from dataclasses import dataclass

# The exit codes of every command, in one place (README "Exit codes").
EXIT_OK = 0
EXIT_DENY = 1  # verify: the flow is denied; lab probe: a probe disagreed with the semantics
EXIT_MISMATCH = EXIT_DENY
EXIT_INVALID = 2  # the input or the arguments are wrong (plan --detailed-exitcode: changes pending)
EXIT_FAILED = 3  # the kernel refused, a namespace is missing, no permission, a bug
EXIT_KERNEL_MISMATCH = 4  # verify --kernel: the live ruleset decides otherwise than the model
EXIT_UNHEALTHY = EXIT_DENY  # fleet status: a host is not current (stale, failing, degraded, missing)
EXIT_CONFLICT = 4  # publish: the compare-and-swap lost (someone published since the expected revision)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one input file: where (file, line, field path) and what."""

    file: str
    path: str  # e.g. networkSecurityGroups[0].securityRules[2].priority
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "path": self.path, "message": self.message}


class NsgAgentError(Exception):
    """An error a command reports to its user with one line and an exit code."""

    exit_code = EXIT_FAILED
    kind = "failed"


class InvalidInput(NsgAgentError):
    exit_code = EXIT_INVALID
    kind = "invalid"


class OperationFailed(NsgAgentError):
    exit_code = EXIT_FAILED
    kind = "failed"


class CommandFailed(OperationFailed):
    """A command could not do its job for a reason outside the input file."""


class LoadError(InvalidInput):
    """The input cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''}:\n" + "\n".join(f"  {p}" for p in self.problems))
