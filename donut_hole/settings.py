"""Service settings: one pydantic-settings class read from ``DONUT_HOLE_*`` environment variables.

The defaults are the embedded ones (``make demo``): a SQLite file, a local object-store directory, a
server-less Celery transport and the student model shipped in ``models/``. Production overrides them::

    DONUT_HOLE_DATABASE_URL=postgresql+psycopg://user:pw@db/donut
    DONUT_HOLE_BROKER_URL=redis://redis:6379/0
    DONUT_HOLE_STORAGE_URL=s3://scans
    DONUT_HOLE_MODEL_PATH=/models/donut-hole-small
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_PATH = REPO_ROOT / "models" / "donut-hole-small"


class SettingsError(ValueError):
    """The environment holds a setting that cannot be used; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DONUT_HOLE_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("var"), description="Working directory of the embedded defaults.")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in data_dir.")
    broker_url: str = Field("", description="Celery broker URL; default: server-less SQLite transport.")
    storage_url: str = Field(
        "", description="s3://bucket[/prefix] or a local directory; default: data_dir/store."
    )
    s3_endpoint_url: str | None = Field(None, description="Endpoint override for MinIO or moto.")
    s3_region: str = Field("us-east-1", description="Region of the S3 client.")
    allowed_buckets: list[str] = Field(
        default_factory=list, description="Buckets the API may read; [] = any."
    )

    model_path: Path = Field(DEFAULT_MODEL_PATH, description="Folder of a saved DONUT checkpoint.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: auto (a GPU when there is one), cpu or cuda."
    )
    precision: Literal["fp32", "bf16", "int8"] = Field(
        "fp32",
        description="fp32; bf16 on GPUs, and on CPUs with AVX512-BF16/AMX (there the encoder's arithmetic "
        "and the cells the decoder reads in bf16, its steps in fp32); int8 dynamic quantisation (CPU).",
    )
    engine: bool = Field(
        True,
        description="Read through the decoding engine (pages enter and leave a running batch, native "
        "attention on CPUs); false: transformers' modules batch by batch, as before the engine.",
    )
    native_kernels: bool = Field(
        True,
        description="Build the engine's C kernel with the system's compiler ($CC, else cc) for this CPU at "
        "first use; false, or no compiler: the same arithmetic in PyTorch, slower.",
    )
    kernel_cache: Path | None = Field(
        None,
        description="Folder of the built kernels, one per source, compiler and CPU; default: "
        "$XDG_CACHE_HOME/donut-hole/kernels (~/.cache/donut-hole/kernels).",
    )
    task_prompt: str | None = Field(
        None, description="The model's decoder start token, e.g. <s_cord-v2>; default: from the model folder."
    )
    torch_threads: int = Field(
        0, ge=0, description="torch.set_num_threads per worker process; 0 = torch default."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="Longest answer in tokens; default: all the model's learned positions (639 for the "
        "shipped models, which write one token per character). A reading cut at the limit is noted "
        "and its confidence halved.",
    )
    locate_fields: bool = Field(
        True,
        description="Store where each field was read on the page (a box per field, from the decoder's "
        "cross-attention; one extra pass of the decoder per page).",
    )
    review_threshold: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="A document with a field below this confidence ends needs_review instead of done and "
        "waits for a person (GET /v1/reviews, the /review page); a batch may set its own. Unset or 0: "
        "no review. The model card says which threshold sends what share of documents.",
    )

    batch_size: int = Field(4, ge=1, le=256, description="Documents per forward pass in a worker.")
    batch_wait_s: float = Field(0.5, ge=0.0, le=60.0, description="Longest wait to fill a batch.")
    max_image_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest scan accepted, in bytes.")
    max_image_pixels: int = Field(
        64_000_000,
        ge=1024,
        description="Decompression-bomb guard, in pixels: per image, per TIFF frame, per rendered PDF page.",
    )
    max_pages: int = Field(
        200, ge=1, le=100_000, description="Pages a PDF or multi-page TIFF may have; more fails the document."
    )
    read_max_pages: int = Field(
        5, ge=1, le=100, description="Pages of a scan POST /v1/read takes (a read that waits for its answer)."
    )
    read_wait_s: float = Field(
        60.0,
        gt=0,
        le=600,
        description="Longest wait of POST /v1/read for its answer; then 202 and the document's link.",
    )
    task_time_limit_s: int = Field(
        600, ge=1, description="Seconds a group of documents may take in a worker before it is stopped."
    )
    max_retries: int = Field(
        5, ge=0, description="Attempts a document may lose to a dying worker before it is failed, minus one."
    )
    retry_budget_s: float = Field(
        1200.0,
        gt=0,
        description="How long transient errors (database, broker, object store) are retried before a "
        "document fails as 'transient: ...' (donut-hole enqueue --retry-failed queues it again).",
    )
    retry_backoff_max_s: float = Field(
        60.0, gt=0, description="Longest wait between two tries after a transient error (backoff cap)."
    )
    unsent_after_s: float = Field(
        60.0,
        gt=0,
        description="A document stored but never sent to the broker (it was down) for this long is sent "
        "by a worker's watchdog.",
    )
    stalled_after_s: int | None = Field(
        None,
        ge=1,
        description="A document 'processing' this long lost its worker and is sent again by a worker's "
        "watchdog; default: the hard task time limit + 60 s.",
    )
    queue: str = Field(
        "cpu", description="The documents' queue (cpu, gpu, ...); webhooks use <queue>.callbacks."
    )
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Worker Prometheus port; unset = off.")

    api_keys: list[str] = Field(default_factory=list, description="Bearer keys the API accepts.")
    reviewer_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys of reviewers, as name:key (the name is recorded with each correction): "
        "they may only list reviews, see a document and its scan, and correct it.",
    )
    public_url: str = Field(
        "",
        description="The API's address as clients see it, for links in callbacks: https://donut.example.com.",
    )

    callback_allowed_urls: list[str] = Field(
        default_factory=list,
        description="Where a batch's callback may go: URL prefixes (https://hooks.example.com/donut/) or "
        "host names (hooks.example.com, any http(s) URL on it); [] = callbacks are refused.",
    )
    callback_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs every callback; unset = callbacks are refused."
    )
    callback_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Deadline of one callback POST in all: connect, send, and the whole answer.",
    )
    callback_threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Callback POSTs a worker makes at once, in threads beside its document pool.",
    )
    callback_max_attempts: int = Field(
        20, ge=1, le=1000, description="Tries of a callback before it is given up (status 'failed')."
    )
    callback_backoff_max_s: float = Field(
        300.0, gt=0, description="Longest wait between two tries of a callback (exponential backoff cap)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level of the JSON log lines."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'donut_hole.sqlite3'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data / 'broker.sqlite3'}"
        if not self.storage_url:
            self.storage_url = str(data / "store")
        if not (self.database_url.startswith(("sqlite", "postgresql"))):
            raise ValueError(
                f"DONUT_HOLE_DATABASE_URL must be a sqlite or postgresql URL, got {self.database_url!r}"
            )
        return self


def without_credentials(url: str) -> str:
    """A URL as messages and logs show it: without its user name and password (any scheme).

    >>> without_credentials("postgresql+psycopg://donut:s3cret@db.example.com:5432/donut")
    'postgresql+psycopg://db.example.com:5432/donut'
    >>> without_credentials("sqlite:///var/donut_hole.sqlite3")
    'sqlite:///var/donut_hole.sqlite3'
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; a bad environment raises :class:`SettingsError` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DONUT_HOLE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc


def reference_markdown() -> str:
    """``docs/configuration.md``: every setting's variable, default and description, from :class:`Settings`
    (``python -m donut_hole.settings > docs/configuration.md``; a test fails when the file is stale)."""
    lines = [
        "# Configuration",
        "",
        'Every setting is an environment variable `DONUT_HOLE_<NAME>`; lists are JSON (`\'["a", "b"]\'`).',
        "The defaults are the embedded ones (`make demo`). Generated from `donut_hole/settings.py` by",
        "`python -m donut_hole.settings > docs/configuration.md`; do not edit by hand.",
        "",
        "| variable | default | what it sets |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = "" if field.default in (None, "") else str(field.default)
        if isinstance(field.default, Path) and field.default.is_absolute():
            default = str(field.default.relative_to(REPO_ROOT))  # not this machine's path
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        default_text = f"`{default}`" if default else "(none)"
        lines.append(f"| `DONUT_HOLE_{name.upper()}` | {default_text} | {description} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
