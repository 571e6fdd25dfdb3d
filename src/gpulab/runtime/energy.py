"""Energy of a run's timed window: the GPU from NVML, the CPU packages from Linux RAPL.

Zeus and CodeCarbon read the same counters; this is the part gpulab needs:

- GPU: NVML's total-energy counter (millijoules since the driver loaded; Volta and newer), read
  at each segment's start and end. On older GPUs, the board's power (milliwatts) sampled at
  both ends and every `POLL_S` between, integrated with the trapezoid rule.
- CPU: the package domains of /sys/class/powercap, `intel-rapl:N` (AMD's are there too since
  Linux 5.8), not their subdomains `intel-rapl:N:M` (cores, DRAM: parts of the package or not
  comparable across machines) nor `psys`. Each counts microjoules and wraps at its
  `max_energy_range_uj` (minutes at full power on some machines): it is read every `POLL_S`, so
  that no wrap between two reads is missed.

Both count the whole device, other processes' work included. A source that cannot be read
gives the reason instead of a number: never an estimate in place of a measurement.
"""

import re
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from gpulab.runtime.device import nvml_handle, synchronize
from gpulab.runtime.records import Energy, EnergyReading
from gpulab.runtime.timing import now

RAPL_ROOT = Path("/sys/class/powercap")
CPU = torch.device("cpu")
POLL_S = 1.0  # RAPL counters wrap after 65 to 262 kJ: over a minute apart even at 1 kW


class NotMeasured(Exception):
    """Why a source cannot be read (the message is the reason a record gives)."""


class Counter:
    """One energy source over segments: `begin` at a segment's start, `poll` every `POLL_S`
    during it, `end` at its end returns the segment's joules. Times are clock seconds."""

    source = ""

    def begin(self, t: float) -> None:
        pass

    def poll(self, t: float) -> None:
        pass

    def end(self, t: float) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- CPU packages: RAPL --------------------------------------------------------------------------


class RaplCounter(Counter):
    """The CPU package domains under `root` (/sys/class/powercap), summed."""

    source = "rapl"

    def __init__(self, root: Path = RAPL_ROOT):
        self.domains = _package_domains(Path(root))
        self.max_uj = [_read_uj(d / "max_energy_range_uj") for d in self.domains]
        self._last = self._read()  # fails here, before the run, when energy_uj is unreadable
        self._joules = 0.0

    def _read(self) -> list[int]:
        return [_read_uj(d / "energy_uj") for d in self.domains]

    def begin(self, t: float) -> None:
        self._last, self._joules = self._read(), 0.0

    def poll(self, t: float) -> None:
        current = self._read()
        for before, after, wrap in zip(self._last, current, self.max_uj):
            delta = after - before
            self._joules += (delta + wrap if delta < 0 else delta) / 1e6  # wrapped once
        self._last = current

    def end(self, t: float) -> float:
        self.poll(t)
        return self._joules


def _package_domains(root: Path) -> list[Path]:
    """The package domains `intel-rapl:N` (named `package-N`) under `root`, by N."""
    if not root.is_dir():
        raise NotMeasured(f"no {root} (a VM without RAPL, or not Linux)")
    found = []
    for d in root.iterdir():
        match = re.fullmatch(r"intel-rapl:(\d+)", d.name)
        name = d / "name"
        if match and name.is_file() and name.read_text().strip().startswith("package"):
            found.append((int(match[1]), d))
    if not found:
        raise NotMeasured(f"no RAPL package domain under {root} (a VM without RAPL?)")
    return [d for _, d in sorted(found)]


def _read_uj(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise NotMeasured(
            f"{path} is readable by root only (Linux restricts RAPL since CVE-2020-8694); "
            "run as root or make it readable to measure CPU energy"
        ) from None
    except (OSError, ValueError) as e:
        raise NotMeasured(f"{path} is unreadable ({e})") from None


def cpu_counter(root: Path | None = None) -> Counter | str:
    """The RAPL counter of this machine's CPU packages, or why there is none."""
    try:
        return RaplCounter(root if root is not None else RAPL_ROOT)
    except NotMeasured as e:
        return str(e)


# -- GPU: NVML -----------------------------------------------------------------------------------


class _NvmlCounter(Counter):
    """A counter of one GPU through NVML (initialised by whoever made it, shut down here)."""

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle

    def close(self) -> None:
        self.nvml.nvmlShutdown()


class NvmlEnergyCounter(_NvmlCounter):
    """NVML's total-energy counter of one GPU (millijoules; Volta and newer)."""

    source = "nvml-total-energy"

    def __init__(self, nvml, handle):
        super().__init__(nvml, handle)
        self._start_mj = self._read_mj()

    def _read_mj(self) -> int:
        try:
            return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except self.nvml.NVMLError as e:
            raise NotMeasured(f"NVML's total-energy counter is unreadable ({e})") from None

    def begin(self, t: float) -> None:
        self._start_mj = self._read_mj()

    def end(self, t: float) -> float:
        return (self._read_mj() - self._start_mj) / 1e3


class NvmlPowerCounter(_NvmlCounter):
    """One GPU's power draw (milliwatts) sampled at each poll, integrated over the segment
    (GPUs older than Volta have no energy counter)."""

    source = "nvml-power-samples"

    def __init__(self, nvml, handle):
        super().__init__(nvml, handle)
        self._watts()  # fails here, before the run, when the power is unreadable too
        self._samples: list[tuple[float, float]] = []

    def _watts(self) -> float:
        try:
            return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3
        except self.nvml.NVMLError as e:
            raise NotMeasured(f"NVML reads neither energy nor power of this GPU ({e})") from None

    def begin(self, t: float) -> None:
        self._samples = [(t, self._watts())]

    def poll(self, t: float) -> None:
        self._samples.append((t, self._watts()))

    def end(self, t: float) -> float:
        self.poll(t)
        pairs = zip(self._samples, self._samples[1:])
        return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in pairs)


def nvml_counter(nvml, handle) -> Counter | str:
    """The energy counter of the GPU `handle`, its power samples where it has none, or why
    neither can be read (NVML initialised by the caller; shut down here when nothing is read)."""
    try:
        return NvmlEnergyCounter(nvml, handle)
    except NotMeasured:
        pass
    try:
        return NvmlPowerCounter(nvml, handle)
    except NotMeasured as e:
        nvml.nvmlShutdown()
        return str(e)


def gpu_counter(device: torch.device, nvml=None) -> Counter | str:
    """The NVML counter of the run's GPU, or why there is none (no NVML call off CUDA)."""
    if device.type != "cuda":
        return f"device is {device.type}: no GPU energy to read"
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
    except Exception as e:  # no nvidia-ml-py, no driver library: NVMLError or ImportError
        return f"NVML is not available ({type(e).__name__}: {e})"
    try:
        handle = nvml_handle(nvml, device)
    except nvml.NVMLError as e:
        nvml.nvmlShutdown()
        return f"NVML does not find {device} ({e}; a MIG instance? NVML counts whole GPUs)"
    return nvml_counter(nvml, handle)


# -- the meter -----------------------------------------------------------------------------------


class EnergyMeter:
    """The energy of a window of segments: `start()` and `stop()` around each one (what runs
    between a stop and the next start is left out); the readings add the segments up.

    Counters are read at each boundary, after synchronizing the device so that the work queued
    before it is counted before it, and every `poll_s` from a background thread: never per step.
    A counter that fails during the run becomes its reason. `clock` is for tests (default: the
    training loop's clock, `timing.host_clock`).
    """

    def __init__(
        self,
        gpu: Counter | str,
        cpu: Counter | str,
        device: torch.device = CPU,
        clock: Callable[[], float] | None = None,
        poll_s: float = POLL_S,
    ):
        self.sources: dict[str, Counter | str] = {"gpu": gpu, "cpu": cpu}
        self.device, self.clock, self.poll_s = device, clock, poll_s
        self.joules = {"gpu": 0.0, "cpu": 0.0}
        self.seconds = 0.0
        self.segments = 0
        self._started: float | None = None
        self._polling: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the poll thread's reads and the boundaries' in turn

    @classmethod
    def for_device(cls, device: torch.device, measure_cpu: bool = True) -> "EnergyMeter":
        """The run's GPU and, where `measure_cpu`, this machine's CPU packages."""
        cpu = cpu_counter() if measure_cpu else "read by another process on this machine"
        return cls(gpu_counter(device), cpu, device)

    @property
    def running(self) -> bool:
        return self._started is not None

    def start(self) -> None:
        """Begin a segment (nothing when one is running)."""
        if self.running:
            return
        synchronize(self.device)
        t = now(self.clock)
        self._each("begin", t)
        self._started = t
        self._stopping.clear()
        self._polling = threading.Thread(target=self._poll, name="gpulab-energy", daemon=True)
        self._polling.start()

    def stop(self) -> dict[str, EnergyReading]:
        """End the running segment; the readings of all segments so far."""
        if self.running:
            synchronize(self.device)
            t = now(self.clock)
            with self._lock:  # the window ends now, not when the poll thread has stopped
                for name, joules in self._each("end", t).items():
                    self.joules[name] += joules
                self._stopping.set()
            self._polling.join()
            self.seconds += t - self._started
            self.segments += 1
            self._started = None
        return self.readings()

    def close(self) -> None:
        """Stop, and release the counters (NVML); the readings stay."""
        self.stop()
        for name, source in self.sources.items():
            if isinstance(source, Counter):
                source.close()
                self.sources[name] = _Closed(source.source)

    def readings(self) -> dict[str, EnergyReading]:
        return {name: self._reading(name) for name in self.sources}

    def result(self, samples: int) -> Energy:
        """The record's energy section, with `samples` computed in the window."""
        return energy_of(self.readings(), samples)

    def _reading(self, name: str) -> EnergyReading:
        source, seconds = self.sources[name], self.seconds
        if isinstance(source, str):
            return EnergyReading(
                source=None, joules=None, seconds=seconds, watts=None, reason=source
            )
        if not self.segments:
            why = "no window was measured (the run timed no step)"
            return EnergyReading(source=None, joules=None, seconds=0.0, watts=None, reason=why)
        joules = self.joules[name]
        watts = joules / seconds if seconds > 0 else None
        return EnergyReading(
            source=source.source, joules=joules, seconds=seconds, watts=watts, reason=None
        )

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                if not self._stopping.is_set():
                    self._each("poll", now(self.clock))

    def _each(self, method: str, t: float) -> dict[str, float]:
        """`method` of every counter; one that fails is closed and replaced by its reason."""
        out = {}
        for name, source in list(self.sources.items()):
            if not isinstance(source, Counter):
                continue
            try:
                out[name] = getattr(source, method)(t)
            except NotMeasured as e:
                source.close()
                self.sources[name] = f"{e} (during the run)"
        return out


class _Closed(Counter):
    """A counter released after the run: only its name is left, for the readings."""

    def __init__(self, source: str):
        self.source = source


def energy_of(readings: dict[str, EnergyReading], samples: int) -> Energy:
    """The record's energy section: the measured sources together, per sample."""
    measured = [r.joules for r in readings.values() if r.joules is not None]
    per_sample = sum(measured) / samples if measured and samples > 0 else None
    return Energy(
        gpu=readings["gpu"], cpu=readings["cpu"], samples=samples, joules_per_sample=per_sample
    )


# -- torchrun -------------------------------------------------------------------------------------


def summed_over_processes(meter: EnergyMeter, local_rank: int) -> dict[str, EnergyReading]:
    """Under torchrun, every process's readings summed (each measured its own GPU, the first
    process of each machine that machine's CPU packages); a source that some processes could
    not read is not measured. Every rank calls it: it is a collective."""
    import torch.distributed as dist

    mine = meter.readings()
    values = []
    for name in ("gpu", "cpu"):
        joules = mine[name].joules
        values += [joules or 0.0, float(joules is not None)]
    values.append(float(local_rank == 0))
    total = torch.tensor(values, dtype=torch.float64, device=meter.device)
    dist.all_reduce(total)
    gpu_j, gpu_n, cpu_j, cpu_n, machines = total.tolist()
    return {
        "gpu": _summed(mine["gpu"], gpu_j, round(gpu_n), dist.get_world_size()),
        "cpu": _summed(mine["cpu"], cpu_j, round(cpu_n), round(machines)),
    }


def _summed(mine: EnergyReading, joules: float, measured: int, wanted: int) -> EnergyReading:
    seconds = mine.seconds
    if measured == wanted:
        watts = joules / seconds if seconds > 0 else None
        return EnergyReading(
            source=mine.source, joules=joules, seconds=seconds, watts=watts, reason=None
        )
    why = mine.reason if measured == 0 else f"measured by {measured} of {wanted} processes only"
    return EnergyReading(source=None, joules=None, seconds=seconds, watts=None, reason=why)
