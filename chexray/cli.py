"""The `chexray` command: dispatches to the converter (offline) and the server.

Neither side is imported until its subcommand runs, so `chexray models check` works on a
server install without tensorflow or torch. The model repository's folder, unless given
on the command line, is the server's `model_dir` setting (server/settings.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from server.settings import Settings, SettingsError

if TYPE_CHECKING:
    from server.runtime.manifest import Manifest

Handler = Callable[[argparse.Namespace], int]


def settings_help() -> str:
    from server.settings import PREFIX

    lines = ["settings (environment variables; CHEXRAY_CONFIG may name a TOML file of them):"]
    defaults = Settings()
    for name in Settings.__struct_fields__:
        value = getattr(defaults, name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        lines.append(f"  {PREFIX}{name.upper():<28} default: {value if value != '' else '(empty)'}")
    lines.append("  (CHEXRAY_DATABASE_URL empty: sqlite:///<CHEXRAY_DATA_DIR>/chexray.db)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chexray", description="Chest X-ray inference server.")
    sub = parser.add_subparsers(dest="command", required=True)

    conv = sub.add_parser("convert", help="build the ONNX model repository from Keras/PyTorch")
    try:
        from convert.cli import add_arguments
    except ImportError:  # a server-only install has no converter
        pass
    else:
        add_arguments(conv)

    serve = sub.add_parser(
        "serve",
        help="start the HTTP server (builds the model repository first if it is missing)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=settings_help(),
    )
    serve.add_argument("--host", help="overrides CHEXRAY_HOST")
    serve.add_argument("--port", type=int, help="overrides CHEXRAY_PORT")
    serve.add_argument(
        "--preset",
        choices=["default", "tiny"],
        default="default",
        help="what to build when the model repository is missing",
    )
    serve.add_argument(
        "--no-build",
        action="store_true",
        help="fail instead of building a missing model repository",
    )

    from evaluation.cli import add_calibrate_arguments, add_evaluate_arguments

    add_evaluate_arguments(
        sub.add_parser(
            "evaluate",
            help="AUC, ROC and rates at the thresholds on a labelled set (CheXpert CSV)",
        )
    )
    add_calibrate_arguments(
        sub.add_parser(
            "calibrate",
            help="fit thresholds and ensemble weights on a labelled set; new model version",
        )
    )

    models = sub.add_parser("models", help="inspect the model repository")
    msub = models.add_subparsers(dest="models_command", required=True)
    check = msub.add_parser("check", help="verify files, checksums and manifest; print a summary")
    check.add_argument("dir", nargs="?", type=Path, default=None)
    versions = msub.add_parser("versions", help="list the archived manifest versions")
    versions.add_argument("--dir", type=Path, default=None)
    use = msub.add_parser(
        "use",
        help="serve an archived version again, e.g. to undo a calibration: at once on a running "
        "server given an administrator's token, else after a restart",
    )
    use.add_argument("version")
    use.add_argument("--dir", type=Path, default=None)
    _add_live_switch_arguments(use)
    precision = msub.add_parser(
        "check-precision",
        help="compare every backend and precision this machine can serve with fp32 and "
        "record the results in the manifest (the server refuses one that failed)",
    )
    precision.add_argument("--dir", type=Path, default=None)
    precision.add_argument(
        "--images",
        type=Path,
        default=None,
        help="a folder of your own X-rays (PNG, JPEG, DICOM; e.g. evaluate's images) to "
        "check on besides the generated set",
    )
    precision.add_argument("--max-images", type=int, default=200)

    audit = sub.add_parser(
        "audit",
        help="the audit log (one record per analysis) in the server's database",
    )
    asub = audit.add_subparsers(dest="audit_command", required=True)
    asub.add_parser(
        "verify",
        help="walk the hash chain: exit 0 when intact, 1 naming the first record at fault",
    )
    export = asub.add_parser("export", help="records as JSON Lines, oldest first")
    export.add_argument("--since", type=_when, help="from this time (ISO 8601; UTC if no zone)")
    export.add_argument("--until", type=_when, help="before this time")
    export.add_argument("--out", type=Path, help="write here instead of standard output")

    drift = sub.add_parser(
        "drift",
        help="per finding, compare the probabilities served lately (the audit log) with the "
        "model version's calibration set: population stability index and KS statistic",
    )
    drift.add_argument(
        "--since", type=_when, help="the window's start (default: --window-days before now)"
    )
    drift.add_argument("--window-days", type=float, default=7.0)
    drift.add_argument(
        "--model-version", help="default: the version in the model repository (served)"
    )
    drift.add_argument("--dir", type=Path, default=None, help="the model repository")
    drift.add_argument("--json", type=Path, help="also write the report here as JSON")

    pacs = sub.add_parser("pacs", help="work with the PACS through a running server")
    psub = pacs.add_subparsers(dest="pacs_command", required=True)
    analyse = psub.add_parser(
        "analyse",
        help="have the server pull a study (or series) from the PACS by WADO-RS, analyse its "
        "radiographs and send the results back",
    )
    analyse.add_argument("study_uid", help="Study Instance UID")
    analyse.add_argument("--series", help="only this Series Instance UID")
    analyse.add_argument(
        "--force", action="store_true", help="analyse instances outside the intended use too"
    )
    analyse.add_argument(
        "--server",
        default=None,
        help="the server's URL (default: http://CHEXRAY_HOST:CHEXRAY_PORT)",
    )
    analyse.add_argument(
        "--api-key",
        default=None,
        help="an API key (chx_...) or bearer token; default: the CHEXRAY_API_KEY variable",
    )
    analyse.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    return parser


def _when(value: str) -> dt.datetime:
    """An ISO 8601 date or time; without a zone, UTC."""
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date or time: {value!r} (e.g. 2026-01-31 or 2026-01-31T08:00Z)"
        ) from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t


def _model_dir(given: Path | None) -> Path:
    """The folder named on the command line, else the `model_dir` setting."""
    return given if given is not None else Settings.from_env().model_dir


def _convert(args: argparse.Namespace) -> int:
    try:
        from convert.cli import run
    except ImportError:
        print("chexray convert: the converter is not installed: pip install 'chexray[convert]'")
        return 2
    return run(args)


def _serve(args: argparse.Namespace) -> int:
    from server.main import serve

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return serve(overrides, preset=args.preset, build=not args.no_build)


def _evaluate(args: argparse.Namespace) -> int:
    from evaluation.cli import run_evaluate

    return run_evaluate(args)


def _calibrate(args: argparse.Namespace) -> int:
    from evaluation.cli import run_calibrate

    return run_calibrate(args)


def _models_check(args: argparse.Namespace) -> int:
    from server.runtime.manifest import RepositoryError
    from server.runtime.repository import describe, verify_repository

    directory = _model_dir(args.dir)
    try:
        manifest = verify_repository(directory)
    except RepositoryError as exc:
        print(f"chexray models check: error: {exc}")
        return 2
    print(describe(manifest, directory))
    print("\nOK: all files present and intact.")
    return 0


def _models_versions(args: argparse.Namespace) -> int:
    from server.runtime.repository import archived_versions, current_manifest

    directory = _model_dir(args.dir)
    current = getattr(current_manifest(directory), "version", None)
    for m in archived_versions(directory):
        how = (
            f"calibrated on {m.calibration.data} ({m.calibration.images} images)"
            if m.calibration
            else f"built by chexray convert ({m.preset})"
        )
        mark = "*" if m.version == current else " "
        print(f"{mark} {m.version:<24} {m.created}  {how}")
    return 0


def _models_use(args: argparse.Namespace) -> int:
    from server.runtime.manifest import RepositoryError
    from server.runtime.repository import current_manifest, use_version

    directory = _model_dir(args.dir)
    previous = current_manifest(directory)
    try:
        manifest = use_version(directory, args.version)
    except RepositoryError as exc:
        print(f"chexray models use: error: {exc}")
        return 2
    return _switch_running_server(args, directory, manifest.version, previous)


def _models_check_precision(args: argparse.Namespace) -> int:
    from server.runtime.manifest import RepositoryError
    from server.runtime.precision import check_all, load_images
    from server.runtime.repository import verify_repository

    settings = Settings.from_env()
    directory = _model_dir(args.dir)
    try:
        manifest = verify_repository(directory)
        extra = None
        if args.images is not None:
            extra = load_images(args.images, manifest, settings, args.max_images)
            print(f"{len(extra)} of your images from {args.images}")
        manifest = check_all(directory, manifest, settings, extra)
    except (RepositoryError, OSError, ValueError) as exc:
        print(f"chexray models check-precision: error: {exc}")
        return 2
    if not manifest.precision_checks:
        print("Nothing to check: this machine serves onnxruntime fp32 only (the reference).")
        return 0
    for p in manifest.precision_checks.values():
        print(
            f"{p.label:<24} {'passed' if p.passed else 'FAILED':<7} max |diff| "
            f"{max(p.max_abs_diff):.1e} (<= {p.tolerance:.0e}), {p.calls_differ} call(s) differ "
            f"({p.calls_differ_outside_margin} outside the margin), {p.images} images, "
            f"{p.seconds_per_image * 1e3:.0f} ms/image"
        )
    return 0 if all(p.passed for p in manifest.precision_checks.values()) else 1


def _pacs_analyse(args: argparse.Namespace) -> int:
    import os

    import httpx

    settings = Settings.from_env()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    server = (args.server or f"http://{host}:{settings.port}").rstrip("/")
    key = args.api_key or os.environ.get("CHEXRAY_API_KEY", "")
    if not key:
        print("chexray pacs analyse: error: give --api-key or set CHEXRAY_API_KEY")
        return 2
    body = {"study_uid": args.study_uid, "force": args.force}
    if args.series:
        body["series_uid"] = args.series
    try:
        r = httpx.post(
            f"{server}/api/v1/pacs/pulls",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        print(f"chexray pacs analyse: error: cannot reach {server}: {exc}")
        return 1
    answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        print(
            f"chexray pacs analyse: error {r.status_code} {answer.get('code', '')}: "
            f"{answer.get('message', r.text[:500])}"
        )
        return 1
    for item in answer["instances"]:
        if item["analysed"]:
            print(f"analysed  {item['sop_instance_uid']}  -> {server}{item['study_url']}")
        else:
            print(f"refused   {item['sop_instance_uid']}  {item['code']}: {item['message']}")
    print(
        f"{answer['analysed']} analysed, {answer['refused']} refused; the results go back to "
        "the PACS (GET each study's pacs URL for where they stand)"
    )
    return 0


# -- switching the version a running server serves (chexray models use) --------------------


def _add_live_switch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=None,
        help="the running server's URL (default: http://CHEXRAY_HOST:CHEXRAY_PORT)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="an administrator's bearer token (default: the CHEXRAY_ADMIN_TOKEN variable); "
        "without one, the version is served after a restart",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")


def _switch_running_server(
    args: argparse.Namespace, directory: Path, version: str, previous: Manifest | None
) -> int:
    """Ask the running server to activate `version`, just installed in `directory`; when
    it refuses, the repository names `previous` again (what the server still serves)."""
    import os

    import httpx

    from server.runtime.repository import install_manifest

    settings = Settings.from_env()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    server = (args.server or f"http://{host}:{settings.port}").rstrip("/")
    token = args.token or os.environ.get("CHEXRAY_ADMIN_TOKEN", "")
    restart = f"Version {version} installed; restart the server to serve it."
    if not token:
        print(f"{restart} (Give --token or CHEXRAY_ADMIN_TOKEN to switch a running server.)")
        return 0
    try:
        r = httpx.post(
            f"{server}/api/v1/admin/models/{version}/activate",
            headers={"Authorization": f"Bearer {token}"},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        print(f"{restart} (No server answered at {server}: {exc}.)")
        return 0
    answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code == 200:
        done = "now serves" if answer.get("changed") else "already served"
        print(f"Version {version} installed; the server at {server} {done} it.")
        return 0
    reason = f"{r.status_code} {answer.get('code', '')}: {answer.get('message', r.text[:500])}"
    if r.status_code in (404, 409) and previous is not None:
        install_manifest(directory, previous)
        print(
            f"chexray models use: error: the server at {server} refused version {version} "
            f"({reason}); it keeps serving the version it served, and the repository names "
            f"{previous.version} again."
        )
        return 1
    print(f"chexray models use: error: {restart} The server at {server} answered {reason}.")
    return 1


def _audit_database():
    from server.store.db import Database

    db = Database(Settings.from_env().db_url)
    db.create_all()  # an older or empty database: the audit tables, empty
    return db


def _audit_verify(args: argparse.Namespace) -> int:
    from server.store import audit

    db = _audit_database()
    try:
        with db.session() as s:
            v = audit.verify(s)
    finally:
        db.dispose()
    start = f"anchor record {v.anchor_id}" if v.anchor_id else "the start"
    if not v.intact:
        where = f"record {v.bad_id} ({v.bad_time})" if v.bad_id is not None else "the chain's end"
        print(f"chexray audit verify: BROKEN at {where}: {v.problem}")
        print(f"{v.records} record(s) from {start} verified before it")
        return 1
    span = f"records {v.first_id} to {v.last_id}" if v.records else "no records"
    print(f"Intact: {v.records} record(s) ({span}) chained from {start}.")
    print(f"Head hash: {v.last_hash}")
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    from server.service.audit import export_line
    from server.store import audit

    db = _audit_database()
    out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    count = 0
    try:
        with db.session() as s:
            for record in audit.records(s, args.since, args.until):
                out.write(export_line(audit.as_dict(record)) + "\n")
                count += 1
    finally:
        db.dispose()
        if args.out:
            out.close()
    if args.out:
        print(f"{count} record(s) written to {args.out}")
    return 0


def _drift(args: argparse.Namespace) -> int:
    from evaluation.drift_report import run_drift

    return run_drift(args, Settings.from_env(), _model_dir(args.dir))


HANDLERS: dict[str, Handler] = {
    "convert": _convert,
    "serve": _serve,
    "evaluate": _evaluate,
    "calibrate": _calibrate,
    "models check": _models_check,
    "models versions": _models_versions,
    "models use": _models_use,
    "models check-precision": _models_check_precision,
    "pacs analyse": _pacs_analyse,
    "audit verify": _audit_verify,
    "audit export": _audit_export,
    "drift": _drift,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sub = (
        getattr(args, "models_command", None)
        or getattr(args, "pacs_command", None)
        or getattr(args, "audit_command", None)
    )
    command = " ".join(filter(None, (args.command, sub)))
    try:
        return HANDLERS[command](args)
    except SettingsError as exc:
        print(f"chexray {command}: error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
