"""The agent's errors, each carrying its exit code, and the problems found in user input.

    NsgAgentError           exit 3 unless a subclass says otherwise
      InvalidInput          exit 2: the file or the arguments are wrong (LoadError, lab names)
      OperationFailed       exit 3: the kernel refused, a namespace is missing, no permission

``nsg_agent.cli`` maps them to exit codes; anything else that escapes a command is a bug and
exits 3 with one line (``--debug`` shows the traceback).
"""

from __future__ import annotations

from dataclasses import dataclass


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

    exit_code = 3
    kind = "failed"


class InvalidInput(NsgAgentError):
    exit_code = 2
    kind = "invalid"


class OperationFailed(NsgAgentError):
    exit_code = 3
    kind = "failed"


class LoadError(InvalidInput):
    """The input cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''}:\n" + "\n".join(f"  {p}" for p in self.problems))
