"""The deployable cluster configs in cluster/: every YAML parses, carries what its kind requires,
keeps credentials out, and runs entrypoints and flags that really exist.

Every KubeRay object (RayCluster, RayJob, RayCronJob, RayService, and the RayJob template a
ConfigMap carries) is validated against the KubeRay CRDs' own openAPIV3Schema, for the oldest and
newest KubeRay the manifests target (tests/data/kuberay/<tag>/, copied from ray-project/kuberay by
scripts/kuberay_schemas.py), strictly: a field the CRD does not declare is an error, where the API
server would silently prune it. On top of the schemas, what the operator needs but the CRDs do not
say: every container has an image, head and worker groups keep rayStartParams (required up to
KubeRay 1.1), a RayJob in K8sJobMode has an entrypoint and a cluster, replicas lie within bounds.
The Kubernetes objects (CronJob, RBAC, ConfigMap) and every pod template inside the KubeRay
objects are validated against Kubernetes' own OpenAPI schemas, strictly (unknown fields are
errors), as shipped by the kubernetes-validate package, for the oldest and newest Kubernetes the
manifests target. The launcher YAML is checked against the schema Ray itself ships
(ray/autoscaler/ray-schema.json), after the same prepare_config that `ray up` runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KUBERAY = os.path.join(ROOT, "cluster", "kuberay")
AWS = os.path.join(ROOT, "cluster", "aws")

REQUIRED = {  # what the operator needs beyond the CRDs' required lists
    "HeadGroupSpec": {"rayStartParams"},
    "WorkerGroupSpec": {"rayStartParams"},
    "CronJob.spec": {"jobTemplate", "schedule"},
    "Container": {"name", "image"},
    "EnvVar": {"name"},
    "SecretKeySelector": {"key", "name"},
}
SECRET_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|SESSION)", re.I)


def kuberay_files():
    return sorted(os.path.join(KUBERAY, f) for f in os.listdir(KUBERAY) if f.endswith((".yaml", ".yml")))


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def all_docs():
    for path in kuberay_files():
        for doc in load_all(path):
            yield os.path.basename(path), doc
            if doc.get("kind") == "ConfigMap":  # a RayJob template carried in a ConfigMap
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        for inner in yaml.safe_load_all(text):
                            if inner:
                                yield f"{os.path.basename(path)}:{key}", inner


def missing(obj: dict, kind: str) -> set:
    return {k for k in REQUIRED[kind] if k not in obj}


def req_name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower()


def req_norm(spec: str) -> str:
    """'opencv-python-headless >= 4.10, <5' -> 'opencv-python-headless>=4.10,<5' (extras dropped)."""
    return re.sub(r"\[[^\]]*\]", "", re.sub(r"\s+", "", spec)).lower()


def pyproject_dependencies() -> dict[str, str]:
    """name -> normalized requirement, for fer-ray's runtime dependencies except Ray itself."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    return {req_name(d): req_norm(d) for d in deps if req_name(d) != "ray"}


# ------------------------------------------------------------------------------ checks per object


def check_containers(where: str, pod_template: dict, errors: list):
    spec = (pod_template or {}).get("spec") or {}
    containers = spec.get("containers")
    if not containers:
        errors.append(f"{where}: template.spec.containers is required")
        return
    for c in containers:
        if missing(c, "Container"):
            errors.append(f"{where}: container lacks {sorted(missing(c, 'Container'))}")
        for env in c.get("env") or []:
            if missing(env, "EnvVar"):
                errors.append(f"{where}: env entry without a name")
            name = env.get("name", "")
            if "value" in env and SECRET_ENV.search(name):
                errors.append(f"{where}: {name} is inlined; it must come from a Secret (valueFrom.secretKeyRef)")
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref is not None and missing(ref, "SecretKeySelector"):
                errors.append(f"{where}: {name} secretKeyRef lacks {sorted(missing(ref, 'SecretKeySelector'))}")


def check_raycluster_spec(where: str, spec: dict, errors: list):
    """What the operator needs of a RayClusterSpec beyond its CRD schema (checked apart)."""
    head = spec["headGroupSpec"]
    if missing(head, "HeadGroupSpec"):
        errors.append(f"{where}: headGroupSpec lacks {sorted(missing(head, 'HeadGroupSpec'))}")
    check_containers(f"{where} head", head.get("template"), errors)
    for group in spec.get("workerGroupSpecs") or []:
        name = group.get("groupName", "?")
        if missing(group, "WorkerGroupSpec"):
            errors.append(f"{where} group {name}: lacks {sorted(missing(group, 'WorkerGroupSpec'))}")
        lo, hi, n = group["minReplicas"], group["maxReplicas"], group.get("replicas", group["minReplicas"])
        if not 0 <= lo <= n <= hi:
            errors.append(f"{where} group {name}: need 0 <= minReplicas <= replicas <= maxReplicas, got {lo}/{n}/{hi}")
        check_containers(f"{where} group {name}", group["template"], errors)


def check_rayjob_spec(where: str, spec: dict, errors: list):
    if not spec.get("entrypoint"):
        errors.append(f"{where}: a RayJob in K8sJobMode needs an entrypoint")
    if not (spec.get("rayClusterSpec") or spec.get("clusterSelector")):
        errors.append(f"{where}: a RayJob needs rayClusterSpec or clusterSelector")
    if spec.get("rayClusterSpec"):
        check_raycluster_spec(f"{where} rayClusterSpec", spec["rayClusterSpec"], errors)


def rayjob_specs():
    """(where, RayJobSpec) for every RayJob, RayCronJob template and ConfigMap-carried RayJob."""
    for where, doc in all_docs():
        if doc.get("kind") == "RayJob":
            yield where, doc["spec"]
        elif doc.get("kind") == "RayCronJob":
            yield f"{where} jobTemplate", doc["spec"]["jobTemplate"]


# ------------------------------------------------------------------------------------- the tests


def test_the_expected_manifests_exist():
    kinds = {doc.get("kind") for _, doc in all_docs()}
    assert {"RayCluster", "RayJob", "RayCronJob", "RayService", "CronJob", "ServiceAccount", "Role",
            "RoleBinding"} <= kinds
    assert os.path.isfile(os.path.join(AWS, "cluster.yaml"))


@pytest.mark.parametrize("path", kuberay_files(), ids=os.path.basename)
def test_every_kuberay_yaml_parses_with_kind_and_metadata(path):
    docs = load_all(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion/kind"
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"
        if doc["apiVersion"].startswith("ray.io/"):
            assert doc["apiVersion"] == "ray.io/v1", f"{path}: target ray.io/v1, not {doc['apiVersion']}"


def test_raycluster_has_head_cpu_and_gpu_groups_with_autoscaling_bounds():
    errors = []
    clusters = [(w, d) for w, d in all_docs() if d.get("kind") == "RayCluster"]
    assert clusters
    for where, doc in clusters:
        spec = doc["spec"]
        check_raycluster_spec(where, spec, errors)
        assert spec.get("enableInTreeAutoscaling") is True, f"{where}: autoscaling is off"
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token authentication is off"
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpu = [g for g in groups.values()
               if any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
                      for c in g["template"]["spec"]["containers"])]
        cpu = [g for g in groups.values() if g not in gpu]
        assert gpu and cpu, f"{where}: wants a CPU and a GPU worker group"
        for g in groups.values():
            assert g["maxReplicas"] > g["minReplicas"], f"{where} {g['groupName']}: no room to autoscale"
            for c in g["template"]["spec"]["containers"]:
                assert c.get("resources", {}).get("limits", {}).get("cpu"), f"{where}: set CPU limits"
    assert not errors, "\n".join(errors)


def test_rayjobs_and_schedules_carry_their_required_fields():
    errors = []
    specs = list(rayjob_specs())
    assert len(specs) >= 4  # train, label, RayCronJob template, CronJob's template
    for where, spec in specs:
        check_rayjob_spec(where, spec, errors)
    for where, doc in all_docs():
        if doc.get("kind") == "RayCronJob":
            if len(doc["spec"]["schedule"].split()) != 5:
                errors.append(f"{where}: schedule is not a 5-field cron expression")
    assert not errors, "\n".join(errors)


def test_no_credentials_inline_anywhere():
    errors = []
    for where, doc in all_docs():
        if doc.get("kind") == "Secret":
            errors.append(f"{where}: ships a Secret; create it with kubectl instead")

        def walk(node, path):
            if isinstance(node, dict):
                if "containers" in node and isinstance(node["containers"], list):
                    check_containers(f"{where} {path}", {"spec": node}, errors)
                for k, v in node.items():
                    walk(v, f"{path}.{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}[{i}]")
        walk(doc, "")
    text = "".join(open(p).read() for p in kuberay_files() + [os.path.join(AWS, "cluster.yaml")])
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id is in the configs"
    assert not errors, "\n".join(errors)
    # every S3 key reaches the pods through a secretKeyRef
    refs = [env for _, doc in all_docs() for env in _envs(doc) if env.get("name") == "AWS_SECRET_ACCESS_KEY"]
    assert refs and all("secretKeyRef" in (e.get("valueFrom") or {}) for e in refs)


def _envs(node):
    if isinstance(node, dict):
        if isinstance(node.get("env"), list):
            yield from node["env"]
        for v in node.values():
            yield from _envs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _envs(v)


def test_entrypoints_run_real_jobs_with_real_flags():
    """Each entrypoint is `python jobs/<cmd>.py ARGS`: the script exists and the real parser accepts
    ARGS, so renaming or dropping a flag in fer_ray/commands/ breaks this test."""
    from fer_ray.cli import build_parser

    seen = set()
    for where, spec in rayjob_specs():
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] in ("python", "python3"), f"{where}: entrypoint should run python, got {argv[0]}"
        script = argv[1]
        assert re.fullmatch(r"jobs/\w+\.py", script), f"{where}: entrypoint runs {script}, not jobs/*.py"
        assert os.path.isfile(os.path.join(ROOT, script)), f"{where}: {script} does not exist"
        command = os.path.basename(script)[:-3]
        args = build_parser(command).parse_args([command, *argv[2:]])  # UsageError on a bad flag
        assert args.command == command
        seen.add(command)
    assert {"train", "label"} <= seen


def test_label_schedules_are_incremental():
    for where, spec in rayjob_specs():
        argv = shlex.split(spec["entrypoint"])
        if argv[1] == "jobs/label.py" and ("Cron" in where or ":" in where):
            assert "--incremental" in argv, f"{where}: a scheduled labeling run must be --incremental"


def test_runtime_env_ships_the_code_and_the_dependencies():
    """working_dir is the code; the pip list is pyproject.toml's dependencies with the same version
    bounds, so adding or re-pinning a dependency without updating the manifests breaks this."""
    deps = set(pyproject_dependencies().values())
    for where, spec in rayjob_specs():
        env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert env.get("working_dir"), f"{where}: runtimeEnvYAML has no working_dir (the code)"
        assert re.match(r"(s3|gs|https)://.+\.zip$", env["working_dir"]), f"{where}: working_dir must be a remote zip"
        pip = env.get("pip") or {}
        packages = {req_norm(p) for p in (pip.get("packages", []) if isinstance(pip, dict) else pip)}
        assert deps <= packages, f"{where}: runtimeEnvYAML pip lacks {sorted(deps - packages)} (pyproject.toml)"
    with open(os.path.join(AWS, "cluster.yaml")) as f:
        setup = " ".join(yaml.safe_load(f)["setup_commands"])
    installed = {req_norm(t) for t in shlex.split(setup)}
    assert deps <= installed, f"cluster/aws/cluster.yaml setup_commands lack {sorted(deps - installed)}"


def test_rayservice_runs_the_serve_app_under_serves_own_schema():
    """The RayService's serveConfigV2 is checked by Ray Serve's own config schema (its field lists:
    no unknown keys), its import path builds fer-ray's application, and its runtime env carries
    the package's dependencies and the serve extra."""
    import importlib

    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    services = [(w, d) for w, d in all_docs() if d.get("kind") == "RayService"]
    assert services
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extra = {req_norm(d) for d in tomllib.load(f)["project"]["optional-dependencies"]["serve"]
                 if req_name(d) != "ray"}
    for where, doc in services:
        spec, errors = doc["spec"], []
        check_raycluster_spec(f"{where} rayClusterConfig", spec["rayClusterConfig"], errors)
        assert not errors, "\n".join(errors)
        cfg = yaml.safe_load(spec["serveConfigV2"])
        assert set(cfg) <= set(ServeDeploySchema.model_fields), f"{where}: unknown serveConfigV2 keys"
        ServeDeploySchema.model_validate(cfg)
        for app in cfg["applications"]:
            assert set(app) <= set(ServeApplicationSchema.model_fields), f"{where}: unknown application keys"
            module, attr = app["import_path"].split(":")
            assert type(getattr(importlib.import_module(module), attr)).__name__ == "Application"
            pip = app["runtime_env"]["pip"]
            packages = {req_norm(p) for p in (pip.get("packages", []) if isinstance(pip, dict) else pip)}
            missing_deps = (set(pyproject_dependencies().values()) | extra) - packages
            assert not missing_deps, f"{where}: runtime_env pip lacks {sorted(missing_deps)}"
            assert re.match(r"(s3|gs|https)://.+\.zip$", app["runtime_env"]["working_dir"])


def test_portable_cronjob_has_the_rbac_its_script_uses():
    docs = {d["kind"]: d for _, d in all_docs() if d.get("kind") in ("CronJob", "Role", "RoleBinding", "ServiceAccount")}
    cron, role, binding, sa = docs["CronJob"], docs["Role"], docs["RoleBinding"], docs["ServiceAccount"]
    assert not missing(cron["spec"], "CronJob.spec")
    assert cron["spec"].get("concurrencyPolicy") == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["roleRef"]["kind"] == "Role"
    assert {"kind": "ServiceAccount", "name": sa["metadata"]["name"]} in binding["subjects"]
    script = " ".join(" ".join(c.get("command", []) + c.get("args", [])) for c in pod["containers"])
    used = set(re.findall(r"kubectl (create|get|list|delete|patch|apply|watch)\b", script))
    used |= {"delete"} if "xargs -r kubectl delete" in script else set()
    # `kubectl delete` waits for the deletion with a watch unless told not to; the Role grants none
    deletes = re.findall(r"kubectl delete[^|;\n]*", script)
    assert all("--wait=false" in d for d in deletes) or "watch" in {
        v for r in role["rules"] for v in r["verbs"]}, deletes
    granted = {v for r in role["rules"] if "rayjobs" in r["resources"] and "ray.io" in r["apiGroups"] for v in r["verbs"]}
    assert used <= granted, f"the script runs kubectl {sorted(used - granted)} without RBAC for it"
    # the RayJob template it creates is mounted from the ConfigMap it names
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = [d for _, d in all_docs() if d.get("kind") == "ConfigMap"][0]
    assert any(v.get("configMap", {}).get("name") == cm["metadata"]["name"] for v in volumes.values())
    assert "/spec/rayjob.yaml" in script and "rayjob.yaml" in cm["data"]


def test_jobs_that_select_a_cluster_select_the_raycluster_we_ship():
    names = {d["metadata"]["name"] for _, d in all_docs() if d.get("kind") == "RayCluster"}
    for where, spec in rayjob_specs():
        sel = spec.get("clusterSelector")
        if sel:
            assert sel.get("ray.io/cluster") in names, f"{where}: selects a cluster that is not in raycluster.yaml"


def test_aws_launcher_config_passes_rays_own_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    with open(os.path.join(AWS, "cluster.yaml")) as f:
        raw = yaml.safe_load(f)
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    jsonschema.validate(raw, schema)  # the file as written: no unknown or mistyped fields
    validate_config(prepare_config(raw))  # what `ray up` checks after filling the AWS defaults
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != raw["head_node_type"]}
    assert any("g" in v["node_config"]["InstanceType"].split(".")[0] for v in workers.values()), "no GPU worker type"
    assert any(v["node_config"]["InstanceType"].startswith(("c", "m")) for v in workers.values()), "no CPU worker type"
    for name, t in types.items():
        assert t["node_config"].get("IamInstanceProfile"), f"{name}: S3 access should come from an instance profile"
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert all("RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"]) for _ in [0])
    assert "AWS_SECRET_ACCESS_KEY" not in open(os.path.join(AWS, "cluster.yaml")).read()
    with open(os.path.join(AWS, "s3-policy.json")) as f:
        policy = json.load(f)
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions


def test_local_scripts_keep_the_job_api_on_localhost_with_token_auth():
    local = os.path.join(ROOT, "cluster", "local")
    start = open(os.path.join(local, "start.sh")).read()
    stop = open(os.path.join(local, "stop.sh")).read()
    assert "--dashboard-host=127.0.0.1" in start
    assert "export RAY_AUTH_MODE=token" in start
    code_lines = [ln for s in (start, stop) for ln in s.splitlines() if not ln.lstrip().startswith("#")]
    assert not any(re.search(r"\bray\b.*\bstop\b", ln) for ln in code_lines), "never `ray stop` on a shared machine"
    for script in ("start.sh", "stop.sh", "add-node.sh"):
        assert os.access(os.path.join(local, script), os.X_OK), f"{script} is not executable"


# -------------------------------------------- Kubernetes' own schemas (kubernetes-validate package)

# The Kubernetes versions the manifests target: the oldest and newest KubeRay 1.5-1.7 support.
K8S_VERSIONS = ("1.29", "1.33")


def _k8s_schema(name: str, version: str):
    """A strict (no unknown fields) JSON-schema validator for one Kubernetes type, e.g.
    'podtemplatespec-v1', from the schemas kubernetes-validate ships."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    schema = utils.schema_contents(f"{folder}/{name}.json", version)
    registry = Resource.from_contents(utils.schema_contents(f"{folder}/_definitions.json", version)) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def pod_templates(obj, where=""):
    """Every Kubernetes PodTemplateSpec inside a KubeRay object (head and worker groups, the
    submitter, clusters inside RayJobs, RayCronJobs and RayServices): the CRDs embed Kubernetes'
    own PodTemplateSpec schema there."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("template", "submitterPodTemplate") and isinstance(v, dict) and "containers" in v.get("spec", {}):
                yield f"{where}.{k}", v
            else:
                yield from pod_templates(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from pod_templates(v, f"{where}[{i}]")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_objects_pass_kubernetes_schemas_strictly(version):
    from kubernetes_validate import utils

    core = [(w, d) for w, d in all_docs() if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for _, d in core} >= {"CronJob", "Role", "RoleBinding", "ServiceAccount", "ConfigMap"}
    for where, doc in core:
        try:
            utils.validate(doc, version, strict=True)
        except utils.ValidationError as exc:
            pytest.fail(f"{where} {doc['kind']}: {'.'.join(map(str, exc.caught.path))}: {exc.caught.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_pod_templates_inside_kuberay_objects_pass_kubernetes_schema_strictly(version):
    import jsonschema

    check = _k8s_schema("podtemplatespec-v1", version)
    found = [(f"{w}:{doc['kind']}{p}", t) for w, doc in all_docs() if doc["apiVersion"].startswith("ray.io/")
             for p, t in pod_templates(doc.get("spec", {}), ".spec")]
    assert len(found) >= 8  # head + workers of each cluster, submitters
    for where, template in found:
        try:
            check.validate(template)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_strict_schemas_reject_an_unknown_field():
    import copy

    import jsonschema

    _, doc = next((w, d) for w, d in all_docs() if d.get("kind") == "RayCluster")
    template = copy.deepcopy(doc["spec"]["headGroupSpec"]["template"])
    template["spec"]["containers"][0]["resource"] = {}  # a typo of `resources`
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        _k8s_schema("podtemplatespec-v1", K8S_VERSIONS[-1]).validate(template)
    # and the KubeRay CRD schema rejects a misspelt field of its own
    spec = copy.deepcopy(doc["spec"])
    spec["workerGroupSpecs"][0]["maxReplica"] = 3
    assert any("maxReplica" in e for e in crd_errors({**doc, "spec": spec}, KUBERAY_VERSIONS[-1]))
    spec = copy.deepcopy(doc["spec"])
    spec["autoscalerOptions"]["upscalingMode"] = "Eager"  # not in the CRD's enum
    assert any("Eager" in e for e in crd_errors({**doc, "spec": spec}, KUBERAY_VERSIONS[-1]))


# ----------------------------------------------------- KubeRay's own CRD schemas (tests/data/kuberay)

# The oldest and newest KubeRay the manifests target (RayCronJob exists from 1.6 on, as alpha).
KUBERAY_VERSIONS = ("v1.5.1", "v1.7.0")
CRDS = os.path.join(ROOT, "tests", "data", "kuberay")


def _strict(node):
    """A CRD's structural schema as a JSON schema that rejects what the API server would prune:
    objects with declared properties admit no others (unless the CRD preserves unknown fields),
    `nullable` admits null, `x-kubernetes-int-or-string` admits either."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_strict(v) if k in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not") else v)
           for k, v in node.items() if k != "properties"}
    if "properties" in node:
        out["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
            out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def crd_validator(version: str, kind: str):
    import gzip

    import jsonschema

    path = os.path.join(CRDS, version, f"{kind}.json.gz")
    if not os.path.exists(path):
        return None
    with gzip.open(path) as f:
        return jsonschema.Draft7Validator(_strict(json.load(f)))


def crd_errors(doc: dict, version: str) -> list[str]:
    check = crd_validator(version, doc["kind"])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in check.iter_errors(doc)] if check else []


def test_kuberay_schemas_are_the_ones_the_docstring_names():
    for version in KUBERAY_VERSIONS:
        for kind in ("RayCluster", "RayJob", "RayService"):
            assert crd_validator(version, kind) is not None, f"{version} {kind}"
    assert crd_validator(KUBERAY_VERSIONS[-1], "RayCronJob") is not None


@pytest.mark.parametrize("version", KUBERAY_VERSIONS)
def test_kuberay_objects_pass_the_kuberay_crds_strictly(version):
    docs = [(w, d) for w, d in all_docs() if d["apiVersion"].startswith("ray.io/")]
    checked = {d["kind"] for _, d in docs if crd_validator(version, d["kind"])}
    assert checked >= {"RayCluster", "RayJob", "RayService"}
    errors = [f"{where} {doc['kind']} {e}" for where, doc in docs for e in crd_errors(doc, version)]
    assert not errors, "\n".join(errors)
