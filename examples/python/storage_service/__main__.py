"""``python -m storage_service``: run the service with uvicorn.

The same as ``uvicorn storage_service.app:app --port 8080``, with the service's own log lines
shown. Settings come from the environment (see :mod:`storage_service.config`).
"""

from __future__ import annotations

import argparse
import logging

import uvicorn


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted (Ctrl-C or SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="python -m storage_service",
        description="A VWED storage service publishing to vwed-hub through NATS.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (the hub has 8000)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run("storage_service.app:app", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
