"""JOB specs of `gpulab share`: `stocks`, `cnn:model=resnet18,batch_size=64`, `2xdigits`."""

import re
from dataclasses import dataclass

from gpulab.runtime.errors import GpulabError
from gpulab.workloads.registry import get_workload

_COPIES = re.compile(r"^(\d+)x(.+)$")


@dataclass(frozen=True)
class Job:
    """One job of the shared set: a workload with its settings, one process."""

    id: str  # workload#n, n counting the copies of that workload
    spec: str  # the JOB text as given
    workload: str
    settings: dict[str, str]  # the spec's own --set values

    @property
    def key(self) -> tuple:
        """Jobs with the same key do the same work: one isolated run serves them all."""
        return (self.workload, tuple(sorted(self.settings.items())))


def parse_jobs(specs: list[str], preset: str, common: dict[str, str]) -> list[Job]:
    """Every spec expanded into its copies, each checked against its workload's settings
    (`common` are the --set values given to every job; a spec's own win)."""
    if not specs:
        raise GpulabError("no JOB given; name at least one, e.g. `gpulab share 2xstocks`")
    jobs: list[Job] = []
    for text in specs:
        copies, workload, settings = parse_spec(text)
        get_workload(workload).config(preset, {**common, **settings})  # bad names fail here
        for _ in range(copies):
            n = 1 + sum(j.workload == workload for j in jobs)
            jobs.append(Job(f"{workload}#{n}", text, workload, settings))
    return jobs


def parse_spec(text: str) -> tuple[int, str, dict[str, str]]:
    """`2xcnn:model=resnet18,batch_size=64` -> (2, "cnn", {"model": "resnet18", ...})."""
    copies, rest = 1, text.strip()
    match = _COPIES.match(rest)
    if match:
        copies, rest = int(match.group(1)), match.group(2)
    if copies < 1:
        raise GpulabError(f"JOB {text!r} asks for 0 copies; write NxWORKLOAD with N of 1 or more")
    name, _, tail = rest.partition(":")
    settings = {}
    for pair in filter(None, tail.split(",")):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise GpulabError(
                f"JOB {text!r}: {pair!r} is not KEY=VALUE; write WORKLOAD:KEY=VALUE,..."
            )
        settings[key.strip()] = value.strip()
    get_workload(name.strip())  # an unknown workload names the valid ones
    return copies, name.strip(), settings
