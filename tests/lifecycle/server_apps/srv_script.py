"""A plain script: record ``SRV_SCRIPT_N`` increments (100,000 by default) and fall off
the end of ``main``, with no flush, close or stop.

The client is created at import, like the other apps, or with ``SRV_SCRIPT_SCOPE=main``
inside ``main``, so that nothing references it any more once ``main`` returns.
"""

from __future__ import annotations

import os

from srv_client import Recorder, make_client

METRIC = "srv.script"

client: Recorder | None = None
if os.environ.get("SRV_SCRIPT_SCOPE", "module") == "module":
    client = make_client()


def main() -> None:
    recorder = client if client is not None else make_client()
    for _ in range(int(os.environ.get("SRV_SCRIPT_N", "100000"))):
        recorder.increment(METRIC)


if __name__ == "__main__":
    main()
