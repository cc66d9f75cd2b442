"""Command line: ``stackwatch [flags]`` runs the exporter; ``stackwatch check-config FILE`` validates a file."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from stackwatch import __version__
from stackwatch.config import ConfigError
from stackwatch.kinds import load_config

DEFAULT_LISTEN = ":9938"


def check_config(path: str, storage_path: str | None = None, storage_url: str | None = None) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    print(config.summary())
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if storage_path or storage_url:
        from stackwatch.state import StateStore, StoreError

        try:
            print(StateStore.check(storage_path, storage_url))
        except StoreError as exc:
            print(f"stackwatch: {exc}", file=sys.stderr)
            return 1
    return 0


SUBCOMMANDS = {
    "check-config FILE": "check a config: exit 0 and a summary, or 1 and every located error",
    "demo": "a simulated platform with typical failures, watched (--with-prometheus for the whole stack)",
    "report": "the health report of a time window from Prometheus (markdown, HTML, Telegram)",
    "bundle DIR": "write the rules, Alertmanager config, dashboards and example config",
    "alertmanager-config": "write a runnable Alertmanager config from the bundle's",
    "kubernetes-manifests DIR": "write the Kubernetes manifests (StatefulSet of shards, Service, ServiceMonitor, PrometheusRule)",
}


def _sub_parser(name: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"stackwatch {name}", description=description)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stackwatch",
        description="Prometheus exporter for HTTP services, JSON APIs, SQL databases, Algorand and consistency checks.",
        epilog="Subcommands (each with --help):\n" + "\n".join(f"  stackwatch {name:<26} {what}"
                                                           for name, what in SUBCOMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config.file", dest="config_file", default="stackwatch.yml", help="config file (default: %(default)s)")
    p.add_argument("--web.listen-address", dest="listen", default=DEFAULT_LISTEN,
                   help="address to listen on (default: %(default)s)")
    p.add_argument("--web.config.file", dest="web_config", default=None,
                   help="TLS, client certificate and basic auth settings for the endpoints, in the format "
                        "Prometheus and the Go exporters use (see README)")
    p.add_argument("--web.config.allow-no-auth", dest="allow_no_auth", action="store_true",
                   help="let a reload of --web.config.file turn basic auth off (refused by default: an emptied "
                        "file would open every endpoint)")
    p.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                   help="allow POST /-/reload (SIGHUP always reloads)")
    p.add_argument("--web.max-connections", dest="max_connections", type=int, default=512,
                   help="connections served at once, capped at a quarter of the open-file limit "
                        "(default: %(default)s)")
    p.add_argument("--web.read-header-timeout", dest="header_timeout", type=float, default=10.0,
                   help="seconds a client has to send a request's head (default: %(default)s)")
    p.add_argument("--web.idle-timeout", dest="idle_timeout", type=float, default=60.0,
                   help="seconds an idle keep-alive connection stays open (default: %(default)s)")
    p.add_argument("--storage.path", dest="storage_path", default=None,
                   help="the state store, an SQLite file created on first start: heartbeats and what else must "
                        "survive a restart (default: data/stackwatch.db)")
    p.add_argument("--storage.url", dest="storage_url", default=os.environ.get("STACKWATCH_STORAGE_URL"),
                   help="a PostgreSQL URL for the state store instead (postgresql+psycopg://user@host/db), shared "
                        "by replicas; default $STACKWATCH_STORAGE_URL.  Give the password in PGPASSWORD or ~/.pgpass")
    p.add_argument("--prometheus.url", dest="prometheus_url", default=None,
                   help="Prometheus to read the status page's history from (default: memory since start)")
    p.add_argument("--alertmanager.url", dest="alertmanager_url", default=None,
                   help="Alertmanager whose active alerts the status page shows")
    p.add_argument("--shard.index", dest="shard_index", default=os.environ.get("STACKWATCH_SHARD_INDEX", "0"),
                   help="this replica's shard, 0 .. count-1 (env STACKWATCH_SHARD_INDEX; 'hostname' takes the "
                        "number at the end of the host name, as a Kubernetes StatefulSet ordinal)")
    p.add_argument("--shard.count", dest="shard_count", type=int,
                   default=int(os.environ.get("STACKWATCH_SHARD_COUNT", "1")),
                   help="replicas sharing the config; each probes only its shard's targets (default: %(default)s)")
    p.add_argument("--workers", dest="workers", default=os.environ.get("STACKWATCH_WORKERS", "0"),
                   help="run N processes (or auto: one per CPU), each probing one shard of the targets on its "
                        "own port (the next ports after --web.listen-address); the main address serves /sd for "
                        "Prometheus's http_sd_configs (default: one process)")
    p.add_argument("--event-loop", dest="event_loop", default=os.environ.get("STACKWATCH_EVENT_LOOP", "auto"),
                   choices=["asyncio", "uvloop", "auto"],
                   help="auto (default): uvloop when it is installed (it is a dependency where it builds), "
                        "asyncio otherwise; uvloop: fail if it is missing; asyncio: the standard library's "
                        "loop. uvloop spends about a third less CPU per probe (bench/RESULTS.md); "
                        "stackwatch_event_loop_info says which one runs")
    p.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warn", "error"])
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    p.add_argument("--config.check", dest="config_check", action="store_true",
                   help="validate the config file and exit, like check-config")
    p.add_argument("--version", action="version", version=f"stackwatch {__version__}")
    return p


def _worker_args(args: argparse.Namespace) -> list[str]:
    """The command-line options every worker gets (each adds its address and shard)."""
    out = ["--config.file", args.config_file, "--log.level", args.log_level, "--log.format", args.log_format,
           "--event-loop", args.event_loop, "--web.max-connections", str(args.max_connections),
           "--web.read-header-timeout", str(args.header_timeout), "--web.idle-timeout", str(args.idle_timeout)]
    if args.web_config:
        out += ["--web.config.file", args.web_config]
    if args.allow_no_auth:
        out.append("--web.config.allow-no-auth")
    if args.enable_lifecycle:
        out.append("--web.enable-lifecycle")
    if args.storage_path:
        out += ["--storage.path", args.storage_path]  # the workers share the file (one writer at a time)
    if args.prometheus_url:
        out += ["--prometheus.url", args.prometheus_url]
    if args.alertmanager_url:
        out += ["--alertmanager.url", args.alertmanager_url]
    return out


def _supervise(args: argparse.Namespace, workers: int) -> int:
    """``--workers N``: check the config once (in a child process, so the supervisor never holds
    the targets' models), then run the workers."""
    import subprocess

    from stackwatch.listener import Limits
    from stackwatch.server import parse_listen
    from stackwatch.webconfig import load_web_config
    from stackwatch.workers import Supervisor, supervise

    try:
        web = load_web_config(args.web_config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    storage = ["--storage.url", args.storage_url] if args.storage_url else [
        "--storage.path", args.storage_path or "data/stackwatch.db"]
    check = subprocess.run([sys.executable, "-m", "stackwatch", "check-config", args.config_file, *storage],
                           stdout=subprocess.DEVNULL)
    if check.returncode != 0:
        return 1  # check-config printed the located errors
    host, port = parse_listen(args.listen)
    env_clean = {k: v for k, v in os.environ.items() if k not in ("STACKWATCH_WORKERS", "STACKWATCH_SHARD_INDEX",
                                                                   "STACKWATCH_SHARD_COUNT")}
    os.environ.clear()
    os.environ.update(env_clean)  # the workers are single processes with their own shard
    if args.storage_url:
        os.environ["STACKWATCH_STORAGE_URL"] = args.storage_url  # not in the workers' command lines
    try:
        limits = Limits(max_connections=max(1, args.max_connections), header_timeout=max(0.5, args.header_timeout),
                        idle_timeout=max(0.5, args.idle_timeout))
        asyncio.run(supervise(Supervisor(host, port, workers, _worker_args(args), web, args.web_config,
                                         args.allow_no_auth), limits))
    except OSError as exc:
        print(f"stackwatch: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


def _event_loop_runner(choice: str) -> Any:
    """asyncio.run, or uvloop.run for ``uvloop`` (ImportError if missing) and for ``auto`` when installed."""
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.run
    return uvloop.run


def _shard(index: str, count: int) -> tuple[int, int]:
    if index == "hostname":
        m = re.search(r"(\d+)$", socket.gethostname())
        if m is None:
            raise ValueError(f"--shard.index hostname: the host name {socket.gethostname()!r} does not end in a number")
        index = m.group(1)
    if not index.isdigit() or count < 1 or int(index) >= count:
        raise ValueError(f"--shard.index must be a number from 0 to --shard.count - 1 ({count - 1}), got {index!r}")
    return int(index), count


def _alertmanager_config(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="stackwatch alertmanager-config",
                                description="Write the bundle's Alertmanager config, runnable where it is written.")
    p.add_argument("--out", required=True, help="the file to write (mode 0600: it may hold the bot token)")
    p.add_argument("--bundle", default=None, help="a folder written by `stackwatch bundle` (default: the installed one)")
    p.add_argument("--bot-token-file", required=True, help="file holding the Telegram bot token")
    p.add_argument("--inline-token", action="store_true",
                   help="put the token in the config (Alertmanager 0.25 has no bot_token_file)")
    p.add_argument("--webhook-url", default=None)
    p.add_argument("--telegram-api-url", default=None, help="another Bot API server (default: api.telegram.org)")
    p.add_argument("--no-email", action="store_true", help="drop the e-mail integration")
    args = p.parse_args(argv)
    import yaml

    from stackwatch.bundle import alertmanager_config, write_private

    token = None
    if args.inline_token:
        try:
            token = Path(args.bot_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"stackwatch: cannot read --bot-token-file {args.bot_token_file}: {exc.strerror}", file=sys.stderr)
            return 1
        if not token:
            print(f"stackwatch: --bot-token-file {args.bot_token_file} is empty", file=sys.stderr)
            return 1
    try:
        doc = alertmanager_config(bundle=Path(args.bundle) if args.bundle else None, bot_token=token,
                                  bot_token_file=None if token else args.bot_token_file,
                                  telegram_api_url=args.telegram_api_url, webhook_url=args.webhook_url,
                                  email=not args.no_email)
    except FileNotFoundError as exc:
        print(f"stackwatch: {exc}", file=sys.stderr)
        return 1
    write_private(Path(args.out), yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {args.out} (templates: {doc['templates'][0]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "demo":
        from stackwatch.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "bundle":
        bp = _sub_parser("bundle", SUBCOMMANDS["bundle DIR"])
        bp.add_argument("dir", help="the folder to write (created if missing)")
        bargs = bp.parse_args(argv[1:])
        from stackwatch.bundle import export

        files = export(Path(bargs.dir))
        print(f"wrote {len(files)} files of the monitoring bundle to {bargs.dir}")
        return 0
    if argv and argv[0] == "report":
        from stackwatch.report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "kubernetes-manifests":
        kp = _sub_parser("kubernetes-manifests", SUBCOMMANDS["kubernetes-manifests DIR"])
        kp.add_argument("dir", help="the folder to write")
        kp.add_argument("--namespace", default="monitoring")
        kp.add_argument("--replicas", type=int, default=2)
        kp.add_argument("--image", default=None)
        kargs = kp.parse_args(argv[1:])
        from stackwatch.kubernetes import write

        for path in write(Path(kargs.dir), namespace=kargs.namespace, replicas=max(1, kargs.replicas),
                          image=kargs.image):
            print(f"wrote {path}")
        return 0
    if argv and argv[0] == "alertmanager-config":
        return _alertmanager_config(argv[1:])
    if argv and argv[0] == "check-config":
        cp = _sub_parser("check-config", SUBCOMMANDS["check-config FILE"])
        cp.add_argument("file", help="the config file")
        cp.add_argument("--storage.path", dest="storage_path", default=None,
                        help="also check this state store file (read only)")
        cp.add_argument("--storage.url", dest="storage_url", default=None, help="also check this state store database")
        cargs = cp.parse_args(argv[1:])
        return check_config(cargs.file, cargs.storage_path, cargs.storage_url)
    args = _parser().parse_args(argv)
    if args.config_check:
        return check_config(args.config_file)
    # A SIGHUP before the event loop takes it over (start-up: imports, loading the config, a
    # supervisor checking it) would end the process with the signal's default action; the config
    # being loaded is the newest anyway.  Workers inherit this until their own loop takes over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    from stackwatch.app import Exporter
    from stackwatch.logsetup import setup_logging
    from stackwatch.server import serve

    setup_logging("warning" if args.log_level == "warn" else args.log_level, args.log_format)
    from stackwatch.listener import Limits
    from stackwatch.webconfig import load_web_config

    try:
        shard = _shard(args.shard_index, args.shard_count)
    except ValueError as exc:
        print(f"stackwatch: {exc}", file=sys.stderr)
        return 2
    from stackwatch.workers import worker_count

    try:
        workers = worker_count(args.workers)
    except ValueError as exc:
        print(f"stackwatch: {exc}", file=sys.stderr)
        return 2
    if workers > 1:
        if shard != (0, 1):
            print("stackwatch: --workers and --shard.* exclude each other (the workers are the shards)",
                  file=sys.stderr)
            return 2
        return _supervise(args, workers)
    try:
        config = load_config(args.config_file, shard=shard)  # every target checked, the shard's kept
        web = load_web_config(args.web_config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    from stackwatch.state import StateStore, StoreError

    try:
        store = StateStore.open(args.storage_path, args.storage_url)
    except StoreError as exc:
        print(f"stackwatch: {exc}", file=sys.stderr)
        return 1
    limits = Limits(max_connections=max(1, args.max_connections), header_timeout=max(0.5, args.header_timeout),
                    idle_timeout=max(0.5, args.idle_timeout))
    exporter = Exporter(args.config_file, config, web_config_path=args.web_config, web=web, shard=shard, store=store)
    exporter.allow_no_auth = args.allow_no_auth
    del config  # the exporter holds what it probes
    exporter.remotes.prometheus = args.prometheus_url
    exporter.remotes.alertmanager = args.alertmanager_url
    try:
        runner = _event_loop_runner(args.event_loop)
    except ImportError:
        print("stackwatch: --event-loop uvloop: uvloop is not installed (pip install uvloop)",
              file=sys.stderr)
        return 2
    try:
        runner(serve(exporter, args.listen, args.enable_lifecycle, limits))
    except OSError as exc:
        print(f"stackwatch: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
