"""Run ``nsg-agent validate`` on many files in one process (started by the fault suite under
an address-space limit), each bounded by SIGALRM; print one JSON line per file:
{"path", "rc", "traceback": "<exception type: message>" | null, "hang": bool, "output"}.

One process for thousands of files keeps the mutation runs fast; the alarm turns a hang
into a reported outcome instead of a stuck suite.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys

from nsg_agent.cli.main import main as cli_main

PER_FILE = 5  # seconds: a clear error comes in milliseconds; this is a hang


class Hang(Exception):
    pass


def on_alarm(signum, frame):
    raise Hang()


def validate(path: str) -> dict:
    out, err = io.StringIO(), io.StringIO()
    signal.alarm(PER_FILE)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli_main(["validate", path])
        text = out.getvalue() + err.getvalue()
        return {"path": path, "rc": rc, "traceback": None, "hang": False,
                "output": text if len(text) <= 1200 else text[:600] + " ... " + text[-600:]}
    except Hang:
        return {"path": path, "rc": None, "traceback": None, "hang": True, "output": ""}
    except SystemExit as e:
        return {"path": path, "rc": e.code, "traceback": None, "hang": False, "output": err.getvalue()[-600:]}
    except BaseException as e:  # noqa: BLE001 - exactly what the suite counts
        return {"path": path, "rc": None, "traceback": f"{type(e).__name__}: {str(e)[:300]}", "hang": False,
                "output": ""}
    finally:
        signal.alarm(0)


def main() -> int:
    signal.signal(signal.SIGALRM, on_alarm)
    for path in sys.argv[1:]:
        print(json.dumps(validate(path)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
