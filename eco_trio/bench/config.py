"""What a benchmark run is asked to do, and what it found."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MODES = ("pingpong", "pipeline", "connect", "hold")


@dataclass(frozen=True)
class BenchConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    clients: int = 50
    seconds: float = 3.0
    mode: str = "pingpong"
    pipeline: int = 16
    size: int = 64
    greeting_lines: int = 1
    warmup: float = 0.5
    concurrency: int = 200
    server_pid: int | None = None
    #: Speak TLS, trusting this CA file ("" for the system store); None: plain text.
    tls_ca: str | None = None
    tls_server_name: str | None = None
    #: Start each connection with a PROXY v1 header, as a load balancer
    #: does (for a server run with --proxy-protocol).
    proxy_header: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.size < 12:
            raise ValueError("size must be at least 12 bytes (the line carries its sequence number)")
        if self.clients < 1 or self.pipeline < 1 or self.seconds <= 0:
            raise ValueError("clients, pipeline and seconds must be positive")


@dataclass
class BenchResult:
    mode: str
    clients: int
    pipeline: int
    size: int
    seconds: float
    replies: int = 0
    replies_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency_us: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    mismatches: int = 0
    first_error: str = ""
    connections_held: int = 0
    server_rss_mib: float | None = None
    server_kib_per_connection: float | None = None
    bench_cpu: float = 0.0
    bench_is_bottleneck: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
