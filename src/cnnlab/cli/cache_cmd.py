"""cnnlab cache list / clean: the decoded-pixel and feature caches under $CNNLAB_HOME (data/cache.py).

The auto-fit priors' history (``$CNNLAB_HOME/priors/history.jsonl``, cnnlab.autofit.history) is
no cache: ``list`` names it and its record count, ``clean`` never deletes it."""

from __future__ import annotations

import argparse

from cnnlab.cli.common import add_json_flag


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list or clean the decoded-pixel and feature caches",
                       description="cnnlab keeps each data source's decoded pixels (and frozen-backbone features) "
                                   "under $CNNLAB_HOME (default ~/.cache/cnnlab), at most CNNLAB_CACHE_MAX_GB "
                                   "(default 50) together; the least recently used entries go first. The auto-fit "
                                   "priors' history under $CNNLAB_HOME/priors is no cache: listed, never cleaned.")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    q = csub.add_parser("list", help="every cache entry: kind, size, last use, images, source")
    add_json_flag(q, "the entries")
    q.set_defaults(func=run_list)
    c = csub.add_parser("clean", help="delete old or all entries, and temporary folders left by killed processes",
                        description="Deletes the temporary folders of dead processes, the entries unused for "
                                    "--older-than (e.g. 30d, 12h), or every entry with --all, then applies the "
                                    "size cap (CNNLAB_CACHE_MAX_GB).")
    c.add_argument("--older-than", metavar="AGE", help="delete entries not used for AGE (30d, 12h, 90m)")
    c.add_argument("--all", action="store_true", help="delete every entry")
    add_json_flag(c, "the deleted entries")
    c.set_defaults(func=run_clean)


def _total(rows: list[dict]) -> str:
    return f"{len(rows)} entries, {sum(r['bytes'] for r in rows) / 1e9:.2f} GB"


def run_list(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import print_json, print_table
    from cnnlab.data import cache
    from cnnlab.utils.paths import cnnlab_home

    rows = [e.as_row() for e in reversed(cache.list_entries())]  # most recently used first
    if args.json:
        print_json(rows)
        return 0
    print_table(rows, ["kind", "key", "size_mb", "last_use", "images", "source"])
    print(f"{_total(rows)} in {cnnlab_home()} (cap {cache.max_bytes() / 1e9:g} GB: CNNLAB_CACHE_MAX_GB)")
    _history_line()
    return 0


def _history_line() -> None:
    """The auto-fit priors' history, which ``clean`` keeps (cnnlab.autofit.history)."""
    from cnnlab.autofit import history

    path = history.history_path()
    if path is not None and path.is_file():
        print(f"priors history: {len(history.load(path))} records in {path} (auto-fit learns from it; "
              f"not a cache: `cnnlab cache clean` keeps it; {history.HISTORY_ENV}=0 turns it off)")


def run_clean(args: argparse.Namespace) -> int:
    from cnnlab.cli.common import print_json
    from cnnlab.data import cache

    age = cache.parse_age(args.older_than) if args.older_than else None
    rows = [e.as_row() for e in cache.clean(older_than=age, everything=args.all)]
    if args.json:
        print_json(rows)
    else:
        print(f"deleted {_total(rows)}")
    return 0
