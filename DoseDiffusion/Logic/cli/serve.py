"""``dosediffusion serve --model DIR [--host 127.0.0.1] [--port 8765] [--token-file F | --no-auth]
[--max-request-mb MB] [--device auto|cpu|cuda] [--max-queue 8] [--result-ttl-s 3600]
[--header-timeout-s 10] [--max-pending 256] [--max-pending-per-ip 32] [--ssl-certfile F --ssl-keyfile F]``:
the remote GPU worker (see :mod:`dosediffusion.remote.server`).

The pipeline is loaded once and runs one job at a time. Every endpoint but ``/health`` needs the
bearer token of ``--token-file``: a token file that every user may read is refused, one its group may read
or write and a weak token (short of distinct characters) are warned about; ``--no-auth`` is allowed only on a loopback host,
and a non-loopback host without a token file is refused. Use TLS (``--ssl-certfile``/
``--ssl-keyfile``, passed to uvicorn) whenever the worker is reached over a network: a non-loopback
host without it starts with a warning. Connections that do not send their request headers in time
are closed, and their number is capped (:mod:`dosediffusion.remote.connection_guard`); the request
body limit defaults to what the model's inputs need.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat

from dosediffusion.errors import InputError

log = logging.getLogger("dosediffusion.remote")
#: A token with fewer distinct characters than this is warned about (a random token has about 30).
WEAK_TOKEN_DISTINCT = 10


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="run the remote GPU worker (HTTP) for predict --remote and Slicer")
    parser.add_argument("--model", required=True, help="pipeline folder, or 'demo' for the bundled demo model")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--token-file", help="file whose first line is the bearer token clients must send")
    parser.add_argument("--no-auth", action="store_true", help="no token (allowed only on a loopback host)")
    parser.add_argument("--max-request-mb", type=float, default=None,
                        help="largest request body in MiB (default: the model's own input size plus header room)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--max-queue", type=int, default=8, help="jobs that may wait besides the running one (8)")
    parser.add_argument("--result-ttl-s", type=float, default=3600.0,
                        help="seconds an unfetched finished job is kept (3600)")
    parser.add_argument("--header-timeout-s", type=float, default=10.0,
                        help="close a connection whose request headers have not arrived by then (10)")
    parser.add_argument("--max-pending", type=int, default=256,
                        help="connections that may wait for their request headers, in all (256)")
    parser.add_argument("--max-pending-per-ip", type=int, default=32,
                        help="connections that may wait for their request headers, per client address (32)")
    parser.add_argument("--ssl-certfile", help="TLS certificate (PEM), passed to uvicorn")
    parser.add_argument("--ssl-keyfile", help="TLS private key (PEM), passed to uvicorn")
    return parser


def resolve_token(host: str, token_file: str | None, no_auth: bool) -> str | None:
    """The token to require, or None for ``--no-auth`` on loopback; anything else is an error."""
    from dosediffusion.remote.client import read_token
    from dosediffusion.remote.server import is_loopback

    if token_file and no_auth:
        raise InputError("give either --token-file or --no-auth, not both")
    if token_file:
        token = read_token(token_file)
        mode = os.stat(token_file).st_mode
        if mode & stat.S_IROTH:
            raise InputError(f"the token file is readable by every user of this machine: chmod 600 {token_file}",
                             token_file)
        if mode & (stat.S_IRGRP | stat.S_IWGRP):
            log.warning("the token file %s is readable or writable by its group (mode %o): chmod 600 %s", token_file,
                        stat.S_IMODE(mode), token_file)
        if len(token) < 16:
            raise InputError("the token is shorter than 16 characters", token_file)
        if len(set(token)) < WEAK_TOKEN_DISTINCT:
            log.warning("the token has only %d distinct characters, easy to guess: make one with "
                        "python -c 'import secrets; print(secrets.token_urlsafe(32))'", len(set(token)))
        return token
    if not is_loopback(host):
        raise InputError(f"refusing to serve on non-loopback host {host!r} without --token-file")
    if not no_auth:
        raise InputError("give --token-file (or --no-auth to serve without a token on this loopback host)")
    return None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = resolve_token(args.host, args.token_file, args.no_auth)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise InputError("TLS needs both --ssl-certfile and --ssl-keyfile")
    if (args.max_request_mb is not None and args.max_request_mb <= 0) or args.max_queue < 0 \
            or args.result_ttl_s <= 0 or args.header_timeout_s <= 0 or args.max_pending < 1 or args.max_pending_per_ip < 1:
        raise InputError("--max-request-mb, --result-ttl-s and --header-timeout-s must be positive, --max-pending and "
                         "--max-pending-per-ip at least 1, --max-queue not negative")
    from dosediffusion.remote.server import is_loopback

    if not is_loopback(args.host) and not args.ssl_certfile:
        log.warning("serving on %s without TLS: the token and patient data cross the network in clear text; "
                    "give --ssl-certfile and --ssl-keyfile", args.host)
    try:
        import uvicorn

        from dosediffusion.remote.connection_guard import ConnectionGuard
        from dosediffusion.remote.server import create_app, server_config
    except ImportError as error:
        raise InputError(f"the worker needs the 'serve' extra: pip install 'dosediffusion[serve]' ({error})") from None
    import torch

    from dosediffusion.model.loading import load_pipeline
    from dosediffusion.model.pipeline_base import default_device
    from dosediffusion.prediction.model_folder import resolve_model_folder

    device = str(default_device()) if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    pipeline = load_pipeline(resolve_model_folder(args.model))
    limit = int(args.max_request_mb * 2**20) if args.max_request_mb else None
    app = create_app(pipeline, token, limit, device, args.max_queue, args.result_ttl_s)
    guard = ConnectionGuard(args.header_timeout_s, args.max_pending, args.max_pending_per_ip)
    scheme = "https" if args.ssl_certfile else "http"
    log.info("serving on %s://%s:%d (%s, auth %s)", scheme, args.host, args.port, device,
             "off" if token is None else "on")
    uvicorn.Server(server_config(app, guard, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile,
                                 ssl_keyfile=args.ssl_keyfile, log_level="info")).run()
    return 0
