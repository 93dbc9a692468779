"""``dosediffusion serve --model DIR [--host 127.0.0.1] [--port 8765] [--token-file F | --no-auth]
[--max-request-mb 512] [--device auto|cpu|cuda] [--max-queue 8] [--result-ttl-s 3600]
[--ssl-certfile F --ssl-keyfile F]``: the remote GPU worker (see :mod:`dosediffusion.remote.server`).

The pipeline is loaded once and runs one job at a time. Every endpoint but ``/health`` needs the
bearer token of ``--token-file``; ``--no-auth`` is allowed only on a loopback host, and a
non-loopback host without a token file is refused. Use TLS (``--ssl-certfile``/``--ssl-keyfile``,
passed to uvicorn) whenever the worker is reached over a network.
"""

from __future__ import annotations

import argparse
import logging

from dosediffusion.errors import InputError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("serve", help="run the remote GPU worker (HTTP) for predict --remote and Slicer")
    parser.add_argument("--model", required=True, help="pipeline folder, or 'demo' for the bundled demo model")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    parser.add_argument("--token-file", help="file whose first line is the bearer token clients must send")
    parser.add_argument("--no-auth", action="store_true", help="no token (allowed only on a loopback host)")
    parser.add_argument("--max-request-mb", type=float, default=512.0, help="largest request body in MiB (512)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--max-queue", type=int, default=8, help="jobs that may wait besides the running one (8)")
    parser.add_argument("--result-ttl-s", type=float, default=3600.0,
                        help="seconds an unfetched finished job is kept (3600)")
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
        if len(token) < 16:
            raise InputError("the token is shorter than 16 characters", token_file)
        return token
    if not is_loopback(host):
        raise InputError(f"refusing to serve on non-loopback host {host!r} without --token-file")
    if not no_auth:
        raise InputError("give --token-file (or --no-auth to serve without a token on this loopback host)")
    return None


def run(args: argparse.Namespace) -> int:
    token = resolve_token(args.host, args.token_file, args.no_auth)
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise InputError("TLS needs both --ssl-certfile and --ssl-keyfile")
    if args.max_request_mb <= 0 or args.max_queue < 0 or args.result_ttl_s <= 0:
        raise InputError("--max-request-mb and --result-ttl-s must be positive, --max-queue not negative")
    try:
        import uvicorn

        from dosediffusion.remote.server import create_app
    except ImportError as error:
        raise InputError(f"the worker needs the 'serve' extra: pip install 'dosediffusion[serve]' ({error})") from None
    import torch

    from dosediffusion.model.pipeline import default_device, load_pipeline
    from dosediffusion.prediction.model_folder import resolve_model_folder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = str(default_device()) if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    pipeline = load_pipeline(resolve_model_folder(args.model))
    app = create_app(pipeline, token, int(args.max_request_mb * 2**20), device, args.max_queue, args.result_ttl_s)
    scheme = "https" if args.ssl_certfile else "http"
    logging.getLogger("dosediffusion.remote").info("serving on %s://%s:%d (%s, auth %s)", scheme, args.host,
                                                   args.port, device, "off" if token is None else "on")
    uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                log_level="info", server_header=False)
    return 0
