"""Every knob of the server, read from CHEXRAY_* environment variables in one place.

`Settings.from_env()` is the only reader of the environment; everything else receives a
Settings (or the part of it that it needs) as an argument. CHEXRAY_CONFIG may name a TOML
file of settings (keys are the field names: `max_batch = 4`); a variable wins over the file.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import typing
from pathlib import Path
from typing import Literal

import msgspec

PREFIX = "CHEXRAY_"
CONFIG = PREFIX + "CONFIG"


def _decode_path(kind: type, value: object) -> object:
    if kind is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError(f"cannot read {kind}")


def _rate(value: str) -> tuple[int, float]:
    """(count, seconds) from "N/S"; ValueError unless N >= 1 and S > 0."""
    count, seconds = value.split("/")
    n, s = int(float(count)), float(seconds)
    if n < 1 or not s > 0 or s == float("inf"):
        raise ValueError(value)
    return n, s


class SettingsError(Exception):
    """An environment variable or the settings file holds a value the server cannot use.

    `setting` names the field, when one is at fault."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


def _read_config(path: Path, fields: tuple[str, ...]) -> dict[str, object]:
    """The settings in a TOML file; SettingsError naming the file (and key) otherwise."""
    try:
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(
            f"{CONFIG}: cannot read the settings file {path}: {exc.strerror or exc}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not a valid TOML settings file: {exc}") from None
    for key in values:
        if key not in fields:
            hint = f"; did you mean {key.lower()}?" if key.lower() in fields else ""
            raise SettingsError(
                f"{path}: unknown setting {key!r}{hint} (keys are the lower-case names of the "
                f"{PREFIX}* variables, e.g. max_batch)",
                key,
            )
    return values


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # Server.
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: Path = Path("data")  # SQLite file and media (images, heatmaps)
    database_url: str = ""  # empty: sqlite:///<data_dir>/chexray.db
    # Where studies' images and heatmaps are kept: files under <data_dir>/media, or rows of
    # the database (what replicas without a shared volume need; see README, Scaling out).
    media_store: Literal["folder", "database"] = "folder"
    # Where the sign-in limits and the anonymous per-address quota are counted: this
    # process's memory, or the database (shared by the replicas that share it); auto: the
    # database when it is not SQLite.
    limits_store: Literal["auto", "memory", "database"] = "auto"
    cors_origins: tuple[str, ...] = ()
    token_lifetime_hours: float = 24 * 14
    # Inference for signed-in callers only (a bearer token, the session cookie or an API
    # key), on every protocol: REST, the legacy API, /v2 and gRPC. Health, readiness,
    # metrics and model metadata stay open.
    require_auth: bool = False
    # API keys (inference only) one account may hold at once; 0: none can be created.
    api_keys_per_user: int = 20
    # Administrators (switch model versions, canary and shadow, read the audit log): these
    # usernames; empty: the first account registered (the lowest id still present).
    admins: tuple[str, ...] = ()
    # Sign-in limits, N per S seconds (server/api/ratelimit.py): attempts (log in, register,
    # password change) per client address, and failed ones per username and address.
    auth_rate_limit: str = "10/60"
    # Failed log-ins of one username from addresses it has not signed in from lately, all
    # such addresses together: what stands between a botnet and one account's password.
    auth_account_rate_limit: str = "100/3600"
    # Reverse proxies (IPs or CIDRs) whose X-Forwarded-For and X-Forwarded-Proto are
    # believed; empty: nobody's, the peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    cookie_secure: bool = False  # set true behind HTTPS
    # The browsable API documentation (/schema, /schema/swagger); /schema/openapi.json
    # stays either way (clients and code generators read it).
    api_docs: bool = True

    # Anonymous stored studies (`store=true`, the legacy anonupload): kept this long, at
    # most this many at once (0: never kept), at most this many per client address and
    # hour, counted where limits_store says (0: no per-address limit).
    anonymous_ttl_hours: float = 24.0
    anonymous_max_studies: int = 10_000
    anonymous_hourly_per_address: int = 30
    # The store's sweep: expired anonymous studies every interval; at start-up also what a
    # crash left (folders without rows, temporary files, rows without files), leaving
    # alone folders younger than the grace (another replica may be writing them).
    sweep_interval_minutes: float = 10.0
    orphan_grace_minutes: float = 60.0

    model_dir: Path = Path("models_onnx")
    # A rollout to start once the served version is ready (README, Canary and shadow):
    # canary_version answers canary_fraction (0..1) of the analyses; shadow_version runs
    # every analysis again without answering. At most one of the two; the admin API
    # changes or ends it.
    canary_version: str = ""
    canary_fraction: float = 0.05
    shadow_version: str = ""

    # Uploads: checked before a full decode.
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000

    # Dynamic batching (Triton's terms): a batch runs when it holds max_batch images or
    # when its first image has waited max_wait_ms; max_queue bounds what waits. With no
    # wait, an idle engine starts at once and batches form from what queues while it runs:
    # measured on 2 cores with OpenVINO bf16, 81 vs 94 ms p50 at one client, the same
    # throughput at 16. Batches of 8, not 4, on 2 cores: side by side in the server, 4-5%
    # more images/s at 16 and 100 clients (5 of 6 rounds), for about 130 MB more resident
    # memory; the engine alone is fastest at 8 in most runs, at 4 in some.
    max_batch: int = 8
    max_wait_ms: float = 0.0
    max_queue: int = 64  # analyses admitted at once (uploading, decoding, queued, running)
    # Admission by deadline: an analysis is refused (503 + Retry-After) before its body is
    # read when the wait it would face exceeds this budget, estimated from how long batches
    # take lately. No caller waits more than inference_timeout_s for the engine.
    max_queue_wait_ms: float = 3000.0
    inference_timeout_s: float = 60.0
    instances: int = 1  # sessions running batches side by side (useful on a GPU)
    warmup_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)

    # What runs the fused graph (server/runtime/backends.py): auto = CUDA fp16 where a GPU
    # is, else OpenVINO bf16 where the CPU has native bf16, else fp32. int8 only when asked.
    backend: Literal["auto", "onnxruntime", "openvino"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"

    # onnxruntime (intra_op_threads also sets OpenVINO's thread count when > 0).
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    intra_op_threads: int = 0
    # OpenVINO runs the fused graph's networks in this many parts side by side, each on its
    # share of the threads (server/runtime/branches.py); 1: the graph whole on every
    # thread; 0: two parts where there are two cores (or intra_op_threads) or more.
    openvino_parts: int = 0
    allow_spinning: bool = False
    # The CPU arena and memory patterns cost resident memory and buy onnxruntime CPU
    # throughput: 126 vs 168 ms per image at batches of 4 on 2 cores.
    cpu_mem_arena: bool = True
    mem_pattern: bool = True
    # Keep the CPU-optimized graph under <data_dir>/ort-cache and load that (see session.py).
    optimized_cache: bool = True
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    device_id: int = 0
    gpu_mem_limit: int = 6 * 1024**3
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kSameAsRequested"
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"

    # The HTTP server: at most max_connections connections and requests at once (past that,
    # a bare 503); on SIGTERM, analyses already admitted get up to drain_timeout_s to
    # finish while new ones are refused with 503, then the server stops.
    max_connections: int = 1000
    drain_timeout_s: float = 25.0

    # OpenTelemetry traces to the OTLP exporter that the standard OTEL_* variables configure
    # (server/tracing.py); needs the `tracing` extra.
    tracing: bool = False

    # The Open Inference Protocol (KServe v2 / Triton) under /v2 on the HTTP port, and its
    # gRPC service on grpc_port (Triton's 8001; 0: no gRPC server). One inference request,
    # REST body or gRPC message, holds at most max_request_bytes, each image at most
    # max_upload_bytes.
    grpc_port: int = 8001
    max_request_bytes: int = 64 * 1024 * 1024

    # The PACS (server/service/pacs.py): a DICOMweb service (its root URL, e.g.
    # http://pacs:8042/dicom-web) to which each stored analysis of a DICOM is sent as a
    # Structured Report (and its heatmaps, with pacs_send_heatmaps) by STOW-RS, and from
    # which studies are pulled by WADO-RS. Basic auth (username and password) or a bearer
    # token. A failed send is retried (backoff from pacs_retry_s, doubling, at most
    # pacs_max_attempts tries) before it is marked failed.
    pacs_url: str = ""
    pacs_username: str = ""
    pacs_password: str = ""
    pacs_token: str = ""
    pacs_send_heatmaps: bool = True
    pacs_max_attempts: int = 6
    pacs_retry_s: float = 10.0
    pacs_timeout_s: float = 30.0
    # A study pulled from the PACS holds at most this many bytes.
    pacs_max_pull_bytes: int = 512 * 1024 * 1024
    # DICOM's own network protocol (DIMSE) for modalities that only push C-STORE: a Storage
    # SCP on dimse_port (0: off) as AE title dimse_ae_title. DIMSE carries no credentials,
    # so what it receives goes into the history of the account dimse_owner, and only the
    # calling AE titles in dimse_calling_aes are accepted (empty: any, on a trusted network).
    dimse_port: int = 0
    dimse_ae_title: str = "CHEXRAY"
    dimse_owner: str = ""
    dimse_calling_aes: tuple[str, ...] = ()
    # DICOMweb STOW-RS into CheXray (POST /dicomweb/studies): at most this many bytes per
    # request; each instance is still bounded by max_upload_bytes.
    max_stow_bytes: int = 256 * 1024 * 1024

    # The audit log (server/service/audit.py): one hash-chained record per analysis on every
    # protocol, answered or refused. Records older than audit_retention_days are deleted
    # by the sweep (0: kept forever). drift_psi_warning: `chexray drift` flags a finding
    # whose population stability index exceeds it.
    audit_log: bool = True
    audit_retention_days: float = 0.0
    drift_psi_warning: float = 0.2

    # Heatmaps.
    heatmap_alpha: float = 0.45
    # Threads for decoding and rendering, off the event loop (each pool has this many).
    # 0: 2 where the engine computes on the CPU, half the CPUs (2 to 8) where it computes on
    # a GPU (server/runtime/threads.py says why).
    decode_threads: int = 0
    # How far below the engine's threads the decoding and rendering threads run (nice
    # steps, 0-19; 0: the same priority): the engine is then never stalled by them.
    side_work_nice: int = 10

    def __post_init__(self) -> None:
        positive = (
            "max_upload_bytes",
            "max_pixels",
            "max_batch",
            "max_queue",
            "instances",
            "max_connections",
            "max_request_bytes",
            "pacs_max_attempts",
            "pacs_max_pull_bytes",
            "max_stow_bytes",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1", name)
        for name in ("max_wait_ms", "max_queue_wait_ms", "drain_timeout_s", "decode_threads"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be >= 0", name)
        if not 0 <= self.grpc_port <= 65535:
            raise SettingsError(f"{PREFIX}GRPC_PORT must be 0 (off) to 65535", "grpc_port")
        if self.grpc_port == self.port:
            raise SettingsError(
                f"{PREFIX}GRPC_PORT must differ from {PREFIX}PORT ({self.port})", "grpc_port"
            )
        if self.inference_timeout_s <= 0:
            raise SettingsError(
                f"{PREFIX}INFERENCE_TIMEOUT_S must be above 0", "inference_timeout_s"
            )
        for name in ("anonymous_ttl_hours", "sweep_interval_minutes", "orphan_grace_minutes"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be more than 0", name)
        for name in (
            "anonymous_max_studies",
            "anonymous_hourly_per_address",
            "api_keys_per_user",
            "intra_op_threads",
            "openvino_parts",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be >= 0", name)
        for name in ("pacs_retry_s", "pacs_timeout_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be more than 0", name)
        if not 0 <= self.dimse_port <= 65535 or (self.dimse_port and not self.dimse_owner):
            raise SettingsError(
                f"{PREFIX}DIMSE_PORT must be 0 (off) to 65535, and with a port set "
                f"{PREFIX}DIMSE_OWNER must name the account that receives what arrives",
                "dimse_port",
            )
        if not 1 <= len(self.dimse_ae_title) <= 16:
            raise SettingsError(
                f"{PREFIX}DIMSE_AE_TITLE must be 1 to 16 characters", "dimse_ae_title"
            )
        if self.pacs_url and not self.pacs_url.startswith(("http://", "https://")):
            raise SettingsError(
                f"{PREFIX}PACS_URL must be the DICOMweb root's http:// or https:// URL, "
                f"e.g. http://pacs:8042/dicom-web (not {self.pacs_url!r})",
                "pacs_url",
            )
        if not 0.0 <= self.canary_fraction <= 1.0:
            raise SettingsError(
                f"{PREFIX}CANARY_FRACTION must be between 0 and 1", "canary_fraction"
            )
        if self.canary_version and self.shadow_version:
            raise SettingsError(
                f"set {PREFIX}CANARY_VERSION or {PREFIX}SHADOW_VERSION, not both: one "
                "candidate runs beside the served version at a time",
                "shadow_version",
            )
        if not 0 <= self.side_work_nice <= 19:
            raise SettingsError(
                f"{PREFIX}SIDE_WORK_NICE must be 0 (the engine's priority) to 19", "side_work_nice"
            )
        if not self.audit_retention_days >= 0:
            raise SettingsError(
                f"{PREFIX}AUDIT_RETENTION_DAYS must be >= 0 (0: keep forever)",
                "audit_retention_days",
            )
        if not self.drift_psi_warning > 0:
            raise SettingsError(
                f"{PREFIX}DRIFT_PSI_WARNING must be more than 0", "drift_psi_warning"
            )
        if not 0.0 <= self.heatmap_alpha <= 1.0:
            raise SettingsError(f"{PREFIX}HEATMAP_ALPHA must be between 0 and 1", "heatmap_alpha")
        for name in ("auth_rate_limit", "auth_account_rate_limit"):
            try:
                _rate(getattr(self, name))
            except (ValueError, OverflowError):
                raise SettingsError(
                    f"{PREFIX}{name.upper()} must look like 10/60 (attempts per seconds)", name
                ) from None
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    f"{PREFIX}TRUSTED_PROXIES: {proxy!r} is not an IP address or network "
                    "(e.g. 10.0.0.5 or 10.0.0.0/8)",
                    "trusted_proxies",
                ) from None

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'chexray.db'}"

    @property
    def shared_limits(self) -> bool:
        """Whether the limits are counted in the database (limits_store)."""
        if self.limits_store == "auto":
            return not self.db_url.startswith("sqlite")
        return self.limits_store == "database"

    @property
    def ort_cache_dir(self) -> Path:
        return self.data_dir / "ort-cache"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def rate_limit(self) -> tuple[int, float]:
        """(attempts, seconds) from auth_rate_limit "N/S"."""
        return _rate(self.auth_rate_limit)

    @property
    def account_rate_limit(self) -> tuple[int, float]:
        """(failures, seconds) from auth_account_rate_limit "N/S"."""
        return _rate(self.auth_account_rate_limit)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read CHEXRAY_<FIELD> variables over the TOML file that CHEXRAY_CONFIG names, if
        any; `overrides` win over both. Lists in variables are comma-separated ("1,8")."""
        env = os.environ if environ is None else environ
        fields = cls.__struct_fields__
        raw: dict[str, object] = {}
        config = Path(env[CONFIG]) if env.get(CONFIG) else None
        if config is not None:
            raw.update(_read_config(config, fields))
        from_file = set(raw)
        lists = {f.name for f in msgspec.structs.fields(cls) if typing.get_origin(f.type) is tuple}
        for name in fields:
            value = env.get(PREFIX + name.upper())
            if value is None:
                continue
            raw[name] = (
                [v.strip() for v in value.split(",") if v.strip()] if name in lists else value
            )
            from_file.discard(name)
        raw.update(overrides)
        from_file -= set(overrides)
        try:
            return msgspec.convert(raw, cls, strict=False, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            field = str(exc).rsplit("$.", 1)[-1].rstrip("`")
            name = field.split("[", 1)[0]
            if name in from_file:
                raise SettingsError(f"{config}: {name}: {exc}", name) from None
            raise SettingsError(f"{PREFIX}{field.upper()}: {exc}", name) from None
        except SettingsError as exc:
            if exc.setting not in from_file:
                raise
            variable = PREFIX + exc.setting.upper()
            message = str(exc).replace(variable, f"{config}: {exc.setting}", 1)
            raise SettingsError(message, exc.setting) from None
