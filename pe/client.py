"""`pe run`: a terminal client of any edge.

It sends the spec as a cpio archive (binary-safe), asks for the cpio response, writes the program's
stdout and stderr to its own, output files under a folder, and exits with the program's status:
the exit code, 128 + signal for a signal, 124 for a timeout (as timeout(1)), 137 for oom, and 125
when the service itself failed (an HTTP error, an unreachable edge, an `error` result).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import httpx

from wire.errors import WireError
from wire.result import RunOutput, Status, unpack_output
from wire.spec import parse_spec, spec_to_cpio

EXIT_TIMEOUT = 124
EXIT_SERVICE = 125
EXIT_OOM = 137


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"pe run: {what} {item!r} is not NAME=VALUE")
        pairs[key] = value
    return pairs


def _option_value(raw: str) -> object:
    """Options typed as JSON when they parse as JSON numbers or booleans, else kept as text."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, bool | int | float) else raw


def _read_input(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def spec_object(args: argparse.Namespace) -> dict:
    files = {}
    for item in args.file:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = item, item
        files[name] = {"base64": base64.b64encode(_read_input(path)).decode()}
    spec: dict = {"image": args.image, "argv": args.argv, "env": _pairs(args.env, "--env"), "files": files}
    if args.stdin:
        spec["stdin"] = {"base64": base64.b64encode(_read_input(args.stdin)).decode()}
    if args.option:
        spec["options"] = {
            key: _option_value(value) for key, value in _pairs(args.option, "--option").items()
        }
    if args.limit:
        spec["limits"] = {key: int(value) for key, value in _pairs(args.limit, "--limit").items()}
    if args.runner:
        spec["runner"] = args.runner
    if args.no_cache:
        spec["cache"] = False
    return spec


def exit_status(output: RunOutput) -> int:
    result = output.result
    if result.status in (Status.OK, Status.EXIT):
        return result.exit_code or 0
    if result.status == Status.SIGNAL:
        return 128 + (result.signal or 0)
    if result.status == Status.TIMEOUT:
        return EXIT_TIMEOUT
    if result.status == Status.OOM:
        return EXIT_OOM
    if result.status == Status.OUTPUT_LIMIT:
        return result.exit_code if result.exit_code is not None else 128 + (result.signal or 9)
    return EXIT_SERVICE


def write_outputs(output: RunOutput, folder: Path) -> list[Path]:
    written = []
    for name, data in output.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def summary(output: RunOutput) -> str:
    result = output.result
    text = (
        f"pe: {result.status} exit_code={result.exit_code} signal={result.signal} "
        f"wall_ms={result.wall_ms:.1f} cpu_ms={result.cpu_ms:.1f} max_rss_kib={result.max_rss_kib} "
        f"runner={result.runner} cached={str(result.cached).lower()} id={result.id}"
    )
    return text + (f"\npe: {result.message}" if result.message else "")


def run_command(args: argparse.Namespace) -> int:
    try:
        body = spec_to_cpio(parse_spec(spec_object(args)))
    except (WireError, OSError) as error:
        print(f"pe run: {error}", file=sys.stderr)
        return EXIT_SERVICE
    url = args.edge.rstrip("/") + "/api/v1/run"
    headers = {"Content-Type": "application/x-cpio", "Accept": "application/x-cpio"}
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=300)
    except httpx.HTTPError as error:
        print(f"pe run: cannot reach {url}: {error}", file=sys.stderr)
        return EXIT_SERVICE
    if response.status_code != 200:
        try:
            error = response.json()["error"]
            print(f"pe run: {response.status_code} {error['code']}: {error['message']}", file=sys.stderr)
        except (ValueError, KeyError, TypeError):
            print(f"pe run: {response.status_code} from {url}", file=sys.stderr)
        return EXIT_SERVICE
    output = unpack_output(response.content)
    sys.stdout.buffer.write(output.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(output.stderr)
    sys.stderr.flush()
    for path in write_outputs(output, Path(args.output_dir)):
        print(f"pe: wrote {path}", file=sys.stderr)
    if args.verbose or output.result.status not in (Status.OK, Status.EXIT):
        print(summary(output), file=sys.stderr)
    return exit_status(output)
