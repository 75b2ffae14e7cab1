"""The operations' commands: import-devpi, backup, restore, verify, cache, prefetch, bundle,
reindex, advisories; each prints what the operation did."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.base import CommandError, confirm
from app.core.config import Settings
from app.core.storage_choice import make_storage
from app.data.db import Database
from app.ops.osv_import import import_osv
from app.ops.prepare import check_data_dir, migrate
from app.services import fulltext
from app.services.indexes import get_index_by_path

if TYPE_CHECKING:
    from app.ops.targets import Target


# Each imports its module when it runs: `prepare` runs on every container start and loads none
# of them (prefetch, for one, brings the whole mirror service and its upstream client).


def cmd_import_devpi(settings: Settings, args: argparse.Namespace) -> None:
    """import-devpi DIR: import a devpi-server export (devpi-export DIR) into an empty pyshelf."""
    from app.ops.devpi_import import import_export  # when it runs: see above

    directory = Path(args.directory)
    report = import_export(settings, directory)
    print(f"imported the devpi-server export in {directory}:")
    for line in report.lines():
        print(f"  {line}")


def cmd_backup(settings: Settings, args: argparse.Namespace) -> None:
    """backup PATH: write an archive while the server keeps serving."""
    from app.ops.backup import backup  # when it runs: see above
    from app.services.cache import human_bytes

    summary = backup(
        settings,
        args.path,  # a string: a trailing "/" names a folder, even one not made yet
        with_mirror_files=not args.without_mirror_files,
        force=args.force,
    )
    rate = summary.bytes / summary.seconds if summary.seconds else 0.0
    print(
        f"backup: {summary.path}: {summary.database} database and {summary.blobs} files "
        f"({human_bytes(summary.bytes)}) in {summary.seconds:.1f} s ({human_bytes(rate)}/s)"
    )
    if summary.left_out:
        why = sorted(set(summary.left_out.values()))
        print(
            f"  {len(summary.left_out)} mirror-cached files left out ({', '.join(why)}): "
            "the restored server fetches them again on demand"
        )


def cmd_restore(settings: Settings, args: argparse.Namespace) -> None:
    """restore PATH: into an empty DATA_DIR (or over one with --force, server stopped)."""
    from app.ops.restore import restore
    from app.services.cache import human_bytes  # when it runs: see above

    if args.force and Path(args.path).is_file():  # (a missing archive: restore says so)
        where = Path(settings.data_dir).resolve()
        confirm(args, f"Replace pyshelf's data in {where} by the backup (server stopped)?")
    summary = restore(settings, Path(args.path), force=args.force)
    counts = ", ".join(f"{n} {table}" for table, n in summary.counts.items())
    print(
        f"restore: {summary.database} database ({counts}) and {summary.blobs} files "
        f"({human_bytes(summary.bytes)}) into {Path(settings.data_dir).resolve()} "
        f"in {summary.seconds:.1f} s"
    )
    if summary.left_out:
        print(f"  {summary.left_out} mirror-cached files were not in the backup: fetched on demand")
    print("  start the server as usual (pyshelf serve): it migrates the schema if needed")


def cmd_verify(settings: Settings, args: argparse.Namespace) -> None:
    """verify [--repair]: check every blob and row; exit 1 when damage is left; warn about
    data that other users may read."""
    # when it runs: see above
    from app.ops.integrity import format_open_paths, format_report, open_to_others, verify

    report = verify(settings, repair=args.repair)
    print(format_report(report))
    found = open_to_others(settings)
    if found:  # a warning: the exit code stays about damage
        print(format_open_paths(found, settings))
    if report.is_damaged:
        raise CommandError("damage found (see above)")


def cmd_cache(settings: Settings, args: argparse.Namespace) -> None:
    """cache stats|prune: the mirror cache's size and hit ratio; evict down to the cap now."""
    from app.services.cache import (  # when it runs: see above
        MirrorCache,
        human_bytes,
        stats_as_dict,
    )

    database = Database(settings.database_url)
    cache = MirrorCache(settings, database, make_storage(settings))
    try:
        if args.action == "prune":
            adopted, adopted_bytes = cache.adopt()
            if adopted:
                size = human_bytes(adopted_bytes)
                print(f"counted {adopted} cached files that were not recorded yet ({size})")
            cap = args.max_size if args.max_size is not None else settings.mirror_cache_max_bytes
            if cap is None:
                raise CommandError("no cap: set MIRROR_CACHE_MAX_SIZE (or give --max-size)")
            result = cache.evict(max_bytes=cap)
            print(
                f"cache prune: removed {result.removed_files} files "
                f"({human_bytes(result.removed_bytes)}); {human_bytes(result.total_after)} "
                f"cached, cap {human_bytes(cap)}"
                + (f" ({result.skipped})" if result.skipped else "")
            )
            return
        stats = cache.stats()
        if args.json:
            print(json.dumps(stats_as_dict(stats), indent=2))
            return
        cap = f"{human_bytes(stats.max_bytes)}" if stats.max_bytes else "none"
        used = f" ({stats.total_bytes * 100 / stats.max_bytes:.0f} %)" if stats.max_bytes else ""
        ratio = f"{stats.hit_ratio * 100:.1f} %" if stats.hit_ratio is not None else "-"
        print(f"mirror cache: {human_bytes(stats.total_bytes)} in {stats.files} files{used}")
        print(f"cap (MIRROR_CACHE_MAX_SIZE): {cap}")
        print(f"hit ratio: {ratio} ({stats.hits} hits, {stats.misses} misses)")
        for path, row in stats.per_index.items():
            print(
                f"  {path}: {human_bytes(row['bytes'])} in {row['files']} files, "
                f"{row['hits']} hits, {row['misses']} misses"
            )
    finally:
        database.engine.dispose()


def cmd_prefetch(settings: Settings, args: argparse.Namespace) -> None:
    """prefetch -r FILE [REQ ...] [--index USER/NAME] [target options]: resolve what the
    requirements need for the targets and fill the cache with it; exit 1 on any miss."""
    from app.ops.prefetch import format_summary, prefetch  # see above
    from app.ops.requirements import Requirements, parse_line, read_requirements

    requirements = Requirements([], pre=args.pre)
    for path in args.requirement or []:
        found = read_requirements(Path(path))
        requirements.lines += found.lines
        requirements.pre = requirements.pre or found.pre
    requirements.lines += [parse_line(text) for text in args.requirements]
    if not requirements.lines:
        raise CommandError("nothing to prefetch: give -r requirements.txt or requirements")
    targets = targets_of(args)
    check_data_dir(settings)
    migrate(settings)
    summary = prefetch(settings, requirements, targets, args.index)
    print(format_summary(summary))
    if summary.misses:
        raise CommandError(
            f"{len(summary.misses)} things a complete install needs could not be fetched "
            "(listed above)"
        )


def cmd_bundle_export(settings: Settings, args: argparse.Namespace) -> None:
    """bundle export -o PATH [-r FILE] [REQ ...] [target options] [--all-cached] [--index
    USER/NAME]: resolve what the requirements need for the targets (as prefetch), fetch what
    the mirror lacks, and write those files with their pages; exit 1 on any miss."""
    from app.ops.bundle_export import export_bundle, files_for  # see above
    from app.ops.prefetch import format_summary, prefetch
    from app.ops.requirements import Requirements, parse_line, read_requirements
    from app.services.cache import human_bytes

    requirements = Requirements([], pre=args.pre)
    for path in args.requirement or []:
        found = read_requirements(Path(path))
        requirements.lines += found.lines
        requirements.pre = requirements.pre or found.pre
    requirements.lines += [parse_line(text) for text in args.project or []]
    if not requirements.lines and not args.all_cached and not args.index:
        raise CommandError("nothing to export: give -r, --project, --all-cached or --index")
    targets = targets_of(args)
    check_data_dir(settings)
    migrate(settings)
    files: list[tuple[str, str]] = []
    if requirements.lines:
        fetched = prefetch(settings, requirements, targets, args.mirror)
        print(format_summary(fetched))
        if fetched.misses:
            raise CommandError(
                f"{len(fetched.misses)} things a complete install needs could not be fetched "
                "(listed above): no bundle written"
            )
        files = sorted({(f.project, f.filename) for f in fetched.plan.files})
    if args.all_cached:
        database = Database(settings.database_url)
        try:
            with database.session() as session:
                mirror = get_index_by_path(session, args.mirror)
                if mirror is None or not mirror.is_mirror:
                    raise CommandError(f"{args.mirror} is not a mirror index here")
                files = sorted(set(files) | set(files_for(session, mirror)))
        finally:
            database.engine.dispose()
    summary = export_bundle(
        settings,
        Path(args.output),
        mirror_path=args.mirror,
        files=files,
        stage_paths=args.index or [],
        force=args.force,
    )
    print(
        f"bundle export: {summary.path}: bundle {summary.bundle_id}, {summary.projects} projects, "
        f"{summary.files} files, {summary.blobs} blobs ({human_bytes(summary.bytes)}) "
        f"in {summary.seconds:.1f} s"
    )


def cmd_bundle_import(settings: Settings, args: argparse.Namespace) -> None:
    """bundle import PATH [--into USER/NAME]: merge a bundle into this (running) server."""
    from app.ops.bundle_import import import_bundle  # see above
    from app.services.cache import human_bytes

    check_data_dir(settings)
    migrate(settings)
    summary = import_bundle(settings, Path(args.path), into=args.into)
    for path in summary.indexes_created:
        print(f"created offline mirror {path}" if args.into == path else f"created index {path}")
    print(
        f"bundle import: bundle {summary.bundle_id} (made {summary.created_at}): "
        f"{summary.projects} projects imported ({summary.files} files), "
        f"{summary.already} already imported from it; {summary.blobs_stored} blobs stored "
        f"({human_bytes(summary.bytes)}), {summary.blobs_reused} already here, "
        f"in {summary.seconds:.1f} s"
    )


def cmd_reindex(settings: Settings, args: argparse.Namespace) -> None:
    """reindex: rebuild the full-text search index from the database and the docs zips."""
    counts = fulltext.rebuild(settings)
    print("reindex: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))


def cmd_advisories(settings: Settings, args: argparse.Namespace) -> None:
    """advisories import FILE: replace the stored advisories with an OSV export's."""
    database = Database(settings.database_url)
    with database.session() as session:
        summary = import_osv(session, Path(args.file), progress=not args.quiet)
    database.engine.dispose()
    print(summary.line(Path(args.file)))


def targets_of(args: argparse.Namespace) -> list[Target]:
    """The target environments the options of add_target_options() name."""
    from app.ops.targets import parse_targets  # when it runs: see above

    return parse_targets(args.python_version, args.platform, args.implementation)
