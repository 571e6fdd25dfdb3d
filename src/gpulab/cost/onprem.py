"""Owning a server: what one device-hour costs at a utilisation, and from how many hours of use
a month owning beats renting.

A "device" is one GPU of a GPU server, or one hardware thread of a CPU server (the bench states
the threads a CPU run used). All money is USD.

    fixed per device-month  = purchase / devices / (12 · lifetime_years)        (straight-line)
                            + purchase · ops_share_per_year / devices / 12
    power per device (kW)   = (device_watts + host_watts / devices) / 1000
    energy per device-hour  = power · PUE · electricity price
    cost per device-hour    = fixed / (utilisation · 730 h) + energy per device-hour
    own, h hours a month    = fixed + h · energy per device-hour
    rent, h hours a month   = h · rent price per device-hour
    break-even hours/month  = fixed / (rent price per device-hour − energy per device-hour)

Idle draw is left out (an assumption: a server that is off between jobs). Defaults below carry a
source and date, or say plainly that they are an assumption; a TOML file (`--onprem`) or
`--own KEY=VALUE` overrides them.
"""

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from gpulab.runtime.errors import GpulabError

HOURS_PER_MONTH = 730.0  # 8,760 h / 12

ELECTRICITY_SOURCE = (
    "EIA Electricity Monthly Update (September 2024 data, released 2024-11-22): median US state "
    "average retail revenue 11.94 ¢/kWh, all sectors; rounded"
)
PUE_SOURCE = "Uptime Institute Intelligence (23 Nov 2023): industry average PUE 1.58 in 2023"
ASSUMPTION = "assumption (no public source found)"


@dataclass(frozen=True)
class OwnedServer:
    """An owned server and what running it costs. Field comments give units; `sources` says where
    each default comes from."""

    purchase_usd: float  # the whole server, GPUs included [USD]
    devices: float  # GPUs in it, or hardware threads of a CPU-only server
    device_watts: float  # power of one device while it works [W]
    host_watts: float  # the rest of the server (CPUs, memory, fans, network) while it works [W]
    lifetime_years: float = 5.0
    utilisation: float = 0.5  # share of a month's hours the device does useful work
    electricity_usd_per_kwh: float = 0.12
    pue: float = 1.58  # facility power / IT power
    ops_share_per_year: float = 0.10  # support, space, administration, as a share of purchase
    sources: tuple[tuple[str, str], ...] = ()

    def validate(self, where: str) -> None:
        for name in ("purchase_usd", "devices", "lifetime_years", "pue"):
            if getattr(self, name) <= 0:
                raise GpulabError(f"{where}: {name} must be above 0")
        for name in ("device_watts", "host_watts", "electricity_usd_per_kwh", "ops_share_per_year"):
            if getattr(self, name) < 0:
                raise GpulabError(f"{where}: {name} must be 0 or more")
        if not 0 < self.utilisation <= 1:
            raise GpulabError(f"{where}: utilisation must lie in (0, 1]")

    @property
    def fixed_per_device_month(self) -> float:
        capex = self.purchase_usd / self.devices / (12 * self.lifetime_years)
        return capex + self.purchase_usd * self.ops_share_per_year / self.devices / 12

    def energy_per_device_hour(self, device_watts: float | None = None) -> float:
        watts = self.device_watts if device_watts is None else device_watts
        kw = (watts + self.host_watts / self.devices) / 1000
        return kw * self.pue * self.electricity_usd_per_kwh

    def cost_per_device_hour(self, device_watts: float | None = None) -> float:
        used_hours = self.utilisation * HOURS_PER_MONTH
        return self.fixed_per_device_month / used_hours + self.energy_per_device_hour(device_watts)

    def monthly_cost(self, hours: float, device_watts: float | None = None) -> float:
        return self.fixed_per_device_month + hours * self.energy_per_device_hour(device_watts)

    def break_even_hours(self, rent_per_device_hour: float, device_watts: float | None = None):
        """Hours of use a month above which owning is cheaper than renting at that price; None
        when renting costs no more than the owned device's electricity (owning never wins)."""
        margin = rent_per_device_hour - self.energy_per_device_hour(device_watts)
        return None if margin <= 0 else self.fixed_per_device_month / margin

    def params(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "sources"}
        out["sources"] = dict(self.sources)
        return out


def _server(purchase, devices, device_watts, host_watts, sources: dict) -> OwnedServer:
    common = {
        "lifetime_years": "assumption: 5 years of straight-line depreciation",
        "utilisation": "assumption: half of a month's hours",
        "electricity_usd_per_kwh": ELECTRICITY_SOURCE,
        "pue": PUE_SOURCE,
        "ops_share_per_year": ASSUMPTION + ": 10 % of the purchase a year",
    }
    return OwnedServer(
        purchase, devices, device_watts, host_watts, sources=tuple({**common, **sources}.items())
    )


NVIDIA = "NVIDIA datasheet"
# accelerator family ("" = CPU-only) -> the owned server gpulab assumes for it
DEFAULT_SERVERS: dict[str, OwnedServer] = {
    "H100": _server(310_000, 8, 700, 4_600, {
        "purchase_usd": "estimate: a public cost model (Aug 2024) prices an 8x H100 SXM server "
                        "at USD 310k after a reseller quote of USD 317k; not a list price",
        "device_watts": f"{NVIDIA}: H100 SXM5 max TDP 700 W (2023)",
        "host_watts": f"{NVIDIA}: DGX H100 max system power 10.2 kW less 8 x 700 W (2023)",
    }),
    "H200": _server(350_000, 8, 700, 4_600, {
        "purchase_usd": ASSUMPTION,
        "device_watts": f"{NVIDIA}: H200 SXM max TDP up to 700 W (2024)",
        "host_watts": "assumption: as the DGX H100's host",
    }),
    "A100": _server(150_000, 8, 400, 3_300, {
        "purchase_usd": ASSUMPTION,
        "device_watts": f"{NVIDIA}: A100 SXM max TDP 400 W (2021)",
        "host_watts": f"{NVIDIA}: DGX A100 max system power 6.5 kW less 8 x 400 W (2021)",
    }),
    "L4": _server(40_000, 8, 72, 800, {
        "purchase_usd": ASSUMPTION,
        "device_watts": f"{NVIDIA}: L4 max TDP 72 W (2023)",
        "host_watts": ASSUMPTION,
    }),
    "T4": _server(25_000, 8, 70, 600, {
        "purchase_usd": ASSUMPTION,
        "device_watts": f"{NVIDIA}: T4 max TDP 70 W (2019)",
        "host_watts": ASSUMPTION,
    }),
    "": _server(20_000, 192, 3.6, 300, {
        "purchase_usd": ASSUMPTION + ": a 2-socket server, 96 cores / 192 threads",
        "devices": "hardware threads of that server",
        "device_watts": ASSUMPTION + ": two 350 W CPUs shared by 192 threads",
        "host_watts": ASSUMPTION,
    }),
}  # fmt: skip

KEYS = tuple(f.name for f in fields(OwnedServer) if f.name != "sources")


def server_for(family: str, servers: dict[str, OwnedServer]) -> OwnedServer | None:
    return servers.get(family)


def load_onprem(path: Path | None = None, sets: list[str] | None = None) -> dict[str, OwnedServer]:
    """The default servers with the TOML file's values (top-level keys for every server, a table
    such as [H100] or [cpu] for one) and then `--own KEY=VALUE` pairs (every server) applied."""
    servers = dict(DEFAULT_SERVERS)
    if path is not None:
        doc = _read_toml(path)
        common = {k: v for k, v in doc.items() if not isinstance(v, dict)}
        servers = {f: _override(s, common, str(path)) for f, s in servers.items()}
        for table, values in ((k, v) for k, v in doc.items() if isinstance(v, dict)):
            family = "" if table.lower() == "cpu" else table.upper()
            if family not in servers:
                known = ", ".join(sorted(f or "cpu" for f in servers))
                raise GpulabError(f"{path}: [{table}]: no such server; known: {known}")
            servers[family] = _override(servers[family], values, f"{path} [{table}]")
    pairs = dict(_pair(p) for p in sets or [])
    servers = {f: _override(s, pairs, "--own") for f, s in servers.items()}
    for family, server in servers.items():
        server.validate(f"owned {family or 'cpu'} server")
    return servers


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:
        raise GpulabError("--onprem needs Python 3.11 or newer (tomllib)") from None
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise GpulabError(f"--onprem {path}: cannot read it ({e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise GpulabError(f"--onprem {path}: not TOML ({e})") from None


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise GpulabError(f"--own {text!r}: expected KEY=VALUE, e.g. --own pue=1.3")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _override(server: OwnedServer, values: dict, where: str) -> OwnedServer:
    changes, sources = {}, dict(server.sources)
    for key, value in values.items():
        if key not in KEYS:
            raise GpulabError(f"{where}: unknown key {key!r}; known: {', '.join(KEYS)}")
        try:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
        except (TypeError, ValueError):
            raise GpulabError(f"{where}: {key} = {value!r} is not a number") from None
        changes[key] = number
        sources[key] = f"set by {where}"
    return replace(server, **changes, sources=tuple(sources.items())) if changes else server
