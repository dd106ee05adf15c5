"""The deploy recipes in deploy/, checked against the schemas of the tools that run them.

- Dask operator resources (DaskCluster, DaskWorkerGroup, ...) against the operator's own CRDs,
  as the dask-kubernetes package ships them for its Helm chart, with Kubernetes' structural
  schema rules (unknown fields rejected as ``kubectl apply``'s strict field validation does).
  Their embedded pod and service specs also against Kubernetes' own schemas.
- Core kinds (ConfigMap, CronJob) against Kubernetes' JSON schemas from kubernetes-validate.
- The SLURM job script as dask-jobqueue generates it from the recipe's settings.
- The container image and deploy/local/setup.sh: both install through deploy/install.sh.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import dask
import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_FILES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
DASK_GROUP = "kubernetes.dask.org"
# Oldest and newest Kubernetes whose schemas the core kinds must pass: CronJob batch/v1 and
# every field used here exist in both.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())


def documents() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in K8S_FILES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((path.name, i, doc))
    return out


def doc_id(item: tuple[str, int, dict[str, Any]]) -> str:
    return f"{item[0]}:{item[2]['kind']}"


DOCS = documents()
DASK_DOCS = [d for d in DOCS if d[2]["apiVersion"].split("/")[0] == DASK_GROUP]
CORE_DOCS = [d for d in DOCS if d not in DASK_DOCS]


def the_doc(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, _, d in DOCS if d["kind"] == kind]
    return copy.deepcopy(doc)


# ---------------------------------------------------------------------------------------------
# The Dask operator's CRDs as JSON schemas


@cache
def operator_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from the CRDs the operator's Helm chart installs."""
    crd_dir = (importlib.resources.files("dask_kubernetes")
               / "operator/deployment/helm/dask-kubernetes-operator/crds")
    out = {}
    for entry in crd_dir.iterdir():
        if not entry.name.endswith(".yaml"):
            continue
        crd = yaml.load(entry.read_text(), Loader=yaml.CSafeLoader)
        assert crd["kind"] == "CustomResourceDefinition", entry.name
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes structural schema (OpenAPI v3 + x-kubernetes-*) as plain JSON schema.

    The API server prunes fields a schema does not name unless it says
    ``x-kubernetes-preserve-unknown-fields``, and kubectl's strict field validation (the
    default) turns that into an error: so objects with ``properties`` are closed here.
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: structural(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = structural(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural(v) for v in value]
        elif not key.startswith("x-kubernetes-") and key not in ("nullable", "default"):
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-embedded-resource"):
        out.setdefault("properties", {}).update(
            apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    if ("properties" in out and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if schema.get("x-kubernetes-list-type") == "map":
        out["listMapKeys"] = list(schema.get("x-kubernetes-list-map-keys", []))
    if schema.get("format") == "int32":
        out.update(minimum=-(2**31), maximum=2**31 - 1)
    return out


def _list_map_keys(validator: Any, keys: list[str], instance: Any,
                   schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    """x-kubernetes-list-type: map: no two items with the same key fields (e.g. two ports
    with one containerPort and protocol, or two containers with one name)."""
    if not validator.is_type(instance, "array"):
        return
    seen: set[tuple[Any, ...]] = set()
    for item in instance:
        if isinstance(item, dict):
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(f"duplicate entry for keys {keys}: {key}")
            seen.add(key)


CRDValidator = jsonschema.validators.extend(jsonschema.Draft4Validator,
                                            {"listMapKeys": _list_map_keys})
DNS_1035 = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


@cache
def crd_validator(api_version: str, kind: str) -> Any:
    crds = operator_crds()
    if (api_version, kind) not in crds:
        raise LookupError(f"the Dask operator has no {kind} in {api_version}; it has "
                          f"{sorted(crds)}")
    schema = structural(crds[(api_version, kind)])
    # The API server checks apiVersion, kind and metadata itself; the operator names
    # Services and Pods after the resource, so its name must be a DNS-1035 label.
    schema["properties"].update(
        apiVersion={"enum": [api_version]}, kind={"enum": [kind]},
        metadata={"type": "object", "required": ["name"],
                  "properties": {"name": {"type": "string", "pattern": DNS_1035}}})
    schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
    return CRDValidator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    errors = crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def test_the_recipes_have_dask_and_core_kinds() -> None:
    # Guards the parametrisation below: a manifest moved or renamed is not silently skipped.
    kinds = {d["kind"] for _, _, d in DOCS}
    assert {"DaskCluster", "DaskWorkerGroup", "CronJob", "ConfigMap"} <= kinds


@pytest.mark.parametrize("item", DASK_DOCS, ids=doc_id)
def test_dask_manifest_matches_the_operator_crd(item: tuple[str, int, dict[str, Any]]) -> None:
    assert crd_errors(item[2]) == []


def _walk(doc: dict[str, Any], path: str | tuple[str, ...]) -> tuple[Any, Any]:
    """The parent node of ``path`` ("a.0.b", or a tuple where a key has dots) and its key."""
    *parents, last = path.split(".") if isinstance(path, str) else path
    node: Any = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    return node, int(last) if last.isdigit() else last


def _set(path: str | tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = _walk(doc, path)
        node[key] = value
    return mutate


def _rename(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = _walk(doc, path)
        node[new] = node.pop(key)
    return mutate


def _pop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = _walk(doc, path)
        node.pop(key)
    return mutate


def _duplicate_port(doc: dict[str, Any]) -> None:
    ports = doc["spec"]["scheduler"]["spec"]["containers"][0]["ports"]
    ports.append({**ports[0], "name": "other"})


WORKER_POD = "spec.worker.spec"
SCHEDULER = "spec.scheduler.spec.containers.0"
# (kind, mutation, a fragment of the error path expected): each a mistake the operator's
# schema catches, made in a copy of the real manifest.
CRD_MUTATIONS = {
    "misspelt-replicas": ("DaskCluster", _rename("spec.worker.replicas", "replica"),
                          "spec.worker"),
    "misspelt-container-field": ("DaskCluster",
                                 _rename(f"{SCHEDULER}.imagePullPolicy", "imagepullPolicy"),
                                 "spec.scheduler.spec.containers.0"),
    "resources-limit-typo": ("DaskWorkerGroup",  # dask-kubernetes issue 650: silently pruned
                             _rename(f"{WORKER_POD}.containers.0.resources.limits", "limit"),
                             "containers.0.resources"),
    "replicas-as-string": ("DaskCluster", _set("spec.worker.replicas", "4"),
                           "spec.worker.replicas"),
    "gpu-quantity-as-integer": ("DaskWorkerGroup",  # the CRD types quantities as strings
                                _set((*f"{WORKER_POD}.containers.0.resources.limits".split("."),
                                      "nvidia.com/gpu"), 1),
                                "limits.nvidia.com/gpu"),
    "port-out-of-int32": ("DaskCluster", _set(f"{SCHEDULER}.ports.0.containerPort", 2**32),
                          "ports.0.containerPort"),
    "args-not-a-list": ("DaskCluster", _set(f"{SCHEDULER}.args", "dask scheduler"),
                        f"{SCHEDULER}.args"),
    "no-worker-section": ("DaskCluster", _pop("spec.worker"), "spec"),
    "no-containers": ("DaskCluster", _pop(f"{WORKER_POD}.containers"), WORKER_POD),
    "container-without-name": ("DaskWorkerGroup", _pop(f"{WORKER_POD}.containers.0.name"),
                               "containers.0"),
    "worker-group-without-cluster": ("DaskWorkerGroup", _pop("spec.cluster"), "spec"),
    "duplicate-container-port": ("DaskCluster", _duplicate_port, "containers.0.ports"),
    "name-not-dns": ("DaskCluster", _set("metadata.name", "Geo_Flow"), "metadata.name"),
}


@pytest.mark.parametrize("name", sorted(CRD_MUTATIONS))
def test_the_crd_check_rejects_a_broken_manifest(name: str) -> None:
    kind, mutate, where = CRD_MUTATIONS[name]
    doc = the_doc(kind)
    assert crd_errors(doc) == []
    mutate(doc)
    errors = crd_errors(doc)
    assert errors, f"{name}: the broken {kind} passed"
    assert any(where in e for e in errors), errors


def test_an_unknown_operator_version_is_refused() -> None:
    doc = the_doc("DaskCluster")
    doc["apiVersion"] = f"{DASK_GROUP}/v2"
    with pytest.raises(LookupError, match="no DaskCluster"):
        crd_errors(doc)


# ---------------------------------------------------------------------------------------------
# Kubernetes' own schemas (kubernetes-validate ships them per release)


def k8s_errors(doc: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.path))}: {err.message}"]
    return []


def embedded_pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = doc["spec"]
    if doc["kind"] == "DaskCluster":
        yield "scheduler", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "s"},
                            "spec": spec["scheduler"]["spec"]}
        yield "service", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                          "spec": spec["scheduler"]["service"]}
    if "worker" in spec:
        yield "worker", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w"},
                         "spec": spec["worker"]["spec"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("item", CORE_DOCS, ids=doc_id)
def test_core_manifest_matches_kubernetes_schema(item: tuple[str, int, dict[str, Any]],
                                                 version: str) -> None:
    assert k8s_errors(item[2], version) == []


@pytest.mark.parametrize("item", DASK_DOCS, ids=doc_id)
def test_dask_manifest_pods_match_kubernetes_schema(item: tuple[str, int, dict[str, Any]]
                                                    ) -> None:
    # The operator's CRD embeds a PodSpec of the Kubernetes release it was generated from;
    # the pods it creates must also pass the current release's own schema.
    for part, pod in embedded_pods(item[2]):
        assert k8s_errors(pod, K8S_VERSIONS[-1]) == [], part


JOB_POD = "spec.jobTemplate.spec.template.spec"
K8S_MUTATIONS = {
    "misspelt-concurrency-policy": (_rename("spec.concurrencyPolicy", "concurrencypolicy"),
                                    "concurrencypolicy"),
    "misspelt-volume-mount": (_rename(f"{JOB_POD}.containers.0.volumeMounts.0.mountPath",
                                      "mountpath"), "volumeMounts.0"),
    "backoff-limit-as-string": (_set("spec.jobTemplate.spec.backoffLimit", "2"), "'2'"),
    "schedule-as-number": (_set("spec.schedule", 5), "5"),
    "no-schedule": (_pop("spec.schedule"), "'schedule'"),
    "no-job-template": (_pop("spec.jobTemplate"), "'jobTemplate'"),
    "container-without-name": (_pop(f"{JOB_POD}.containers.0.name"), "'name'"),
    "deadline-as-duration": (_set("spec.startingDeadlineSeconds", "1h"), "'1h'"),
}


@pytest.mark.parametrize("name", sorted(K8S_MUTATIONS))
def test_the_kubernetes_check_rejects_a_broken_cronjob(name: str) -> None:
    mutate, fragment = K8S_MUTATIONS[name]
    doc = the_doc("CronJob")
    mutate(doc)
    errors = k8s_errors(doc, K8S_VERSIONS[-1])
    assert errors, f"{name}: the broken CronJob passed"
    assert fragment in errors[0], errors  # kubernetes-validate reports the first error


def test_cronjob_runs_the_spec_it_mounts_and_the_spec_loads(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from geoflow.workflow import load_workflow

    config, job = the_doc("ConfigMap"), the_doc("CronJob")
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    command = container["args"]
    assert command[:2] == ["geoflow", "run"]
    key = Path(command[2]).relative_to(mount["mountPath"]).as_posix()
    assert key in config["data"]
    # The spec in the ConfigMap is one geoflow accepts, aimed at the operator's scheduler.
    monkeypatch.setenv("GEOFLOW_BUCKET", "bucket")
    spec = tmp_path / "workflow.yaml"
    spec.write_text(config["data"][key])
    wf = load_workflow(spec)
    cluster = the_doc("DaskCluster")["metadata"]["name"]
    assert wf.cluster.scheduler == f"tcp://{cluster}-scheduler:8786"


def _dask_cli_commands() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group="dask_cli")}


@pytest.mark.parametrize("item", DASK_DOCS, ids=doc_id)
def test_dask_containers_run_commands_the_image_has(item: tuple[str, int, dict[str, Any]]
                                                    ) -> None:
    # The image has the `dask` command (distributed no longer installs dask-scheduler /
    # dask-worker); its subcommands are the dask_cli entry points distributed registers.
    for part, pod in embedded_pods(item[2]):
        for container in pod["spec"].get("containers", []):
            args = container.get("command", []) + container.get("args", [])
            assert args[0] == "dask", (part, args)
            assert args[1] in _dask_cli_commands(), (part, args)
            assert args[1] == {"scheduler": "scheduler", "worker": "worker"}[part], (part, args)


def test_gpu_workers_advertise_the_gpu_they_hold() -> None:
    group = the_doc("DaskWorkerGroup")
    assert group["spec"]["cluster"] == the_doc("DaskCluster")["metadata"]["name"]
    (container,) = group["spec"]["worker"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


# ---------------------------------------------------------------------------------------------
# SLURM: the job script dask-jobqueue writes for the recipe's settings


@cache
def slurm_recipe() -> Any:
    spec = importlib.util.spec_from_file_location("slurm_cluster",
                                                  DEPLOY / "hpc" / "slurm_cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["slurm_cluster"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def job_script(**settings: Any) -> str:
    from geoflow.retry import RetryPolicy

    recipe = slurm_recipe()
    # Loopback and no fixed dashboard port: the test's scheduler is only for the script.
    with recipe.make_cluster(recipe.SlurmSettings(**settings), RetryPolicy(timeout_s=45),
                             scheduler_options={"host": "127.0.0.1",
                                                "dashboard_address": "127.0.0.1:0"}) as cluster:
        return cluster.job_script()


def _exports(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("export "):
            key, _, value = shlex.split(line[len("export "):])[0].partition("=")
            out[key] = value
    return out


def _worker_command(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln]
    return shlex.split(line)


def test_slurm_gpu_job_script() -> None:
    from geoflow._cluster import WORKER_ENV, gdal_settings
    from geoflow.retry import RetryPolicy

    script = job_script(partition="gpu", account="proj42", cores=8, memory="32GB",
                        walltime="04:00:00", prologue=("module load cuda",))
    directives = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    for expected in ("#SBATCH -p gpu", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=8",
                     "#SBATCH --mem=30G",  # 32 GB = 29.8 GiB, rounded up by dask-jobqueue
                     "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1"):
        assert expected in directives, (expected, directives)
    cmd = _worker_command(script)
    assert cmd[1:3] == ["-m", "distributed.cli.dask_worker"]
    assert cmd[3].startswith("tcp://127.0.0.1:")
    assert cmd[cmd.index("--resources") + 1] == "GPU=1"
    assert cmd[cmd.index("--nthreads") + 1] == "8"
    assert "--nworkers" not in cmd  # one worker process per job: it owns the GPU
    # geoflow's worker environment, from the spec's retry policy, after the site's lines.
    assert _exports(script) == {**WORKER_ENV, **gdal_settings(RetryPolicy(timeout_s=45))}
    assert _exports(script)["GDAL_HTTP_TIMEOUT"] == "45"
    lines = script.splitlines()
    assert lines.index("module load cuda") < min(
        i for i, ln in enumerate(lines) if ln.startswith("export "))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_slurm_cpu_job_script_asks_for_no_gpu() -> None:
    script = job_script(gpu=False)
    assert "--gres" not in script
    assert "--resources" not in _worker_command(script)
    assert "#SBATCH -p" not in script  # no partition given: the site's default


def test_slurm_recipe_prints_its_job_script_and_submits_nothing(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # No sbatch on PATH: submitting anything would fail loudly.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    with dask.config.set({"jobqueue.slurm.scheduler-options": {
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}):
        rc = slurm_recipe().main([str(ROOT / "workflows" / "demo.yaml"), "--print-job",
                                  "--partition", "gpu"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "#SBATCH -p gpu" in out and "--gres=gpu:1" in out and "GPU=1" in out


def test_slurm_recipe_refuses_a_bad_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbbox: [1, 2]\n")
    assert slurm_recipe().main([str(bad), "--print-job"]) == 2


# ---------------------------------------------------------------------------------------------
# One list of packages for .venv and the image


def _shell_commands(text: str) -> list[list[str]]:
    """The shell commands in a script or in a Dockerfile's RUN lines, split into words."""
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*RUN\s+", "", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|", "&"):
                while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                    words = words[1:]  # VAR=value prefixes
                if words:
                    out.append(words)
                words = []
            else:
                words.append(token)
    return out


def _install_calls(path: Path) -> list[list[str]]:
    calls = [w for w in _shell_commands(path.read_text()) if w[:2] == ["bash", "deploy/install.sh"]]
    return [w[2:] for w in calls]


def _installs(args: list[str], docker_args: dict[str, str] | None = None) -> list[str]:
    """The requirements deploy/install.sh installs with these arguments (its --dry-run)."""
    args = [docker_args.get(a.strip("${}"), a) if a.startswith("${") and docker_args else a
            for a in args]
    args = [a for a in args if a]
    out = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--dry-run", *args],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    reqs = []
    for line in out.splitlines():
        words = shlex.split(line)
        assert words[1:4] == ["-m", "pip", "install"], line
        skip_next = False
        for w in words[4:]:
            if skip_next:
                skip_next = False
            elif w in ("--index-url", "-i", "-c", "--constraint"):
                skip_next = True
            elif not w.startswith("-"):
                reqs.append(w)
    return reqs


def _by_name(reqs: list[str]) -> dict[str, str]:
    """name -> requirement text; the project (``.[extras]``) under "geoflow"."""
    out = {}
    for r in reqs:
        if r.startswith("."):
            out["geoflow"] = r
        else:
            out[Requirement(r).name.lower()] = str(Requirement(r).specifier)
    return out


def _extras(project: str) -> set[str]:
    m = re.fullmatch(r"\.\[(.*)\]", project)
    assert m, project
    return set(m.group(1).split(","))


def test_setup_and_image_install_the_same_through_one_script() -> None:
    setup_calls = _install_calls(DEPLOY / "local" / "setup.sh")
    docker_calls = _install_calls(DEPLOY / "container" / "Dockerfile")
    assert len(setup_calls) == 1 and len(docker_calls) == 2
    # Nothing installs packages besides the script (a second list would drift).
    for path in (DEPLOY / "local" / "setup.sh", DEPLOY / "container" / "Dockerfile"):
        pips = [w for w in _shell_commands(path.read_text())
                if any(re.fullmatch(r"(.*/)?pip[\d.]*", word) for word in w)]
        assert pips == [], (path.name, pips)
    assert "TORCH_VERSION" not in (DEPLOY / "container" / "Dockerfile").read_text()

    # setup.sh: `bash deploy/install.sh "${dev[@]}" --editable PYTHON .`
    (setup,) = setup_calls
    setup = [a for a in setup if a != "${dev[@]}"]
    local = _by_name(_installs(setup))
    local_dev = _by_name(_installs(["--dev", *setup]))
    image = _by_name([r for call in docker_calls for r in _installs(call, {"EXTRA_PACKAGES": ""})])

    assert local["torch"] == image["torch"] == local_dev["torch"] == "==2.13.0"
    image_only_extras = {"planetary-computer"}  # signs Planetary Computer asset URLs
    assert _extras(image["geoflow"]) == _extras(local["geoflow"]) | image_only_extras
    assert _extras(local["geoflow"]) == {"server", "cog"}
    # What only the image adds is not something .venv has with another version.
    assert set(image) - set(local) == {"bokeh"}
    # --dev installs geoflow[dev], which includes the runtime extras.
    assert _extras(local_dev["geoflow"]) == {"dev"}
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "geoflow" and Requirement(r).extras >= {"server", "cog"}
               for r in dev["dev"])


def test_image_takes_torch_from_its_variant_index() -> None:
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    assert re.search(r"ARG TORCH_VARIANT=cpu\b", text)
    assert 'TORCH_INDEX_URL="https://download.pytorch.org/whl/${TORCH_VARIANT}"' in text
    env = {"TORCH_INDEX_URL": "https://download.pytorch.org/whl/cu128", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--dry-run", "--step", "torch",
                          "python", "."], capture_output=True, text=True, check=True,
                         env=env).stdout
    (torch_line,) = [ln for ln in out.splitlines() if "torch==" in ln]
    assert "--index-url https://download.pytorch.org/whl/cu128" in torch_line


@pytest.mark.parametrize("script", ["install.sh", "local/setup.sh", "local/cluster.sh"])
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
