"""deploy/: the container image, the Kubernetes and the SkyPilot recipes, checked offline.

Nothing here builds an image or reaches a cluster or a cloud. The Dockerfile is read with
dockerfile-parse and linted; the core Kubernetes kinds are validated against the schemas that
kubernetes-validate ships; the Kubeflow custom resources against a subset of their published
CRDs written out below (with the releases it follows), their embedded pod and job templates
again against Kubernetes' own schemas; the SkyPilot task files against a subset of SkyPilot's
task schema. Every shell script in a recipe runs under bash with the variables its launcher
sets and stand-ins for torchrun, python and pip that record their command line, and the gpulab
command that would start is parsed by gpulab's own CLI (with --help, so nothing trains). Each
check is also shown to reject a broken copy of what it checks.
"""

import copy
import inspect
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from gpulab import cli
from gpulab.workloads.registry import workload_names

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SKYPILOT = DEPLOY / "skypilot"

# the oldest and newest Kubernetes whose schemas kubernetes-validate ships
K8S_VERSIONS = ("1.25", kubernetes_validate.latest_version())
PVC_NAME = "gpulab-runs"
DEFAULT_OUT = inspect.signature(cli.train).parameters["out"].default  # runs


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s_docs() -> dict[str, dict]:
    """Every manifest under deploy/k8s by kind (each kind appears once)."""
    docs = [d for path in sorted(K8S.glob("*.yaml")) for d in load_docs(path)]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one manifest per kind"
    return by_kind


# -- running a recipe's shell script ------------------------------------------------------------

STUBS = ("torchrun", "python", "pip")


def run_script(script: str, env: dict[str, str], tmp_path: Path) -> dict[str, list[str]]:
    """Run `script` under bash with only `env` (and PATH, HOME) set and torchrun, python and pip
    replaced by stand-ins; return each stand-in's command line. A failing script (a variable
    its launcher does not set, under `set -u`) fails the test with bash's message."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    calls.mkdir(exist_ok=True)
    for name in STUBS:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > "{calls}/{name}"\n')
        stub.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    full_env = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home)}
    r = subprocess.run(
        ["bash", "-c", script], env=full_env, capture_output=True, text=True, timeout=20
    )
    assert r.returncode == 0, r.stderr
    found = {p.name: p.read_text().split("\0")[:-1] for p in calls.iterdir()}
    for p in calls.iterdir():
        p.unlink()
    return found


def torchrun_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """torchrun's options (each takes a value) and the gpulab command line after `-m gpulab`."""
    options, i = {}, 0
    while argv[i] != "-m":
        key, sep, value = argv[i].partition("=")
        options[key] = value if sep else argv[i + 1]
        i += 1 if sep else 2
    assert argv[i + 1] == "gpulab", argv
    return options, argv[i + 2 :]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def cli_problem(run_cli, argv: list[str]) -> str | None:
    """None when gpulab's CLI accepts `argv` (parsed with --help added: nothing runs), else
    its message."""
    if argv[0] == "train" and argv[1] not in workload_names():
        return f"unknown workload {argv[1]!r}"
    r = run_cli(*argv, "--help")
    return None if r.code == 0 else f"gpulab {' '.join(argv)}: {r.err.strip().splitlines()[-1]}"


def check_script_shape(script: str) -> None:
    # -u: a variable the launcher does not set stops the script (run_script then fails)
    assert script.lstrip().startswith("set -eu"), "recipe scripts start with `set -eu`"


# -- the container ------------------------------------------------------------------------------

PINNED_BASE = re.compile(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime")
BUILD_LITTER = re.compile(r"__pycache__|\.pyc$|\.egg-info")


def dockerignored(path: str, ignore_lines: list[str]) -> bool:
    """Docker's .dockerignore rule: a path is left out when it or a folder above it matches a
    pattern (`*` within a name, `**` across folders); `!` takes it back; the last match wins."""
    prefixes = ["/".join(Path(path).parts[: i + 1]) for i in range(len(Path(path).parts))]
    ignored = False
    for line in map(str.strip, ignore_lines):
        if not line or line.startswith("#"):
            continue
        pattern = line.lstrip("!").strip().strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not line.startswith("!")
    return ignored


def words(instruction_value: str) -> list[str]:
    """An instruction's arguments, in exec (JSON) or shell form."""
    if instruction_value.startswith("["):
        return json.loads(instruction_value)
    return shlex.split(instruction_value)


def copy_sources(instruction_value: str) -> list[str]:
    return [w for w in words(instruction_value)[:-1] if not w.startswith("--")]


def copy_problems(steps: list[tuple[str, str]], context: Path) -> list[str]:
    """Each COPY or ADD source is a file of the checkout that .dockerignore lets through."""
    ignore = (context / ".dockerignore").read_text().splitlines()
    problems = []
    for name, value in steps:
        for source in copy_sources(value) if name in ("COPY", "ADD") else ():
            path = context / source
            files = [path, *(p for p in path.rglob("*") if not BUILD_LITTER.search(str(p)))]
            if "://" in source or not path.exists():
                problems.append(f"{name} {source}: no such file in the checkout")
            elif any(dockerignored(str(p.relative_to(context)), ignore) for p in files):
                problems.append(f"{name} {source}: left out of the context by .dockerignore")
    if not all(dockerignored(p, ignore) for p in (".venv", "runs", ".git")):
        problems.append(".dockerignore lets .venv, runs or .git into the build context")
    return problems


def dockerfile_problems(dockerfile: Path, context: Path) -> list[str]:
    """What is wrong with `dockerfile` built from `context` (the checkout)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((context / "pyproject.toml").read_text())["project"]["scripts"]
    parser = DockerfileParser(path=str(dockerfile))
    steps = [(s["instruction"], s["value"]) for s in parser.structure]
    last = dict(steps)
    problems = copy_problems(steps, context)
    if parser.is_multistage or not PINNED_BASE.fullmatch(parser.baseimage or ""):
        problems.append(f"base image {parser.baseimage} is not one pinned pytorch/pytorch tag")
    entrypoint = words(last.get("ENTRYPOINT", ""))
    if not last.get("ENTRYPOINT", "").startswith("[") or entrypoint[0] not in scripts:
        problems.append(f"ENTRYPOINT {entrypoint} is not a console script of pyproject.toml")
    user = last.get("USER", "root").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        problems.append(f"USER {user}: not a numeric non-root user")
    runs = str(Path(last.get("WORKDIR", "/")) / DEFAULT_OUT)
    volumes = words(last.get("VOLUME", ""))
    if runs not in volumes:
        problems.append(f"VOLUME {volumes} does not hold the runs folder {runs}")
    if "TORCH_HOME" not in parser.envs:
        problems.append("no TORCH_HOME: pretrained weights would go to a home folder")
    if not any(re.search(r"pip install '?\.(\[|'| |$)", v) for n, v in steps if n == "RUN"):
        problems.append("no RUN installs gpulab from the copied checkout (pip install .)")
    return problems


def test_the_dockerfile_passes_its_lint():
    assert dockerfile_problems(DEPLOY / "Dockerfile", ROOT) == []


def test_the_image_copies_only_what_installing_gpulab_needs():
    steps = DockerfileParser(path=str(DEPLOY / "Dockerfile")).structure
    copied = [src for s in steps if s["instruction"] == "COPY" for src in copy_sources(s["value"])]
    assert copied == ["pyproject.toml", "README.md", "src"]


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("2.10.0-cuda12.8-cudnn9-runtime\n", "latest\n", "is not one pinned pytorch/pytorch"),
        ("COPY src ", "COPY srcs ", "COPY srcs: no such file"),
        ('ENTRYPOINT ["gpulab"]', 'ENTRYPOINT ["gpulab-cli"]', "not a console script"),
        ("USER 1000:1000", "USER root", "USER root: not a numeric non-root user"),
        ("USER 1000:1000", "USER 0", "USER 0: not a numeric non-root user"),
        ('VOLUME ["/gpulab/runs"]', 'VOLUME ["/data"]', "does not hold the runs folder"),
        ("WORKDIR /gpulab\n", "WORKDIR /srv\n", "does not hold the runs folder /srv/runs"),
        ("TORCH_HOME=", "TORCH_CACHE=", "no TORCH_HOME"),
        ("pip install '.[web]'", "pip install gpulab", "no RUN installs gpulab"),
    ],
)
def test_the_lint_rejects_a_broken_dockerfile(tmp_path, old, new, problem):
    text = (DEPLOY / "Dockerfile").read_text()
    assert old in text
    (tmp_path / "Dockerfile").write_text(text.replace(old, new))
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / "src").symlink_to(ROOT / "src")
    problems = dockerfile_problems(tmp_path / "Dockerfile", tmp_path)
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("src\n", "COPY src: left out of the context"),
        ("**/*.html\n", "COPY src: left out of the context"),  # the web UI's templates
        ("README*\n", "COPY README.md: left out of the context"),
        ("!.venv\n", "lets .venv, runs or .git into the build context"),
    ],
)
def test_the_lint_sees_what_dockerignore_leaves_out(tmp_path, extra, problem):
    for name in ("pyproject.toml", "README.md"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    (tmp_path / ".dockerignore").write_text((ROOT / ".dockerignore").read_text() + extra)
    (tmp_path / "src").symlink_to(ROOT / "src")
    problems = dockerfile_problems(DEPLOY / "Dockerfile", tmp_path)
    assert any(problem in p for p in problems), problems


def test_dockerignore_matching_follows_docker():
    rules = ["**/__pycache__", "runs", "*.md", "!README.md", "docs/**/*.png"]
    assert dockerignored("src/gpulab/__pycache__/cli.cpython-311.pyc", rules)
    assert dockerignored("runs/bench/x/report.html", rules)
    assert not dockerignored("src/gpulab/runs.py", rules)
    assert dockerignored("NOTES.md", rules) and not dockerignored("README.md", rules)
    assert not dockerignored("docs/bench.md", rules)  # *.md matches at the top only
    assert dockerignored("docs/images/a/b.png", rules)


# -- Kubernetes ---------------------------------------------------------------------------------


def core_problems(doc: dict) -> list[str]:
    """Kubernetes' own schemas (strict: unknown fields too), oldest and newest shipped."""
    problems = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(map(str, e.path))
            problems.append(f"{doc['kind']} {where}: {e.message} (Kubernetes {version})")
    return problems


def pod_template(template: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def job_of(job_template: dict) -> dict:
    meta = {"name": "t", **job_template.get("metadata", {})}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_template["spec"]}


def strict_object(properties: dict, required=()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


ANY_OBJECT = {"type": "object"}
STRING = {"type": "string"}
INTEGER = {"type": "integer"}


def resource(api_version: str, kind: str, spec: dict) -> dict:
    meta = {"type": "object", "required": ["name"]}
    return strict_object(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": meta,
            "spec": spec,
        },
        required=("apiVersion", "kind", "metadata", "spec"),
    )


# Kubeflow Trainer's CRDs trainer.kubeflow.org_trainjobs.yaml and _trainingruntimes.yaml
# (v1alpha1) as released in v2.0.0, v2.1.0, v2.2.1 and v2.3.0: the fields all four have, with
# their types and required fields. Fields that only some releases have (pod overrides: v2.0
# podSpecOverrides, v2.1 podTemplateOverrides, v2.2+ runtimePatches; torch.numProcPerNode in
# the runtime until v2.1) are refused, so that the recipe runs on every one of them. Embedded
# Kubernetes objects (resources, env, job templates) are checked with Kubernetes' schemas.
TRAINJOB = resource(
    "trainer.kubeflow.org/v1alpha1",
    "TrainJob",
    strict_object(
        {
            "runtimeRef": strict_object(
                {"name": STRING, "apiGroup": STRING, "kind": STRING}, required=["name"]
            ),
            "trainer": strict_object(
                {
                    "image": STRING,
                    "command": {"type": "array", "items": STRING},
                    "args": {"type": "array", "items": STRING},
                    "env": {"type": "array", "items": ANY_OBJECT},
                    "numNodes": INTEGER,
                    "numProcPerNode": INTEGER,  # v2.0-v2.1 also take "auto"; v2.2+ only ints
                    "resourcesPerNode": ANY_OBJECT,
                }
            ),
            "initializer": ANY_OBJECT,
            "suspend": {"type": "boolean"},
            "managedBy": STRING,
        },
        required=["runtimeRef"],
    ),
)
JOBSET_SPEC = strict_object(
    {
        "replicatedJobs": {
            "type": "array",
            "items": strict_object(
                {
                    "name": STRING,
                    "replicas": INTEGER,
                    "dependsOn": {"type": "array"},
                    "template": strict_object({"metadata": ANY_OBJECT, "spec": ANY_OBJECT}),
                },
                required=["name", "template"],
            ),
        },
        **{k: ANY_OBJECT for k in ("failurePolicy", "successPolicy", "startupPolicy", "network")},
    }
)
TRAINING_RUNTIME = resource(
    "trainer.kubeflow.org/v1alpha1",
    "TrainingRuntime",
    strict_object(
        {
            "mlPolicy": strict_object({"numNodes": INTEGER, "torch": strict_object({})}),
            "podGroupPolicy": ANY_OBJECT,
            "template": strict_object({"metadata": ANY_OBJECT, "spec": JOBSET_SPEC}),
        },
        required=["template"],
    ),
)
# The training operator's CRD kubeflow.org_pytorchjobs.yaml (kubeflow.org/v1) as released in
# v1.8.1 and v1.9.4; the enums are those of its API types (common_types.go), which its webhook
# enforces. Replica templates are pod templates, checked with Kubernetes' schemas.
PYTORCHJOB = resource(
    "kubeflow.org/v1",
    "PyTorchJob",
    strict_object(
        {
            "nprocPerNode": STRING,
            "elasticPolicy": ANY_OBJECT,
            "runPolicy": strict_object(
                {
                    "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                    "backoffLimit": INTEGER,
                    "activeDeadlineSeconds": INTEGER,
                    "ttlSecondsAfterFinished": INTEGER,
                    "schedulingPolicy": ANY_OBJECT,
                    "suspend": {"type": "boolean"},
                }
            ),
            "pytorchReplicaSpecs": {
                "type": "object",
                "propertyNames": {"enum": ["Master", "Worker"]},
                "required": ["Master"],
                "additionalProperties": strict_object(
                    {
                        "replicas": {"type": "integer", "minimum": 1},
                        "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
                        "template": strict_object({"metadata": ANY_OBJECT, "spec": ANY_OBJECT}),
                    },
                    required=["replicas", "template"],
                ),
            },
        },
        required=["pytorchReplicaSpecs"],
    ),
)
CRD_SUBSETS = {"TrainJob": TRAINJOB, "TrainingRuntime": TRAINING_RUNTIME, "PyTorchJob": PYTORCHJOB}


def custom_problems(doc: dict) -> list[str]:
    """A custom resource against its CRD subset, and its embedded Kubernetes objects."""
    validator = jsonschema.Draft202012Validator(CRD_SUBSETS[doc["kind"]])
    problems = [
        f"{doc['kind']} {'/'.join(map(str, e.path))}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    if problems:
        return problems
    spec = doc["spec"]
    embedded = {}
    if doc["kind"] == "PyTorchJob":
        for name, replica in spec["pytorchReplicaSpecs"].items():
            embedded[f"{name} template"] = pod_template(replica["template"])
    elif doc["kind"] == "TrainingRuntime":
        for job in spec["template"]["spec"]["replicatedJobs"]:
            embedded[f"replicatedJob {job['name']}"] = job_of(job["template"])
    else:  # TrainJob: the trainer's fields as the container they become
        trainer = spec.get("trainer", {})
        container = {
            "name": "node",
            "image": trainer.get("image", "i"),
            "command": trainer.get("command", []),
            "env": trainer.get("env", []),
            "resources": trainer.get("resourcesPerNode", {}),
        }
        embedded["trainer"] = pod_template({"spec": {"containers": [container]}})
    return [
        f"{doc['kind']} {where}, as a {p}"
        for where, obj in embedded.items()
        for p in core_problems(obj)
    ]


def manifest_problems(doc: dict) -> list[str]:
    return custom_problems(doc) if doc["kind"] in CRD_SUBSETS else core_problems(doc)


def test_every_manifest_is_valid_for_kubernetes_or_its_operator():
    docs = k8s_docs()
    assert set(docs) == {"PersistentVolumeClaim", "Job", "Pod"} | set(CRD_SUBSETS)
    assert {kind: manifest_problems(doc) for kind, doc in docs.items()} == dict.fromkeys(docs, [])


def changed(doc: dict, path: str, value) -> dict:
    """A copy of `doc` with the field at dotted `path` (list indices as numbers) set."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return doc


@pytest.mark.parametrize(
    ("kind", "path", "value", "problem"),
    [
        ("Job", "spec.completionMod", "Indexed", "completionMod"),  # a typo: strict
        ("Job", "spec.completions", "four", "'four' is not of type 'integer'"),
        ("Job", "spec.template.spec.containers.0.resource", {}, "'resource' was unexpected"),
        ("PersistentVolumeClaim", "spec.accessModes", "ReadWriteMany", "is not of type 'array'"),
        ("Pod", "spec.volumes.0.persistentVolumeClaim", {}, "'claimName' is a required"),
        ("TrainJob", "spec.trainer.numProcsPerNode", 4, "'numProcsPerNode' was unexpected"),
        ("TrainJob", "spec.runtimeRef", {"kind": "TrainingRuntime"}, "'name' is a required"),
        ("TrainJob", "spec.podSpecOverrides", [], "'podSpecOverrides' was unexpected"),
        ("TrainJob", "spec.trainer.resourcesPerNode.limit", {}, "'limit' was unexpected"),
        ("TrainingRuntime", "spec.mlPolicy.torch", {"numProcPerNode": "auto"}, "unexpected"),
        (
            "TrainingRuntime",
            "spec.template.spec.replicatedJobs.0.template.spec.parallelism",
            "2",
            "'2' is not of type 'integer'",
        ),
        ("PyTorchJob", "spec.nprocPerNode", 4, "4 is not of type 'string'"),
        ("PyTorchJob", "spec.pytorchReplicaSpecs.Workers", {}, "'Workers' is not one of"),
        ("PyTorchJob", "spec.runPolicy.cleanPodPolicy", "Never", "is not one of"),
        (
            "PyTorchJob",
            "spec.pytorchReplicaSpecs.Worker.template.spec.containers.0.ports.0.containerPort",
            "23456",
            "is not of type 'integer'",
        ),
    ],
)
def test_validation_rejects_a_broken_manifest(kind, path, value, problem):
    problems = manifest_problems(changed(k8s_docs()[kind], path, value))
    assert any(problem in p for p in problems), problems


def pod_volume_mount(pod_spec: dict, container: dict, claim: str) -> str | None:
    """Where `container` mounts the volume of persistent volume claim `claim`."""
    names = {
        v["name"]
        for v in pod_spec.get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in names]
    return mounts[0] if mounts else None


def test_the_shared_volume_is_writable_from_every_node():
    pvc = k8s_docs()["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == PVC_NAME
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def image_user_and_runs_volume() -> tuple[int, str]:
    """The image's numeric user and its runs volume, as the Dockerfile sets them."""
    steps = DockerfileParser(path=str(DEPLOY / "Dockerfile")).structure
    last = {s["instruction"]: s["value"] for s in steps}
    return int(last["USER"].split(":")[0]), words(last["VOLUME"])[0]


def test_every_pod_runs_the_image_as_its_user_with_the_shared_volume_as_its_runs():
    docs = k8s_docs()
    runtime_job = docs["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"][0]
    pods = [
        docs["Job"]["spec"]["template"]["spec"],
        docs["Pod"]["spec"],
        *(
            r["template"]["spec"]
            for r in docs["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].values()
        ),
        runtime_job["template"]["spec"]["template"]["spec"],
    ]
    uid, runs = image_user_and_runs_volume()
    assert len({c["image"] for pod in pods for c in pod["containers"]}) == 1
    for pod in pods:
        ids = {"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
        assert pod["securityContext"] == {"runAsNonRoot": True, **ids}
        (container,) = pod["containers"]
        assert pod_volume_mount(pod, container, PVC_NAME) == runs


def trainjob_recipe(docs: dict) -> dict:
    """The TrainJob as the numbers its operator reads and the container it starts."""
    job, runtime = docs["TrainJob"], docs["TrainingRuntime"]
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": runtime["metadata"]["name"],
    }
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    # Trainer puts its PET_* variables into the container "node" of the trainer step
    assert replicated["name"] == "node"
    labels = replicated["template"]["metadata"]["labels"]
    assert labels["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = replicated["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node"
    trainer = job["spec"]["trainer"]
    return {
        "name": job["metadata"]["name"],
        "nodes": trainer["numNodes"],
        "procs_per_node": trainer["numProcPerNode"],
        "gpus_per_node": trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"],
        "script": trainer["command"],
        "master": f"{job['metadata']['name']}-node-0-0.{job['metadata']['name']}",
        "pod": pod,
        "container": container,
    }


def pytorchjob_recipe(docs: dict) -> dict:
    job = docs["PyTorchJob"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    pods = [r["template"]["spec"] for r in replicas.values()]
    assert pods[0] == pods[-1], "master and workers run the same pod"
    (container,) = pods[0]["containers"]
    # the operator finds the container "pytorch" and takes PET_MASTER_PORT from this port
    assert container["name"] == "pytorch"
    assert [p["name"] for p in container["ports"]] == ["pytorchjob-port"]
    return {
        "name": job["metadata"]["name"],
        "nodes": sum(r["replicas"] for r in replicas.values()),
        "procs_per_node": int(job["spec"]["nprocPerNode"]),
        "gpus_per_node": container["resources"]["limits"]["nvidia.com/gpu"],
        "script": container["command"],
        "master": f"{job['metadata']['name']}-master-0",
        "pod": pods[0],
        "container": container,
    }


def training_problems(recipe: dict, run_cli, tmp_path: Path) -> list[str]:
    """Run a training recipe's script on each node as its operator starts it (the PET_*
    variables both Kubeflow operators set) and check the torchrun and gpulab it starts."""
    problems = []
    if recipe["procs_per_node"] != recipe["gpus_per_node"]:
        problems.append(
            f"{recipe['procs_per_node']} processes per node on {recipe['gpus_per_node']} GPUs"
        )
    shell, flag, script = recipe["script"]
    assert (shell, flag) == ("bash", "-c")
    check_script_shape(script)
    for rank in range(recipe["nodes"]):
        env = {
            "PET_NNODES": str(recipe["nodes"]),
            "PET_NPROC_PER_NODE": str(recipe["procs_per_node"]),
            "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": recipe["master"],
            "PET_MASTER_PORT": "29500",
        }
        options, gpulab = torchrun_options(run_script(script, env, tmp_path)["torchrun"])
        expected = {
            "--nnodes": str(recipe["nodes"]),
            "--nproc-per-node": str(recipe["procs_per_node"]),
            "--rdzv-backend": "c10d",
            "--rdzv-endpoint": f"{recipe['master']}:29500",
            # the restarted workers find their run folder by torchrun's run id
            "--rdzv-id": recipe["name"],
        }
        got = {k: options.get(k) for k in expected}
        if got != expected:
            problems.append(f"node {rank}: torchrun {got}, expected {expected}")
        conf = dict(kv.split("=", 1) for kv in options.get("--rdzv-conf", "").split(",") if kv)
        # node 0 hosts the store: its hostname is not the name the others dial
        if conf.get("is_host") != str(int(rank == 0)):
            problems.append(f"node {rank}: is_host={conf.get('is_host')}, expected {rank == 0:d}")
        if "join_timeout" not in conf:
            problems.append("no join_timeout: how long a missing node is waited for is unsaid")
        if int(options.get("--max-restarts", 0)) < 1:
            problems.append("no --max-restarts: a failed worker ends the job")
        mount = pod_volume_mount(recipe["pod"], recipe["container"], PVC_NAME)
        out = option(gpulab, "--out") or ""
        if mount is None or not Path(out).is_relative_to(mount):
            problems.append(f"--out {out} is not on the shared volume ({mount})")
        if option(gpulab, "--device") != "cuda":
            problems.append("training without --device cuda")
        problems.append(cli_problem(run_cli, gpulab))
    return [p for p in problems if p]


@pytest.mark.parametrize("recipe", [trainjob_recipe, pytorchjob_recipe])
def test_multi_node_training_starts_torchrun_and_gpulab_right_on_every_node(
    recipe, run_cli, tmp_path
):
    assert training_problems(recipe(k8s_docs()), run_cli, tmp_path) == []


def edit_script(recipe: dict, old: str, new: str) -> dict:
    shell, flag, script = recipe["script"]
    assert old in script
    return {**recipe, "script": [shell, flag, script.replace(old, new)]}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda r: {**r, "gpus_per_node": 8}, "4 processes per node on 8 GPUs"),
        (lambda r: edit_script(r, "--rdzv-id gpulab-caption", "--rdzv-id job"), "'job'"),
        (lambda r: edit_script(r, "is_host=1", "is_host=0"), "node 0: is_host=0, expected 1"),
        (lambda r: edit_script(r, ",join_timeout=1800", ""), "no join_timeout"),
        (lambda r: edit_script(r, "--max-restarts 3", ""), "no --max-restarts"),
        (lambda r: edit_script(r, "--out /gpulab/runs", "--out /tmp/runs"), "shared volume"),
        (lambda r: edit_script(r, "--quiet", "--tag a"), "No such option"),
        (lambda r: edit_script(r, "train caption", "train captions"), "unknown workload"),
    ],
)
def test_the_training_check_rejects_a_broken_recipe(change, problem, run_cli, tmp_path):
    problems = training_problems(change(trainjob_recipe(k8s_docs())), run_cli, tmp_path)
    assert any(problem in p for p in problems), problems


def test_a_variable_the_operator_does_not_set_stops_the_script(tmp_path):
    recipe = edit_script(trainjob_recipe(k8s_docs()), "$PET_NNODES", "$PET_NUM_NODES")
    with pytest.raises(AssertionError, match="PET_NUM_NODES: unbound variable"):
        run_script(recipe["script"][2], {"PET_NODE_RANK": "0"}, tmp_path)


def expand_k8s(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; an unknown VAR fails the test (the
    kubelet would leave it as text)."""

    def value(m: re.Match) -> str:
        assert m[1] in env, f"$({m[1]}) is not set in the container"
        return env[m[1]]

    return re.sub(r"\$\((\w+)\)", value, arg)


def bench_problems(job: dict, run_cli) -> list[str]:
    """The Indexed bench Job: one pod per node, each index writes its own folder on the shared
    volume, and gpulab accepts the command."""
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    problems = []
    if spec.get("completionMode") != "Indexed" or spec["completions"] != spec["parallelism"]:
        problems.append("not an Indexed Job running all its pods at once")
    terms = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    if not any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and t["labelSelector"]["matchLabels"].items() <= labels.items()
        for t in terms
    ):
        problems.append("bench pods may share a node")
    if container["resources"]["limits"].get("nvidia.com/gpu", 0) < 1:
        problems.append("no GPU")
    mount = pod_volume_mount(pod, container, PVC_NAME)
    defined = {e["name"]: f"<{e['name']}>" for e in container.get("env", [])}
    outs = set()
    for index in range(spec["completions"]):
        # the Job controller sets JOB_COMPLETION_INDEX in every container of an Indexed Job
        env = {**defined, "JOB_COMPLETION_INDEX": str(index)}
        args = [expand_k8s(a, env) for a in container["args"]]
        outs.add(option(args, "--out"))
        problems.append(cli_problem(run_cli, args))
    if len(outs) != spec["completions"] or not all(Path(o).is_relative_to(mount) for o in outs):
        problems.append(f"the pods do not write their own folders on the shared volume: {outs}")
    if "--full" not in container["args"]:
        problems.append("not the full suite")
    return [p for p in problems if p]


def test_the_bench_job_runs_gpulab_bench_once_per_node_into_its_own_folder(run_cli):
    assert bench_problems(k8s_docs()["Job"], run_cli) == []


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("spec.completionMode", "NonIndexed", "not an Indexed Job"),
        ("spec.parallelism", 1, "not an Indexed Job"),
        (
            "spec.template.spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution.0.topologyKey",
            "topology.kubernetes.io/zone",
            "share a node",
        ),
        ("spec.template.spec.containers.0.args.8", "/gpulab/runs/fleet", "their own folders"),
        ("spec.template.spec.containers.0.args.8", "/tmp/$(JOB_COMPLETION_INDEX)", "folders"),
        ("spec.template.spec.containers.0.args.1", "--fulll", "No such option"),
        ("spec.template.spec.containers.0.resources.limits", {}, "no GPU"),
    ],
)
def test_the_bench_check_rejects_a_broken_job(path, value, problem, run_cli):
    problems = bench_problems(changed(k8s_docs()["Job"], path, value), run_cli)
    assert any(problem in p for p in problems), problems


def test_an_unset_variable_in_the_bench_args_is_caught():
    job = k8s_docs()["Job"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    with pytest.raises(AssertionError, match=r"\$\(JOB_INDEX\) is not set"):
        expand_k8s(args[-1].replace("JOB_COMPLETION_INDEX", "JOB_INDEX"), {"NODE_NAME": "n"})


# -- SkyPilot -----------------------------------------------------------------------------------

# SkyPilot 0.14.1's task schema (sky/utils/schemas.py: get_task_schema, get_resources_schema):
# the fields the recipes use, with their types; every other top-level and resources field
# SkyPilot knows is allowed, unknown ones are refused as SkyPilot refuses them.
SKY_ENV_NAME = "^[a-zA-Z_][a-zA-Z0-9_]*$"
# the other fields SkyPilot knows, allowed unchecked
SKY_OTHER_RESOURCES = """accelerator_args cloud disk_tier ephemeral_storage infra instance_type
    job_recovery labels local_disk max_hourly_cost network_tier ports priority priority_class
    region volumes zone"""
SKY_OTHER_TASK_FIELDS = """api_server_access config event_callback file_mounts_mapping inputs
    managed_secrets outputs pool secrets service volume_mounts volumes"""
SKY_RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "accelerators": {
            "anyOf": [
                STRING,
                {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
                {"type": "array", "items": STRING},
            ]
        },
        "disk_size": {
            "anyOf": [
                INTEGER,
                {"type": "string", "pattern": "^[0-9]+([kmgtp][bi]|[KMGTP][BIbi])?$"},
            ]
        },
        "autostop": {
            "anyOf": [
                {"type": ["boolean", "integer"]},
                {"type": "string", "pattern": "^[0-9]+[mhdwMHDW]?$"},
                strict_object(
                    {
                        "idle_minutes": {"type": "integer", "minimum": 0},
                        "down": {"type": "boolean"},
                        "wait_for": STRING,
                        "hook": STRING,
                        "hook_timeout": INTEGER,
                    }
                ),
            ]
        },
        "image_id": {"type": ["string", "object", "null"]},
        "use_spot": {"type": "boolean"},
        **{k: {"type": ["string", "number"]} for k in ("cpus", "memory")},
        **{k: {"type": "array", "items": ANY_OBJECT} for k in ("any_of", "ordered")},
        **dict.fromkeys(SKY_OTHER_RESOURCES.split(), {}),
    },
}
SKY_TASK = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": STRING,
        "workdir": {"anyOf": [STRING, strict_object({"url": STRING, "ref": STRING}, ["url"])]},
        "num_nodes": {"type": "integer", "minimum": 1},
        "resources": SKY_RESOURCES,
        "envs": {
            "type": "object",
            "patternProperties": {SKY_ENV_NAME: {"type": ["string", "null"]}},
            "additionalProperties": False,
        },
        "setup": STRING,
        "run": STRING,
        "file_mounts": ANY_OBJECT,
        **dict.fromkeys(SKY_OTHER_TASK_FIELDS.split(), {}),
    },
}


def sky_schema_problems(task: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SKY_TASK)
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(task)]


def sky_env(task: dict, rank: int, gpus_per_node: int) -> dict[str, str]:
    """The environment SkyPilot 0.14 gives `run` on node `rank` (sky/skylet/constants.py and
    sky/backends/task_codegen.py), with the task's envs; addresses stay on loopback."""
    nodes = task.get("num_nodes", 1)
    return {
        **{k: str(v) for k, v in task.get("envs", {}).items()},
        "SKYPILOT_NODE_RANK": str(rank),
        "SKYPILOT_NODE_IPS": "\n".join(f"127.0.0.{i + 1}" for i in range(nodes)),
        "SKYPILOT_NUM_NODES": str(nodes),
        "SKYPILOT_NUM_GPUS_PER_NODE": str(gpus_per_node),
        "SKYPILOT_TASK_ID": "sky-2026-01-01-00-00-00-000000_gpulab_1",
        "SKYPILOT_CLUSTER_INFO": "{}",
    }


def sky_gpus_per_node(task: dict) -> int:
    counts = set(task["resources"]["accelerators"].values())
    assert len(counts) == 1, "every accelerator candidate has the same count"
    return int(counts.pop())


def setup_problems(task: dict, tmp_path: Path) -> list[str]:
    check_script_shape(task["setup"])
    calls = run_script(task["setup"], {}, tmp_path)
    if task.get("workdir") != "." or calls.get("python") != ["-m", "pip", "install", "."]:
        return [f"setup does not install the synced checkout: {calls}"]
    return []


def sky_bench_problems(task: dict, run_cli, tmp_path: Path) -> list[str]:
    problems = sky_schema_problems(task) or setup_problems(task, tmp_path)
    if problems:
        return problems
    check_script_shape(task["run"])
    calls = run_script(task["run"], sky_env(task, 0, sky_gpus_per_node(task)), tmp_path)
    argv = calls.get("python", [])
    if argv[:2] != ["-m", "gpulab"] or argv[2:4] != ["bench", "--full"]:
        return [*problems, f"run does not start gpulab bench --full: {argv}"]
    out = option(argv, "--out") or ""
    if not out.startswith(str(tmp_path / "home" / "gpulab-results") + "/"):
        problems.append(f"results go to {out}, not ~/gpulab-results (what to rsync home)")
    problems.append(cli_problem(run_cli, argv[2:]))
    return [p for p in problems if p]


def sky_train_problems(task: dict, run_cli, tmp_path: Path) -> list[str]:
    problems = sky_schema_problems(task) or setup_problems(task, tmp_path)
    if problems:
        return problems
    check_script_shape(task["run"])
    gpus = sky_gpus_per_node(task)
    for rank in range(task["num_nodes"]):
        calls = run_script(task["run"], sky_env(task, rank, gpus), tmp_path)
        options, gpulab = torchrun_options(calls["torchrun"])
        expected = {
            "--nnodes": str(task["num_nodes"]),
            "--nproc-per-node": str(gpus),
            "--node-rank": str(rank),
            "--master-addr": "127.0.0.1",  # the first of SKYPILOT_NODE_IPS
        }
        got = {k: options.get(k) for k in expected}
        if got != expected:
            problems.append(f"node {rank}: torchrun {got}, expected {expected}")
        problems.append(cli_problem(run_cli, gpulab))
    return [p for p in problems if p]


def sky_task(name: str) -> dict:
    (task,) = load_docs(SKYPILOT / name)
    return task


def test_the_skypilot_bench_task_rents_one_gpu_and_runs_the_full_suite(run_cli, tmp_path):
    task = sky_task("bench.yaml")
    assert sky_bench_problems(task, run_cli, tmp_path) == []
    assert set(task["resources"]["accelerators"]) == {"H100", "A100", "L4"}


def test_the_skypilot_training_task_starts_torchrun_on_every_node(run_cli, tmp_path):
    task = sky_task("train-multinode.yaml")
    assert task["num_nodes"] == 2
    assert sky_train_problems(task, run_cli, tmp_path) == []


@pytest.mark.parametrize(
    ("name", "old", "new", "problem"),
    [
        ("bench.yaml", "accelerators:", "accelerator:", "'accelerator' was unexpected"),
        ("bench.yaml", "disk_size: 100", "disk_size: large", "is not valid under any"),
        ("bench.yaml", "idle_minutes: 60", "idle_minute: 60", "is not valid under any"),
        ("bench.yaml", "--full ", "--quick ", "does not start gpulab bench --full"),
        ("bench.yaml", "--devices", "--device", "No such option"),
        ("bench.yaml", "out=~/gpulab-results", "out=/tmp/gpulab-results", "not ~/gpulab-results"),
        ("bench.yaml", "pip install .", "pip install gpulab", "does not install the synced"),
        ("train-multinode.yaml", "num_nodes: 2", "num_nodes: two", "'two' is not of type"),
        ("train-multinode.yaml", "head -n1", "tail -n1", "'--master-addr': '127.0.0.2'"),
        ("train-multinode.yaml", '--node-rank "$SKYPILOT_NODE_RANK" ', "", "'--node-rank': None"),
        ("train-multinode.yaml", "--quiet", "--tag fleet", "No such option"),
    ],
)
def test_the_skypilot_checks_reject_a_broken_task(name, old, new, problem, run_cli, tmp_path):
    text = (SKYPILOT / name).read_text()
    assert old in text
    task = yaml.safe_load(text.replace(old, new))
    check = sky_bench_problems if name == "bench.yaml" else sky_train_problems
    problems = check(task, run_cli, tmp_path)
    assert any(problem in p for p in problems), problems


def test_a_variable_skypilot_does_not_set_stops_the_run(tmp_path):
    task = sky_task("train-multinode.yaml")
    run = task["run"].replace("$SKYPILOT_NUM_NODES", "$SKYPILOT_NODES")
    with pytest.raises(AssertionError, match="SKYPILOT_NODES: unbound variable"):
        run_script(run, sky_env(task, 0, 1), tmp_path)


@pytest.mark.parametrize("name", ["bench.yaml", "train-multinode.yaml"])
def test_skypilots_own_loader_reads_the_tasks(name):
    sky = pytest.importorskip(
        "sky", reason="SkyPilot is not installed (it is not a test dependency)"
    )
    task = sky.Task.from_yaml(str(SKYPILOT / name))
    assert task.num_nodes == sky_task(name).get("num_nodes", 1)
