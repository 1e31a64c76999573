"""The cluster configs agree with each other and with the specs they run.

Every YAML under cluster/ and configs/ parses; each RayJob's entrypoint names a spec that validates; one Ray
version runs through the image, the manifests, the `ray up` configs and the pins; GPU jobs get GPUs and bf16
and fit their clusters; token auth is on everywhere with no token in any file; nothing exposes the
dashboard. Files only: no Ray is started and nothing leaves the machine.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
K8S = CLUSTER / "k8s"
RAY_UP_CONFIGS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
IMAGE_WORKDIR = "/home/ray/brainvlp"  # the repository copy in cluster/Dockerfile, every RayJob's working_dir
TOKEN_SECRET = "brainvlp-ray-token"
SHARED_CLAIM = "brainvlp-shared"
JOB_KINDS = ("ingest", "pretrain", "tune", "downstream", "evaluate")


def _documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _k8s_objects(kind: str) -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in _documents(path)
        if doc.get("kind") == kind
    ]


RAYJOBS = _k8s_objects("RayJob")
RAYJOB_IDS = [path.name for path, _ in RAYJOBS]


def _walk(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) pair of a parsed YAML tree, depth first; list items have key None."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        yield (key if isinstance(node, dict) else None), value
        yield from _walk(value)


def _strings(node: Any) -> Iterator[str]:
    return (value for _, value in _walk(node) if isinstance(value, str))


def _ray_cluster() -> dict:
    [(_, cluster)] = _k8s_objects("RayCluster")
    return cluster


def _cluster_specs() -> list[tuple[str, dict]]:
    """(label, RayClusterSpec) of the standing RayCluster and of every RayJob that brings its own."""
    specs = [("raycluster.yaml", _ray_cluster()["spec"])]
    return specs + [(path.name, job["spec"]["rayClusterSpec"]) for path, job in RAYJOBS if _owns_cluster(job)]


def _owns_cluster(job: dict) -> bool:
    return "rayClusterSpec" in job["spec"]


def _cluster_of(job: dict) -> dict:
    """The RayClusterSpec a RayJob runs on: its own, or the standing cluster its clusterSelector names."""
    if _owns_cluster(job):
        return job["spec"]["rayClusterSpec"]
    cluster = _ray_cluster()
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    return cluster["spec"]


def _pod_templates(cluster: dict) -> Iterator[tuple[str, dict]]:
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def _ray_container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def _quantity(value: Any) -> float:
    """A Kubernetes CPU or GPU quantity ("500m", "8", 8) as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _pod_resources(group: dict) -> dict[str, float]:
    limits = _ray_container(group["template"])["resources"]["limits"]
    return {"CPU": _quantity(limits["cpu"]), "GPU": _quantity(limits.get("nvidia.com/gpu", 0))}


def _capacity(cluster: dict) -> dict[str, float]:
    """CPUs and GPUs the worker groups offer at their largest; the head offers Ray none."""
    total = {"CPU": 0.0, "GPU": 0.0}
    for group in cluster.get("workerGroupSpecs", []):
        for name, amount in _pod_resources(group).items():
            total[name] += group["maxReplicas"] * amount
    return total


def _largest_pod(cluster: dict) -> dict[str, float]:
    pods = [_pod_resources(group) for group in cluster.get("workerGroupSpecs", [])]
    return {name: max((pod[name] for pod in pods), default=0.0) for name in ("CPU", "GPU")}


def _entrypoint(job: dict) -> tuple[Path, list[str]]:
    """The spec file and the --set overrides of `python -m jobs.run SPEC [--set k=v ...]`."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.run"], f"not a jobs.run entrypoint: {argv}"
    flags, overrides = argv[4::2], argv[5::2]
    assert all(flag == "--set" for flag in flags) and len(flags) == len(overrides), argv
    return REPO / argv[3], overrides


def _load(job: dict) -> Any:
    """The job's spec as `jobs.run` reads it in the job's working directory (validation starts no Ray)."""
    from brainvlp.pipeline import load_spec

    path, overrides = _entrypoint(job)
    assert path.is_file(), f"{job['metadata']['name']}: {path.relative_to(REPO)} does not exist"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)  # a tune spec's base path is relative to the working directory
        return load_spec(path, overrides)


@pytest.fixture(scope="module")
def job_specs() -> dict[str, Any]:
    return {path.name: _load(job) for path, job in RAYJOBS}


def _env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def _uses_token_secret(entry: dict | None) -> bool:
    ref = (entry or {}).get("valueFrom", {}).get("secretKeyRef", {})
    return "value" not in (entry or {}) and ref.get("name") == TOKEN_SECRET and ref.get("key") == "auth_token"


@pytest.mark.parametrize(
    "path",
    sorted([*CLUSTER.rglob("*.yaml"), *(REPO / "configs").rglob("*.yaml")]),
    ids=lambda path: str(path.relative_to(REPO)),
)
def test_every_yaml_parses(path: Path) -> None:
    assert _documents(path), f"{path.relative_to(REPO)} holds no YAML document"


def test_manifests_cover_every_job_kind_and_the_shared_volume() -> None:
    assert {f"rayjob-{kind}.yaml" for kind in JOB_KINDS} <= set(RAYJOB_IDS)
    assert "rayjob-existing-cluster.yaml" in RAYJOB_IDS
    assert _ray_cluster()["metadata"]["name"] == "brainvlp"
    claims = {doc["metadata"]["name"]: doc["spec"] for _, doc in _k8s_objects("PersistentVolumeClaim")}
    assert claims[SHARED_CLAIM]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("job", [job for _, job in RAYJOBS], ids=RAYJOB_IDS)
def test_rayjob_entrypoint_runs_a_spec_that_validates(job: dict) -> None:
    spec = _load(job)
    name = job["metadata"]["name"]
    if name.removeprefix("brainvlp-") in JOB_KINDS:
        assert spec.kind == name.removeprefix("brainvlp-"), f"{name} runs a {spec.kind} spec"
    # The job's working directory is a copy made per job: outputs must go to absolute shared storage.
    assert spec.output_root.startswith("/shared/"), f"{name}: output_root {spec.output_root!r}"


@pytest.mark.parametrize("job", [job for _, job in RAYJOBS], ids=RAYJOB_IDS)
def test_rayjob_runtime_env_and_lifecycle(job: dict) -> None:
    spec = job["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == IMAGE_WORKDIR
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert spec["entrypointNumCpus"] > 0  # the head advertises no CPU: the driver needs a worker's
    if _owns_cluster(job):
        assert spec["shutdownAfterJobFinishes"] is True
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    else:  # reuses the standing cluster: never shuts it down
        assert not spec.get("shutdownAfterJobFinishes", False)
        assert _cluster_of(job) == _ray_cluster()["spec"]


def _images() -> list[tuple[str, str]]:
    """(file name, image) of every container image in the manifests and the `ray up` configs."""
    return [
        (path.name, value)
        for path in [*sorted(K8S.glob("*.yaml")), *RAY_UP_CONFIGS]
        for key, value in _walk(_documents(path))
        if key == "image"
    ]


def _ray_versions() -> dict[str, str]:
    """Where a Ray version is stated, and which one."""
    constraints = (REPO / "constraints.txt").read_text()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    found = {
        "constraints.txt": re.search(r"^ray==(\S+)$", constraints, re.M).group(1),
        "Dockerfile FROM": re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-", dockerfile, re.M).group(1),
    }
    for label, cluster in _cluster_specs():
        found[f"{label} rayVersion"] = cluster["rayVersion"]
    for name, image in _images():
        tag = re.search(r"(?:rayproject/ray:|-ray)(\d+\.\d+\.\d+)", image)
        assert tag, f"{name}: the tag of {image} names no Ray version"
        found[f"{name} {image}"] = tag.group(1)
    for path in [*sorted(K8S.glob("*.yaml")), *RAY_UP_CONFIGS]:
        for text in _strings(_documents(path)):  # any `pip install ray==X`
            for pin in re.findall(r"\bray(?:\[[^\]]*\])?==(\S+)", text):
                found[f"{path.name} pip install"] = pin.strip("'\"")
    return found


def test_one_ray_version_everywhere_within_the_declared_range() -> None:
    versions = _ray_versions()
    assert len(set(versions.values())) == 1, versions
    [ray] = [Requirement(dep) for dep in re.findall(r'"(ray\[[^"]*)"', (REPO / "pyproject.toml").read_text())]
    assert ray.specifier.contains(Version(versions["constraints.txt"])), (str(ray), versions)


def test_one_image_holds_what_the_jobs_run() -> None:
    images = {image for _, image in _images()}
    assert len(images) == 1, images
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^WORKDIR {IMAGE_WORKDIR}$", dockerfile, re.M)
    for source in ("pyproject.toml", "constraints.txt", "platform/", "jobs/", "configs/"):
        assert re.search(rf"^COPY .*\b{re.escape(source)}", dockerfile, re.M), f"the image lacks {source}"
    # torch first (a CUDA build), then the project under the constraints that pin torch's version.
    torch_install = dockerfile.index('"torch==')
    assert torch_install < dockerfile.index("pip install --no-cache-dir -c constraints.txt")


def test_image_runs_ray_with_the_platforms_raylet_settings() -> None:
    from brainvlp.runtime import RAYLET_ENV

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    image_env = dict(re.findall(r"^ENV (\w+)=(\S+)$", dockerfile, re.M))
    assert RAYLET_ENV.items() <= image_env.items(), image_env


def _training(spec: Any) -> tuple[dict, dict] | None:
    """(train, deepspeed) sections of a pretrain spec or of a tune spec's base; None for other kinds."""
    if spec.kind == "pretrain":
        return vars(spec.train), vars(spec.deepspeed)
    if spec.kind == "tune":
        return spec.base["train"], spec.base["deepspeed"]
    return None


def _gpu_groups(cluster: dict) -> list[str]:
    return [g["groupName"] for g in cluster.get("workerGroupSpecs", []) if _pod_resources(g)["GPU"] > 0]


def test_gpu_jobs_request_gpus_and_bf16(job_specs: dict[str, Any]) -> None:
    assert _training(job_specs["rayjob-pretrain.yaml"])[0]["use_gpu"], "the brat pretraining runs on GPUs"
    for path, job in RAYJOBS:
        spec, cluster = job_specs[path.name], _cluster_of(job)
        training = _training(spec)
        if training and training[0]["use_gpu"]:
            assert training[1]["precision"] == "bf16", f"{path.name}: GPU training in {training[1]}"
            assert _gpu_groups(cluster), f"{path.name}: a GPU spec on a cluster without GPU workers"
        if spec.kind == "downstream" and spec.resources.gpus_per_run > 0:
            assert _gpu_groups(cluster), f"{path.name}: GPU runs on a cluster without GPU workers"


def _needs(spec: Any, entrypoint_cpus: float) -> tuple[dict[str, float], dict[str, float]]:
    """(all at once, one worker or task) of what the job asks of Ray, driver included in the first."""
    if spec.kind == "downstream":
        one = {"CPU": spec.resources.cpus_per_run, "GPU": spec.resources.gpus_per_run}
        return {"CPU": one["CPU"] + entrypoint_cpus, "GPU": one["GPU"]}, one
    training = _training(spec)
    if training is None:  # ingest and evaluate: CPU tasks
        return {"CPU": entrypoint_cpus + 1, "GPU": 0.0}, {"CPU": 1.0, "GPU": 0.0}
    train = training[0]
    one = {"CPU": train["cpus_per_worker"], "GPU": 1.0 if train["use_gpu"] else 0.0}
    workers, runs, reads = train["num_workers"], 1, 0
    if spec.kind == "tune":  # concurrent trials, each with its workers and a CPU for its Ray Data reads
        workers = spec.space.get("train.num_workers", {}).get("value", workers)
        runs, reads = spec.search.max_concurrent_trials or 1, 1
    cpus = runs * (workers * one["CPU"] + reads) + entrypoint_cpus
    return {"CPU": cpus, "GPU": runs * workers * one["GPU"]}, one


@pytest.mark.parametrize(("name", "job"), [(path.name, job) for path, job in RAYJOBS], ids=RAYJOB_IDS)
def test_job_fits_its_cluster(name: str, job: dict, job_specs: dict[str, Any]) -> None:
    cluster = _cluster_of(job)
    total, one = _needs(job_specs[name], job["spec"]["entrypointNumCpus"])
    capacity, largest = _capacity(cluster), _largest_pod(cluster)
    for resource in ("CPU", "GPU"):
        assert total[resource] <= capacity[resource], (name, resource, total, capacity)
        assert one[resource] <= largest[resource], (name, resource, one, largest)


def test_no_token_in_any_file_and_no_public_service() -> None:
    literal = re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*['\"]?[A-Za-z0-9+/_-]{6,}")
    for path in [*CLUSTER.rglob("*.yaml"), CLUSTER / "Dockerfile", REPO / ".rayignore"]:
        assert not literal.search(path.read_text()), f"{path.relative_to(REPO)} holds a literal token"
    for path in K8S.glob("*.yaml"):
        for doc in _documents(path):
            assert doc["kind"] not in ("Secret", "Ingress"), f"{path.name}: a {doc['kind']} in the repository"
            if doc["kind"] == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path.name
            for _, value in _walk(doc):
                if isinstance(value, dict) and value.get("name") == "RAY_AUTH_TOKEN":
                    assert _uses_token_secret(value), f"{path.name}: {value}"
    for label, cluster in _cluster_specs():
        assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", label


def test_every_k8s_cluster_turns_token_auth_on() -> None:
    for label, cluster in _cluster_specs():
        assert cluster["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}, label
        for group, template in _pod_templates(cluster):
            env = _env(_ray_container(template))
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", (label, group)
            assert _uses_token_secret(env.get("RAY_AUTH_TOKEN")), (label, group)
    for path, job in RAYJOBS:  # the submitter runs `ray job submit` against the authenticated cluster
        env = _env(_ray_container(job["spec"]["submitterPodTemplate"]))
        assert env["RAY_AUTH_MODE"]["value"] == "token" and _uses_token_secret(env["RAY_AUTH_TOKEN"]), path


def test_k8s_heads_take_no_work_and_every_pod_mounts_shared_storage() -> None:
    for label, cluster in _cluster_specs():
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", label
        for group, template in _pod_templates(cluster):
            claims = {
                volume["name"]: volume.get("persistentVolumeClaim", {}).get("claimName")
                for volume in template["spec"].get("volumes", [])
            }
            mounts = {m["mountPath"]: m["name"] for m in _ray_container(template).get("volumeMounts", [])}
            assert claims.get(mounts.get("/shared")) == SHARED_CLAIM, (label, group)
    standing = _ray_cluster()["spec"]
    assert standing["enableInTreeAutoscaling"] is True and standing["autoscalerOptions"]["version"] == "v2"
    for group in standing["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"], group["groupName"]


@pytest.mark.parametrize("path", RAY_UP_CONFIGS, ids=lambda path: path.name)
def test_ray_up_config(path: Path) -> None:
    # What `ray up` does first: fill in the provider's defaults, then check against Ray's config schema.
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head takes no work
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu and all("--gpus all" in t["docker"]["worker_run_options"] for t in gpu)
    assert any("GPU" not in t["resources"] and t["resources"]["CPU"] > 0 for t in types.values())
    run_options = config["docker"]["run_options"]
    assert "-v /shared:/shared" in run_options and "--env RAY_AUTH_MODE=token" in run_options
    assert any(target.endswith(".ray/auth_token") for target in config["file_mounts"])  # a file, not a value
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "ray start" not in command or "RAY_AUTH_MODE=token" in command, command


def _ignored(patterns: list[str], path: str) -> bool:
    """Whether Ray's upload matcher (gitignore patterns, its vendored pathspec) drops the file."""
    from ray._private.thirdparty.pathspec import PathSpec

    return PathSpec.from_lines("gitwildmatch", patterns).match_file(path)


def test_uploads_carry_source_and_configs_only() -> None:
    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert runtime_env["working_dir"] == "."
    assert all((REPO / module).is_dir() for module in runtime_env["py_modules"])
    assert {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"} <= set(runtime_env["env_vars"])
    rayignore = (REPO / ".rayignore").read_text().splitlines()
    kept = ["platform/brainvlp/cli.py", "jobs/run.py", "configs/brat/pretrain.yaml", "pyproject.toml"]
    dropped = [".venv/bin/python", "runs/quickstart/spec.resolved.yaml", ".git/HEAD", "tests/test_spec.py",
               "platform/brainvlp/__pycache__/cli.cpython-311.pyc", "cluster/aws.yaml"]  # fmt: skip
    for patterns in (runtime_env["excludes"], rayignore):
        assert not [path for path in kept if _ignored(patterns, path)]
        assert all(_ignored(patterns, path) for path in dropped)
