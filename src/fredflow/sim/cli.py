"""Command line of the simulator: ``python -m fredflow.sim`` / ``fredflow sim``.

:func:`config_to_argv` and :func:`parse_args` are inverse: every
:class:`SimConfig` survives the round trip, which is how :class:`SimProcess`
hands its configuration to the subprocess.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import date

from fredflow.sim.ratelimit import RATE_LIMIT_SCOPES
from fredflow.sim.server import ALL_FAULT_KINDS, FAULT_KINDS, SimConfig, load_keys, run

__all__ = ["build_parser", "config_to_argv", "main", "parse_args"]

_DEFAULTS = SimConfig()


def _kinds(text: str) -> tuple[str, ...]:
    """Comma-separated list -> tuple (empty items dropped)."""
    return tuple(k for k in text.split(",") if k)


def _counts(text: str) -> tuple[int, ...]:
    """Comma-separated integers -> tuple (empty items dropped)."""
    try:
        return tuple(int(k) for k in text.split(",") if k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fredflow sim",
        description="Serve a deterministic FRED-compatible API at http://HOST:PORT/fred.",
    )
    p.add_argument("--port", type=int, metavar="P", default=8000, help="TCP port, 0 = any free port (default 8000)")
    p.add_argument("--host", metavar="H", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--series", dest="n_series", type=int, metavar="N", default=_DEFAULTS.n_series, help="number of series")
    p.add_argument("--seed", type=int, metavar="S", default=_DEFAULTS.seed, help="catalog and fault seed")
    p.add_argument("--obs-per-series", type=int, metavar="N", default=None, help="exact observations per (non-long) series")
    p.add_argument("--long-series", type=int, metavar="N", default=None, help="extra-long series (default 2 if >= 50 series)")
    p.add_argument("--withdrawn", type=int, metavar="N", default=_DEFAULTS.withdrawn, help="listed ids answering 404")
    p.add_argument("--today", type=date.fromisoformat, metavar="DATE", default=_DEFAULTS.today, help="simulated date YYYY-MM-DD")
    p.add_argument("--rate", type=float, metavar="R", default=None, help="requests/s, token bucket (default unlimited)")
    p.add_argument("--burst", type=int, metavar="B", default=_DEFAULTS.burst, help="token bucket capacity (default 2)")
    p.add_argument("--latency", type=float, metavar="S", default=_DEFAULTS.latency, help="seconds added to every request")
    p.add_argument("--fault-rate", type=float, metavar="F", default=_DEFAULTS.fault_rate, help="fraction of faulty requests")
    p.add_argument(
        "--fault-kinds", type=_kinds, metavar="K,K", default=_DEFAULTS.fault_kinds,
        help=f"comma-separated subset of {','.join(ALL_FAULT_KINDS)} (default {','.join(FAULT_KINDS)})",
    )
    p.add_argument("--hang-seconds", type=float, metavar="S", default=_DEFAULTS.hang_seconds, help="duration of a hang fault")
    p.add_argument("--max-limit", type=int, metavar="N", default=_DEFAULTS.max_limit, help="max page size of observations")
    p.add_argument(
        "--unregistered-keys", type=_kinds, metavar="KEY,KEY", default=_DEFAULTS.unregistered_keys,
        help="comma-separated well-formed api keys answered as not registered (default 32 zeros)",
    )
    p.add_argument("--cache-mb", type=float, metavar="MB", default=_DEFAULTS.cache_mb, help="size of the body cache")
    p.add_argument(
        "--changes", type=_counts, metavar="K,K", default=_DEFAULTS.changes,
        help="simulated days already passed after --today, K changed series on each (default none)",
    )
    p.add_argument(
        "--new-series", type=int, metavar="N", default=_DEFAULTS.new_series,
        help="ids SIMN0001..N that debut one per simulated day in release 1 and a partition release (default 0)",
    )
    p.add_argument(
        "--max-vintage-dates", type=int, metavar="N", default=_DEFAULTS.max_vintage_dates,
        help="max vintage dates per real-time observations request (default 2000, as FRED)",
    )
    p.add_argument(
        "--keys", dest="keys_file", metavar="FILE", default=None,
        help="registry of api keys, one a line (# comments): only these and the demo key are registered",
    )
    p.add_argument(
        "--registered-keys", type=_kinds, metavar="KEY,KEY", default=None,
        help="comma-separated registered api keys (as --keys; both may be given)",
    )
    p.add_argument(
        "--per-minute", type=int, nargs="?", const=120, metavar="N", default=None,
        help="FRED's per-key window: N requests per minute with x-rate-limit-* headers (N default 120; default off)",
    )
    p.add_argument("--rate-window", type=float, metavar="S", default=_DEFAULTS.rate_window,
                   help="length of the --per-minute window in seconds (default 60)")
    p.add_argument("--rate-scope", choices=RATE_LIMIT_SCOPES, default=_DEFAULTS.rate_scope,
                   help="who a rate limit applies to (default: each api key)")
    p.add_argument("--background-updates", type=int, metavar="N", default=_DEFAULTS.background_updates,
                   help="series outside the catalog updated per day, listed by series/updates (default 0)")
    p.add_argument("--updates-days", type=int, metavar="N", default=None,
                   help="series/updates keeps the last N days only (FRED: about 14; default all)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimConfig, str, int]:
    """``(config, host, port)`` from command-line arguments."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    host, port = ns.pop("host"), ns.pop("port")
    keys_file, listed = ns.pop("keys_file"), ns.pop("registered_keys")
    if keys_file is not None or listed is not None:
        try:
            ns["keys"] = (*(load_keys(keys_file) if keys_file else ()), *(listed or ()))
        except OSError as exc:
            parser.error(f"--keys: {exc}")
    try:
        return SimConfig(**ns), host, port
    except ValueError as exc:
        parser.error(str(exc))


def config_to_argv(config: SimConfig) -> list[str]:
    """Command-line arguments reproducing ``config`` (host/port not included)."""
    argv = [
        "--series", str(config.n_series),
        "--seed", str(config.seed),
        "--withdrawn", str(config.withdrawn),
        "--today", config.today.isoformat(),
        "--burst", str(config.burst),
        "--latency", repr(config.latency),
        "--fault-rate", repr(config.fault_rate),
        "--fault-kinds", ",".join(config.fault_kinds),
        "--hang-seconds", repr(config.hang_seconds),
        "--max-limit", str(config.max_limit),
        "--unregistered-keys", ",".join(config.unregistered_keys),
        "--cache-mb", repr(config.cache_mb),
        "--max-vintage-dates", str(config.max_vintage_dates),
        "--rate-window", repr(config.rate_window),
        "--rate-scope", config.rate_scope,
        "--background-updates", str(config.background_updates),
    ]
    if config.keys is not None:
        argv += ["--registered-keys", ",".join(config.keys)]
    if config.updates_days is not None:
        argv += ["--updates-days", str(config.updates_days)]
    if config.per_minute is not None:
        argv += ["--per-minute", str(config.per_minute)]
    if config.changes:
        argv += ["--changes", ",".join(str(k) for k in config.changes)]
    if config.new_series:
        argv += ["--new-series", str(config.new_series)]
    if config.obs_per_series is not None:
        argv += ["--obs-per-series", str(config.obs_per_series)]
    if config.long_series is not None:
        argv += ["--long-series", str(config.long_series)]
    if config.rate is not None:
        argv += ["--rate", repr(config.rate)]
    return argv


def main(argv: Sequence[str] | None = None) -> None:
    """Run the simulator in the foreground until SIGINT/SIGTERM."""
    config, host, port = parse_args(argv)
    run(config, host, port)
