"""`pe`, the one entry point: serve, images build, run, bench."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pe.settings import FIELD_HELP, Settings, env_name, load_settings

if TYPE_CHECKING:
    from catalog.store import ImageStore


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field (`--max-connections` for PE_MAX_CONNECTIONS, …)."""
    group = parser.add_argument_group("settings (flags override PE_* environment variables)")
    for item in dataclasses.fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        group.add_argument(
            flag, dest=f"setting_{item.name}", metavar=env_name(item.name), help=FIELD_HELP[item.name]
        )


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        item.name: getattr(args, f"setting_{item.name}", None) for item in dataclasses.fields(Settings)
    }
    try:
        return load_settings(overrides)
    except ValueError as error:
        sys.exit(f"pe: {error}")


def default_edge_url() -> str:
    return os.environ.get("PE_EDGE_URL", f"http://127.0.0.1:{os.environ.get('PE_PORT', '8000')}")


def cmd_serve(args: argparse.Namespace) -> int:
    """`pe serve`, and `pe edge`: the same edge without the in-process worker."""
    from api.server import serve
    from pe.logs import setup_logging

    settings = settings_from(args)
    setup_logging(settings.log_level)
    with_worker = args.command == "serve"
    if not with_worker and not settings.worker_token:
        sys.exit("pe edge: set PE_WORKER_TOKEN (or --worker-token): its workers authenticate with it")
    asyncio.run(serve(settings, with_worker=with_worker))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """`pe worker`: run jobs pulled from an edge (docs/workers.md)."""
    from pe.logs import setup_logging
    from worker.remote import work

    settings = settings_from(args)
    setup_logging(settings.log_level)
    if not settings.worker_token:
        sys.exit("pe worker: give the edge's worker token: --token T or PE_WORKER_TOKEN")
    return asyncio.run(work(settings, args.edge))


def cmd_images_build(args: argparse.Namespace) -> int:
    from catalog.build import BuildError, build_all
    from catalog.entry import CatalogError
    from catalog.pack import PackError
    from catalog.store import ImageStore

    settings = settings_from(args)
    store = ImageStore(settings.images_dir)
    try:
        build_all(args.ids or None, store, force=args.force, progress=lambda line: print(line, flush=True))
    except (BuildError, CatalogError) as error:
        print(f"pe images build: {error}", file=sys.stderr)
        return 1
    if not args.ids:
        try:
            pack_images(store)
        except PackError as error:  # the images are built and run loose: serving can go on
            print(f"pe images build: packing failed, images stay loose: {error}", file=sys.stderr)
    return 0


def cmd_images_pack(args: argparse.Namespace) -> int:
    from catalog.entry import CatalogError
    from catalog.pack import PackError
    from catalog.store import ImageStore

    try:
        return pack_images(ImageStore(settings_from(args).images_dir))
    except (CatalogError, PackError) as error:
        print(f"pe images pack: {error}", file=sys.stderr)
        return 1


def pack_images(store: ImageStore) -> int:
    """Pack the current images of the catalogue (catalog/pack.py); it mounts images, so needs root."""
    from catalog.entry import load_catalog
    from catalog.pack import pack_current

    if os.geteuid() != 0:
        print("pack: skipped (mounting images needs root); images stay loose", flush=True)
        return 0
    pack_current(store, list(load_catalog()), progress=lambda line: print(line, flush=True))
    return 0


def cmd_images_gc(args: argparse.Namespace) -> int:
    from catalog.entry import CatalogError, load_catalog
    from catalog.store import ImageStore

    try:
        ids = list(load_catalog())
    except CatalogError as error:
        print(f"pe images gc: {error}", file=sys.stderr)
        return 1
    garbage = ImageStore(settings_from(args).images_dir).collect_garbage(ids, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for meta in garbage.images:
        print(f"{verb} {meta.id or '?'} {meta.digest} ({meta.size / 1e6:.1f} MB)")
    for meta in garbage.copies:
        print(f"{verb} the loose copy of packed {meta.id or '?'} {meta.digest} ({meta.size / 1e6:.1f} MB)")
    for pack in garbage.packs:
        print(f"{verb} pack {pack.key} ({pack.size / 1e6:.1f} MB)")
    print(
        f"{verb} {len(garbage.images)} images, {len(garbage.copies)} loose copies, "
        f"{len(garbage.packs)} packs: {garbage.bytes / 1e6:.1f} MB"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pe.client import run_command

    return run_command(args)


def cmd_bench_run(args: argparse.Namespace) -> int:
    from pe.bench import bench_run

    return bench_run(args)


def cmd_bench_sharing(args: argparse.Namespace) -> int:
    from pe.bench_sharing import bench_sharing

    return bench_sharing(args)


def cmd_bench_erofs(args: argparse.Namespace) -> int:
    from pe.bench_erofs import bench_erofs

    return bench_erofs(args)


def cmd_bench_pack(args: argparse.Namespace) -> int:
    from pe.bench_pack import bench_pack

    return bench_pack(args)


def cmd_bench_state(args: argparse.Namespace) -> int:
    from pe.bench_state import bench_state

    return bench_state(args)


def cmd_bench_build(args: argparse.Namespace) -> int:
    from pe.bench_build import bench_build

    return bench_build(args)


def cmd_bench_h2(args: argparse.Namespace) -> int:
    from pe.bench_h2 import bench_h2

    return bench_h2(args)


def cmd_bench_vm(args: argparse.Namespace) -> int:
    from pe.bench_vm import bench_vm

    return bench_vm(args)


def cmd_bench_workers(args: argparse.Namespace) -> int:
    from pe.bench_workers import bench_workers

    return bench_workers(args)


def cmd_bench_web(args: argparse.Namespace) -> int:
    from pe.bench_web import bench_web

    return bench_web(args)


def cmd_guest_build(args: argparse.Namespace) -> int:
    from guest.build import GuestBuildError, ensure_guest

    try:
        guest = ensure_guest(settings_from(args).cache_dir, lambda line: print(f"pe guest: {line}"))
    except GuestBuildError as error:
        sys.exit(f"pe guest build: {error}")
    print(f"kernel {guest.kernel}\ninitrd {guest.initrd}")
    return 0


def cmd_site_build(args: argparse.Namespace) -> int:
    from web.assets import AssetError
    from web.site import build_site, cached_site

    cache_dir = settings_from(args).cache_dir
    try:
        if args.out:
            out = Path(args.out)
            build_site(out, cache_dir, api_base=args.api_base)
        else:
            out = cached_site(cache_dir, api_base=args.api_base)
    except AssetError as error:
        sys.exit(f"pe site build: {error}")
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pe", description="Program Explorer: run programs in catalogue images"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="edge + in-process worker on one port")
    add_settings_flags(serve)
    serve.add_argument("--redis", dest="setting_state", metavar="URL", help="same as --state URL")
    serve.set_defaults(handler=cmd_serve)

    edge = commands.add_parser(
        "edge", help="the edge alone: runs go to `pe worker` processes (docs/workers.md)"
    )
    add_settings_flags(edge)
    edge.add_argument("--redis", dest="setting_state", metavar="URL", help="same as --state URL")
    edge.set_defaults(handler=cmd_serve)

    worker = commands.add_parser(
        "worker", help="run jobs pulled from an edge over HTTP/2; only outbound connections (docs/workers.md)"
    )
    worker.add_argument(
        "--edge", default=default_edge_url(), help="edge URL (default: $PE_EDGE_URL or local)"
    )
    worker.add_argument("--token", dest="setting_worker_token", metavar="T", help="same as --worker-token T")
    worker.add_argument(
        "--runner", dest="setting_runners", choices=["sandbox", "vm"], help="same as --runners KIND"
    )
    add_settings_flags(worker)
    worker.set_defaults(handler=cmd_worker)

    images = commands.add_parser("images", help="build and manage catalogue images")
    image_commands = images.add_subparsers(dest="images_command", required=True)
    build = image_commands.add_parser(
        "build", help="build images (all when no ID is given, then pack them: see `pe images pack`)"
    )
    build.add_argument("ids", nargs="*", metavar="ID")
    build.add_argument("--force", action="store_true", help="rebuild even when up to date")
    add_settings_flags(build)
    build.set_defaults(handler=cmd_images_build)
    pack = image_commands.add_parser(
        "pack", help="put the current images in one pack, files they share stored once (needs root)"
    )
    add_settings_flags(pack)
    pack.set_defaults(handler=cmd_images_pack)
    gc = image_commands.add_parser(
        "gc",
        help="delete images that are not the current image of a catalogue id, loose copies of packed "
        "images and packs that serve none",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    add_settings_flags(gc)
    gc.set_defaults(handler=cmd_images_gc)

    run = commands.add_parser(
        "run",
        help="run a program on an edge and print its output",
        usage="pe run IMAGE [-f FILE…] [--stdin FILE] [--env K=V…] [-- ARGV…]",
    )
    run.add_argument("image", help="catalogue id, optionally id@sha256:…")
    run.add_argument("argv", nargs="*", help="the command to run (after --)")
    run.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="input file, placed at NAME (default: PATH as given) under /work",
    )
    run.add_argument("--stdin", metavar="FILE", help="file given as standard input ('-' for this one)")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable")
    run.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="catalogue option")
    run.add_argument(
        "--limit", action="append", default=[], metavar="NAME=VALUE", help="limit, e.g. wall_ms=2000"
    )
    run.add_argument("--runner", choices=["sandbox", "vm"], help="runner (default: the edge's)")
    run.add_argument("--no-cache", action="store_true", help="run again even if a cached result exists")
    run.add_argument(
        "-o", "--output-dir", default="pe-output", help="where output files go (default: pe-output)"
    )
    run.add_argument("--edge", default=default_edge_url(), help="edge URL (default: $PE_EDGE_URL or local)")
    run.add_argument("-v", "--verbose", action="store_true", help="print the result summary to stderr")
    run.set_defaults(handler=cmd_run)

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    bench_run = bench_commands.add_parser(
        "run", help="latency of a trivial run through the edge vs bare crun"
    )
    bench_run.add_argument("-n", "--runs", type=int, default=200, help="runs per side (default 200)")
    bench_run.add_argument("--image", default="busybox")
    bench_run.add_argument("--warmup", type=int, default=10)
    add_settings_flags(bench_run)
    bench_run.set_defaults(handler=cmd_bench_run)
    bench_build = bench_commands.add_parser(
        "build", help="image build time by phase; the pipeline vs a bare mkfs.erofs of the same tree"
    )
    bench_build.add_argument("ids", nargs="*", metavar="ID", help="catalogue ids (default: all)")
    bench_build.add_argument(
        "--rounds", type=int, default=3, help="pipeline/mkfs rounds per image (default 3)"
    )
    add_settings_flags(bench_build)
    bench_build.set_defaults(handler=cmd_bench_build)
    bench_erofs = bench_commands.add_parser(
        "erofs", help="wire.erofs listing and reading an image vs the kernel's erofs (loop mount)"
    )
    bench_erofs.add_argument("--image", metavar="ID", help="catalogue id (default: the largest image)")
    bench_erofs.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    add_settings_flags(bench_erofs)
    bench_erofs.set_defaults(handler=cmd_bench_erofs)
    bench_pack = bench_commands.add_parser(
        "pack", help="store bytes and build time of a pack; run latency from the pack vs a loose image"
    )
    bench_pack.add_argument("--image", default="python3", help="image whose runs are timed (default python3)")
    bench_pack.add_argument(
        "--command", default="python3 -c pass", help="what runs in it (default: python3 -c pass)"
    )
    bench_pack.add_argument("-n", "--runs", type=int, default=200, help="runs per side (default 200)")
    bench_pack.add_argument("--warmup", type=int, default=10)
    add_settings_flags(bench_pack)
    bench_pack.set_defaults(handler=cmd_bench_pack)
    bench_state = bench_commands.add_parser(
        "state", help="cache hits and fresh runs with the Redis state vs the in-memory state"
    )
    bench_state.add_argument("-n", "--runs", type=int, default=400, help="requests per case and state")
    bench_state.add_argument("--image", default="busybox")
    add_settings_flags(bench_state)
    bench_state.set_defaults(handler=cmd_bench_state)
    sharing = bench_commands.add_parser(
        "sharing", help="bytes of identical files across the catalogue's images"
    )
    sharing.add_argument("--top", type=int, default=8, help="image pairs to list (default 8)")
    add_settings_flags(sharing)
    sharing.set_defaults(handler=cmd_bench_sharing)
    bench_h2 = bench_commands.add_parser(
        "h2", help="HTTP/2 at the edge: cache-hit throughput vs a hello app, idle memory, retire time"
    )
    bench_h2.add_argument(
        "parts", nargs="*", metavar="PART", help="throughput, memory, retire (default: all three)"
    )
    bench_h2.add_argument("-n", "--requests", type=int, default=20000, help="h2load requests a round")
    bench_h2.add_argument("-c", "--clients", type=int, default=8, help="h2load clients (default 8)")
    bench_h2.add_argument(
        "-m", "--streams", type=int, default=10, help="h2load streams a client (default 10)"
    )
    bench_h2.add_argument("--rounds", type=int, default=3, help="throughput rounds a side (default 3)")
    bench_h2.add_argument("--image", default="busybox", help="image of the cached run (default busybox)")
    bench_h2.add_argument(
        "--idle",
        type=int,
        nargs="+",
        default=[1000, 10000],
        help="idle connection counts",
    )
    bench_h2.add_argument(
        "--limit", type=int, default=1000, help="connection limit for retire (default 1000)"
    )
    bench_h2.add_argument("--samples", type=int, default=300, help="new connections for retire")
    bench_h2.set_defaults(handler=cmd_bench_h2)
    bench_vm = bench_commands.add_parser(
        "vm", help="a /bin/true run on the vm runner, cold and from the warm pool, vs a bare microvm boot"
    )
    bench_vm.add_argument("--image", default="busybox", help="image of the run (default busybox)")
    bench_vm.add_argument("--rounds", type=int, default=5, help="rounds of the three sides (default 5)")
    add_settings_flags(bench_vm)
    bench_vm.set_defaults(handler=cmd_bench_vm)

    bench_workers = bench_commands.add_parser(
        "workers", help="remote workers: dispatch overhead and throughput vs in-process and the runner"
    )
    bench_workers.add_argument("-n", "--runs", type=int, default=200, help="sequential runs a side")
    bench_workers.add_argument("--jobs", type=int, default=60, help="runs a throughput round (default 60)")
    add_settings_flags(bench_workers)
    bench_workers.set_defaults(handler=cmd_bench_workers)
    bench_web = bench_commands.add_parser(
        "web", help="the playground in Chromium: Pyodide parse vs CPython, cached run to paint, ready, bytes"
    )
    bench_web.add_argument("--rounds", type=int, default=20, help="parses a side (default 20)")
    bench_web.add_argument("--runs", type=int, default=20, help="cached runs clicked (default 20)")
    bench_web.add_argument("--loads", type=int, default=3, help="fresh page loads an encoding (default 3)")
    bench_web.set_defaults(handler=cmd_bench_web)

    guest = commands.add_parser("guest", help="the vm runner's guest: kernel and initramfs (docs/vm.md)")
    guest_commands = guest.add_subparsers(dest="guest_command", required=True)
    guest_build = guest_commands.add_parser("build", help="build the guest, or find it in the cache")
    add_settings_flags(guest_build)
    guest_build.set_defaults(handler=cmd_guest_build)

    site = commands.add_parser("site", help="the static web site (docs/web.md)")
    site_commands = site.add_subparsers(dest="site_command", required=True)
    site_build = site_commands.add_parser("build", help="render the site: playground, catalogue, API docs")
    site_build.add_argument(
        "--out", metavar="DIR", help="where to write it (default: a cache folder keyed by its inputs)"
    )
    site_build.add_argument(
        "--api-base", default="", metavar="URL", help="the API's address (default: the site's own origin)"
    )
    add_settings_flags(site_build)
    site_build.set_defaults(handler=cmd_site_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after the first "--" is the program's argv, kept exactly (argparse's own handling
    # of "--" inside a subcommand drops or rejects it).
    program: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, program = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if program:
        if args.command != "run":
            parser.error("only `pe run` takes a program after --")
        args.argv = [*args.argv, *program]
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
