"""Everything under infra/, validated without a cluster.

- The Triton chart: ``helm lint`` and ``helm template`` for each values file; every rendered object checked
  against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) for two Kubernetes
  versions, custom resources against our own schemas (tests/infra/schemas); then what the objects must say:
  autoscaling/v2 HPA on the queue-time metric in microseconds, probes on Triton's health endpoints, the 15
  models loaded explicitly, /dev/shm in memory, GPU placement matching the Karpenter pool, IRSA, internal LB.
- infra/k8s: Karpenter pools, the prometheus-adapter rule, the Dagster values (also through dagster-k8s's own
  config schema), the RBAC, and the chart pins.
- The images: the Dockerfiles reference lock files that exist and pinned bases; the merlin extras resolve.
- No static AWS credentials anywhere in infra/.
- The Dagster ``k8s`` profile: definitions build, and the Pipes pod of a Merlin step is a valid Pod with the
  GPU request, image, node selector, tolerations and service account.

helm comes from scripts/install-k8s-tools.sh (.tools/bin); the tests that need it skip without it.
"""

import copy
import json
import os
import re
import subprocess
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHART = INFRA / "helm" / "triton"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
HELM = ROOT / ".tools" / "bin" / "helm"

# The Kubernetes releases the manifests must be valid for: an older EKS version in standard support and
# the version of the kubectl in .tools.
K8S_VERSIONS = ("1.32", "1.35")
VALUES_FILES = ("values.yaml", "values-eks-gpu.yaml", "values-cpu.yaml", "values-executor.yaml")
# The serving graph of DESIGN.md: 14 composing models and the ensemble.
MODELS = (
    "context_preprocessor",
    "feast_user_lookup",
    "nvt_user_transform",
    "nvt_context_transform",
    "query_tower",
    "faiss_retrieval",
    "filter_seen_items",
    "feast_item_lookup",
    "nvt_item_transform",
    "multimodal_embedding_lookup",
    "unroll_features",
    "dlrm_ranking",
    "softmax_sampling",
    "item_id_decoder",
    "ensemble_model",
)
# The keys of the Secret `recsys-valkey` (infra/README.md): ElastiCache endpoints and AUTH token.
VALKEY_SECRET_KEYS = {"RECSYS_VALKEY_URL", "RECSYS_VALKEY_PASSWORD", "RECSYS_FEAST_ONLINE_STORE"}
CUSTOM_SCHEMAS = {
    ("karpenter.sh/v1", "NodePool"): "karpenter.sh_v1_NodePool.json",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter.k8s.aws_v1_EC2NodeClass.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor.json",
}

needs_helm = pytest.mark.skipif(
    not HELM.exists(),
    reason="helm is not installed in .tools/bin: run scripts/install-k8s-tools.sh (make setup does)",
)


# -- helpers ------------------------------------------------------------------------------------------------
def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def value_args(values_file: str) -> list[str]:
    """Defaults first, then the overlay: how infra/deploy.sh and the README call helm."""
    files = ["values.yaml"] if values_file == "values.yaml" else ["values.yaml", values_file]
    return [arg for f in files for arg in ("-f", str(CHART / f))]


@lru_cache(maxsize=None)
def _rendered(values_file: str) -> str:
    return helm("template", "triton", str(CHART), "--namespace", "recsys", *value_args(values_file)).stdout


def rendered(values_file: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_rendered(values_file)) if doc]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def chart_values(values_file: str) -> dict:
    """The merged values helm uses (defaults overlaid by the file), for cross-checks."""

    def merge(base, over):
        out = dict(base)
        for key, value in over.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file != "values.yaml":
        merged = merge(merged, yaml.safe_load((CHART / values_file).read_text()))
    return merged


def validate_k8s(doc: dict) -> None:
    """Built-in kinds: the Kubernetes OpenAPI schemas (strict: unknown fields fail); custom kinds: ours."""
    import kubernetes_validate

    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_SCHEMAS:
        validate_schema(doc, CUSTOM_SCHEMAS[key])
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def validate_schema(data, schema_file: str) -> None:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, f"{schema_file}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def karpenter() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in load_yaml(K8S / "karpenter-nodepools.yaml")}


def adapter_rule(name: str = "triton_queue_time_us_per_request") -> dict:
    """The prometheus-adapter rule serving the custom metric ``name`` (one per serving layout)."""
    rules = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    return rule


def dagster_values() -> dict:
    return yaml.safe_load((K8S / "dagster-values.yaml").read_text())


def lock_pins(lock: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


# -- the Triton chart ----------------------------------------------------------------------------------------
@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_helm_lint_passes_strict(values_file):
    result = helm("lint", "--strict", str(CHART), *value_args(values_file))
    assert "0 chart(s) failed" in result.stdout


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_rendered_object_is_valid_for_kubernetes(values_file):
    docs = rendered(values_file)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds
    for doc in docs:
        validate_k8s(doc)


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_hpa_is_autoscaling_v2_on_queue_time_in_microseconds(values_file):
    from kubernetes.utils import parse_quantity

    hpa = one(rendered(values_file), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    # The HPA asks for exactly the metric a prometheus-adapter rule serves: the composing models' queue in the
    # ensemble layout, the executor's own in the executor layout.
    name = metric["pods"]["metric"]["name"]
    assert name == adapter_rule(name)["name"]["as"] == (
        "triton_executor_queue_time_us_per_request" if values_file == "values-executor.yaml"
        else "triton_queue_time_us_per_request")
    query = adapter_rule(name)["metricsQuery"]
    assert ('model="ensemble_model"' in query) == (values_file == "values-executor.yaml")
    target = metric["pods"]["target"]
    assert target["type"] == "AverageValue"
    wanted_us = chart_values(values_file)["autoscaling"]["targetQueueTimeUs"]
    assert parse_quantity(target["averageValue"]) == Decimal(wanted_us)
    assert 500 <= wanted_us <= 50_000, "a queue-time target between 0.5 ms and 50 ms per request"
    # The seed's "200m" is a quantity of 0.2 (milli), i.e. 0.2 us against this metric, not 200 ms.
    assert parse_quantity("200m") == Decimal("0.2")
    assert parse_quantity("200m") < Decimal(wanted_us) / 1000
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_probes_use_triton_health_endpoints_and_budget_model_load(values_file):
    c = container(rendered(values_file))
    startup, liveness, readiness = c["startupProbe"], c["livenessProbe"], c["readinessProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert liveness["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert readiness["httpGet"] == {"path": "/v2/models/ensemble_model/ready", "port": "http"}
    # Triton answers only after all 15 models loaded: the startup probe must wait minutes, not seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_all_15_models_load_explicitly(values_file):
    args = container(rendered(values_file))["args"]
    assert "--model-control-mode=explicit" in args
    # the executor layout loads ensemble_model alone: it runs the 14 stages itself
    expected = ["ensemble_model"] if values_file == "values-executor.yaml" else list(MODELS)
    assert [a.split("=", 1)[1] for a in args if a.startswith("--load-model=")] == expected
    assert "--strict-readiness=false" in args
    assert "--metrics-port=8002" in args and "--allow-metrics=true" in args


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_shm_is_a_memory_volume_and_root_filesystem_read_only(values_file):
    docs = rendered(values_file)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm" and mounts["/tmp"] == "tmp"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


@needs_helm
def test_gpu_values_place_triton_on_the_karpenter_gpu_pool():
    docs = rendered("values-eks-gpu.yaml")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    pool = karpenter()[("NodePool", pod["nodeSelector"]["karpenter.sh/nodepool"])]
    taints = pool["spec"]["template"]["spec"]["taints"]
    assert any(t["key"] == "nvidia.com/gpu" for t in taints)
    for taint in taints:  # every taint of the pool is tolerated, or the pod would stay Pending forever
        assert any(
            tol["key"] == taint["key"] and tol["effect"] == taint["effect"] and tol["operator"] == "Exists"
            for tol in pod["tolerations"]
        ), taint
    families = next(
        r["values"]
        for r in pool["spec"]["template"]["spec"]["requirements"]
        if r["key"] == "karpenter.k8s.aws/instance-family"
    )
    assert set(families) == {"g5", "g6"}
    args = pod["containers"][0]["args"]
    assert "--allow-gpu-metrics=true" in args and "--pinned-memory-pool-byte-size=268435456" in args


@needs_helm
def test_cpu_values_ask_for_no_gpu():
    docs = rendered("values-cpu.yaml")
    assert "nvidia.com/gpu" not in _rendered("values-cpu.yaml")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert not pod.get("tolerations") and "--allow-gpu-metrics=false" in pod["containers"][0]["args"]
    client_service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "triton")
    assert client_service["spec"]["type"] == "ClusterIP"
    # One replica at rest: no PodDisruptionBudget (it could only block drains or protect nothing).
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


@needs_helm
def test_model_repository_can_be_a_volume_instead_of_s3():
    overrides = ["--set", "modelRepository.uri=", "--set", "modelRepository.existingClaim=triton-models"]
    out = helm("template", "triton", str(CHART), *value_args("values-cpu.yaml"), *overrides).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for doc in docs:
        validate_k8s(doc)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "--model-repository=/models" in pod["containers"][0]["args"]
    claim = next(v for v in pod["volumes"] if v["name"] == "model-repository")["persistentVolumeClaim"]
    assert claim == {"claimName": "triton-models", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model-repository")
    assert mount == {"name": "model-repository", "mountPath": "/models", "readOnly": True}


@needs_helm
def test_the_serving_stage_helm_command_renders():
    """triton_deployment's command line (recsys_assets.release.deploy.helm_command) as `helm template`."""
    from recsys_assets.release.deploy import HELM_CHART, helm_command

    assert Path(HELM_CHART).resolve() == CHART
    cmd = helm_command("s3://recsys-prod-artifacts/recsys/serving/triton_repository",
                       values=[str(CHART / "values-eks-gpu.yaml")], helm=str(HELM))
    assert cmd[1:3] == ["upgrade", "--install"]
    install_only = {"--install", "--wait", "--timeout", cmd[cmd.index("--timeout") + 1]}
    template = [str(HELM), "template"] + [a for a in cmd[3:] if a not in install_only]
    out = subprocess.run(template, capture_output=True, text=True, timeout=120, check=True).stdout
    args = container([d for d in yaml.safe_load_all(out) if d])["args"]
    assert "--model-repository=s3://recsys-prod-artifacts/recsys/serving/triton_repository" in args


@needs_helm
@pytest.mark.parametrize("values_file", ("values.yaml", "values-eks-gpu.yaml"))
def test_eks_values_read_s3_with_irsa_behind_an_internal_load_balancer(values_file):
    docs = rendered(values_file)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert any(a.startswith("--model-repository=s3://") for a in pod["containers"][0]["args"])
    service = next(d for d in docs if d["kind"] == "Service" and d["spec"].get("type") == "LoadBalancer")
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert (
        annotations["service.beta.kubernetes.io/aws-load-balancer-healthcheck-path"]
        == "/v2/models/ensemble_model/ready"
    )
    account = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    if values_file == "values-eks-gpu.yaml":
        assert re.fullmatch(
            r"arn:aws:iam::\d{12}:role/.+", account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        )
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["AWS_REGION"]["value"] == "us-east-1"
    # The Valkey endpoints and AUTH token come from the Secret, never from values.
    assert {"secretRef": {"name": "recsys-valkey"}} in pod["containers"][0]["envFrom"]
    assert not {e["name"] for e in pod["containers"][0]["env"]} & VALKEY_SECRET_KEYS
    # Two replicas at rest: a PDB keeps one serving through node drains and consolidation.
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def feast_k8s_variables() -> set[str]:
    """The ${VAR}s feature_repo/feature_store.k8s.yaml needs from the environment (comments excluded)."""

    def leaves(node):
        if isinstance(node, dict):
            return [leaf for value in node.values() for leaf in leaves(value)]
        if isinstance(node, list):
            return [leaf for value in node for leaf in leaves(value)]
        return [node] if isinstance(node, str) else []

    config = yaml.safe_load((ROOT / "feature_repo" / "feature_store.k8s.yaml").read_text())
    return {name for leaf in leaves(config) for name in re.findall(r"\$\{(\w+)\}", leaf)}


@needs_helm
@pytest.mark.parametrize("values_file", ("values-eks-gpu.yaml", "values-cpu.yaml"))
def test_triton_pods_provide_what_the_serving_stages_and_feast_read(values_file):
    main = container(rendered(values_file))
    env = {e["name"]: e.get("value") for e in main["env"]}
    from_secrets = (
        VALKEY_SECRET_KEYS if {"secretRef": {"name": "recsys-valkey"}} in main["envFrom"] else set()
    )
    needed = feast_k8s_variables()
    assert {"RECSYS_FEAST_REGISTRY", "RECSYS_FEAST_ONLINE_STORE"} <= needed
    assert needed <= set(env) | from_secrets, needed - set(env) - from_secrets
    assert (ROOT / "feature_repo" / env["RECSYS_FEAST_YAML"]).exists()
    assert env["RECSYS_FEAST_REGISTRY"].startswith(env["RECSYS_ARTIFACTS"] + "/")
    # ElastiCache in cluster mode has one logical database.
    assert (
        env["RECSYS_VALKEY_CLUSTER"] == "1"
        and env["RECSYS_VALKEY_SEEN_DB"] == env["RECSYS_VALKEY_POPULARITY_DB"] == "0"
    )
    for key in VALKEY_SECRET_KEYS:
        assert key in (INFRA / "README.md").read_text(), f"infra/README.md must tell how to create {key}"


def test_dagster_code_location_provides_what_feast_reads():
    (dep,) = dagster_values()["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in dep["env"]}
    from_secrets = VALKEY_SECRET_KEYS if {"name": "recsys-valkey"} in dep["envSecrets"] else set()
    needed = feast_k8s_variables()
    assert needed <= set(env) | from_secrets, needed - set(env) - from_secrets
    assert env["RECSYS_FEAST_YAML"] == "feature_store.k8s.yaml"
    assert env["RECSYS_FEAST_REGISTRY"].startswith(env["RECSYS_ARTIFACTS"] + "/")
    assert not set(env) & VALKEY_SECRET_KEYS


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_servicemonitor_scrapes_port_8002_of_every_replica_often_enough(values_file):
    docs = rendered(values_file)
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert int(endpoint["interval"].rstrip("s")) <= 15, "rate(...[30s]) needs two samples in 30 s"
    selected = [
        d
        for d in docs
        if d["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert len(selected) == 1 and selected[0]["spec"]["clusterIP"] == "None"
    assert {"name": "metrics", "port": 8002, "targetPort": "metrics", "protocol": "TCP"} in selected[0][
        "spec"
    ]["ports"]


@needs_helm
@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_triton_restricts_its_repository_and_shared_memory_apis_with_a_key_from_a_secret(values_file):
    """Clients of the internal NLB may infer, not load or unload: the flags are what TritonServer passes locally
    (recsys_assets.release.triton_server.restricted_api_flags), the key comes from the Secret, never a manifest."""
    from recsys_assets.release.triton_server import ADMIN_KEY_ENV, ADMIN_KEY_HEADER, restricted_api_flags

    c = container(rendered(values_file))
    flags = restricted_api_flags(f"$({ADMIN_KEY_ENV})")
    assert all(flag in c["args"] for flag in flags), c["args"]
    assert ADMIN_KEY_HEADER in flags[0]
    (env,) = [e for e in c["env"] if e["name"] == ADMIN_KEY_ENV]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "recsys-triton-admin", "key": ADMIN_KEY_ENV}
    off = helm("template", "triton", str(CHART), *value_args(values_file), "--set", "restrictedApi.enabled=false")
    assert "restricted" not in off.stdout and ADMIN_KEY_ENV not in off.stdout


@needs_helm
@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        (["--set", "autoscaling.targetQueueTimeUs=200m"], "targetQueueTimeUs"),
        (["--set", "serviceMonitor.interval=30s"], "interval"),
        (["--set", "modelRepository.existingClaim=models"], "not both"),
        (["--set", "modelRepository.uri=", "--set", "modelRepository.existingClaim="], "set uri"),
        (["--set", "readinessModel=query_towr"], "not in models"),
        (["--set", "env.AWS_SECRET_ACCESS_KEY=x"], "AWS_SECRET_ACCESS_KEY"),
        (["--set", "image.tag=latest"], "tag"),
    ],
)
def test_chart_refuses_values_that_would_break_serving(override, complaint):
    result = helm("template", "triton", str(CHART), *value_args("values.yaml"), *override, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


# -- the API chart -------------------------------------------------------------------------------------------
API_CHART = INFRA / "helm" / "api"


@lru_cache(maxsize=None)
def api_rendered() -> tuple[dict, ...]:
    out = helm("template", "api", str(API_CHART), "--namespace", "recsys").stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


@needs_helm
def test_the_api_chart_lints_and_every_object_is_valid_for_kubernetes():
    helm("lint", "--strict", str(API_CHART))
    docs = list(api_rendered())
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "ServiceAccount"}
    for doc in docs:
        validate_k8s(doc)


@needs_helm
def test_the_api_chart_mounts_the_token_secret_and_the_api_reads_it_or_refuses_to_start(tmp_path):
    """The k8s profile requires a write token: the chart mounts the Secret as a file and points
    RECSYS_API_TOKENS_FILE at it; the API's configuration reads that file, and refuses to start without it."""
    from recsys_assets.api.config import ApiConfig, ConfigError

    docs = list(api_rendered())
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (api,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in api["env"]}
    (mount,) = [m for m in api["volumeMounts"] if m["name"] == "tokens"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "tokens"]
    assert mount["readOnly"] and volume["secret"]["secretName"] == "recsys-api-tokens"
    assert env["RECSYS_API_TOKENS_FILE"] == \
        f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert env["RECSYS_PROFILE"] == "k8s" and "RECSYS_API_TOKENS" not in env and "RECSYS_API_AUTH" not in env
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the API's configuration from this environment, the Secret's file placed under tmp_path
    secret = tmp_path / "tokens"
    secret.write_text("k8s-token-" + "x" * 30 + "\n")
    environ = {k: v for k, v in env.items() if v is not None and k != "RECSYS_ARTIFACTS"}
    config = ApiConfig.from_environ({**environ, "RECSYS_API_TOKENS_FILE": str(secret)})
    assert config.tokens == ("k8s-token-" + "x" * 30,) and not config.sessions
    secret.write_text("")
    with pytest.raises(ConfigError, match="no token is configured"):
        ApiConfig.from_environ({**environ, "RECSYS_API_TOKENS_FILE": str(secret)})
    with pytest.raises(ConfigError, match="cannot be read"):
        ApiConfig.from_environ(environ)  # the chart's path, not mounted here


@needs_helm
@pytest.mark.parametrize(("override", "complaint"), [
    (["--set", "env.RECSYS_PROFILE=local"], "RECSYS_PROFILE"),
    (["--set", "env.RECSYS_API_TOKENS=abc"], "RECSYS_API_TOKENS"),
    (["--set", "env.RECSYS_API_AUTH=off"], "RECSYS_API_AUTH"),
])
def test_the_api_chart_refuses_values_that_would_open_writes(override, complaint):
    result = helm("template", "api", str(API_CHART), *override, check=False)
    assert result.returncode != 0 and complaint in result.stderr, result.stderr


# -- infra/k8s -----------------------------------------------------------------------------------------------
def test_karpenter_pools_and_node_classes_match_our_schemas_and_each_other():
    objects = karpenter()
    assert set(objects) == {
        ("NodePool", "gpu"),
        ("NodePool", "cpu"),
        ("EC2NodeClass", "gpu"),
        ("EC2NodeClass", "cpu"),
    }
    for doc in objects.values():
        validate_k8s(doc)
    for (kind, name), pool in objects.items():
        if kind != "NodePool":
            continue
        assert ("EC2NodeClass", pool["spec"]["template"]["spec"]["nodeClassRef"]["name"]) in objects
        disruption = pool["spec"]["disruption"]
        assert disruption["consolidationPolicy"] and disruption["consolidateAfter"] and disruption["budgets"]
    gpu = objects[("NodePool", "gpu")]["spec"]
    assert gpu["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert "nvidia.com/gpu" in gpu["limits"]
    assert (
        objects[("NodePool", "cpu")]["spec"]["disruption"]["consolidationPolicy"]
        == "WhenEmptyOrUnderutilized"
    )
    for node_class in (objects[("EC2NodeClass", "gpu")], objects[("EC2NodeClass", "cpu")]):
        assert node_class["spec"]["metadataOptions"]["httpTokens"] == "required"
        assert all(b["ebs"]["encrypted"] for b in node_class["spec"]["blockDeviceMappings"])


def test_karpenter_schema_catches_a_typo():
    pool = copy.deepcopy(karpenter()[("NodePool", "gpu")])
    pool["spec"]["disruption"]["consolidationPolicy"] = "WhenUnderutilized"  # the v1beta1 name, gone in v1
    with pytest.raises(AssertionError, match="consolidationPolicy"):
        validate_k8s(pool)


def test_prometheus_adapter_rule_averages_composing_models_over_30s_summing_versions():
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    validate_schema(values, "prometheus-adapter-values.json")
    assert values["rules"]["default"] is False
    rule = adapter_rule()
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = " ".join(rule["metricsQuery"].split())
    numerator, denominator = query.split(" / ", 1)
    assert (
        "rate(nv_inference_queue_duration_us{" in numerator
        and "nv_inference_request_success" not in numerator
    )
    assert "rate(nv_inference_request_success{" in denominator
    for part in (numerator, denominator):
        # Aggregating by the adapter's group-by (namespace/pod) drops `model` and `version`: every hot swap
        # starts a new version series, and the metric must not split across them.
        assert part.removeprefix("clamp_min(").startswith("sum by (<<.GroupBy>>)")
        assert "version" not in part
        assert '<<.LabelMatchers>>,model!="ensemble_model"}[30s]' in part


def test_dagster_values_use_the_charts_keys_and_run_this_project():
    values = dagster_values()
    validate_schema(values, "dagster-values.json")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "recsys_assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["RECSYS_PROFILE"] == "k8s"
    assert env["RECSYS_ARTIFACTS"].startswith("s3://")
    assert env["RECSYS_MERLIN_IMAGE"].rsplit(":", 1)[1] not in ("", "latest")
    assert {"name": "recsys-valkey"} in deployment["envSecrets"]
    assert values["serviceAccount"]["name"] == values["global"]["serviceAccountName"] == "recsys-pipeline"
    assert re.fullmatch(
        r"arn:aws:iam::\d{12}:role/.+", values["serviceAccount"]["annotations"]["eks.amazonaws.com/role-arn"]
    )
    # The GPU-step queue limit uses the tag the jobs set and the local instance limits on (dagster.yaml).
    local_tags = {
        t["key"]
        for t in yaml.safe_load((ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]["tag_concurrency_limits"]
    }
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert {t["key"] for t in queue["tagConcurrencyLimits"]} == local_tags
    assert "recsys/merlin" in local_tags


def test_dagster_values_map_to_a_valid_dagster_instance():
    """What the chart writes into dagster.yaml, checked with Dagster's own config schemas."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.instance.config import dagster_instance_config_schema
    from dagster_k8s import K8sRunLauncher

    values = dagster_values()
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = launcher["runK8sConfig"]
    run_launcher_config = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": "recsys",
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": values["global"]["serviceAccountName"],
        "instance_config_map": "dagster-instance",
        "env_secrets": [s["name"] for s in launcher["envSecrets"]],
        "run_k8s_config": {
            "container_config": run_k8s["containerConfig"],
            "pod_spec_config": run_k8s["podSpecConfig"],
            "pod_template_spec_metadata": run_k8s["podTemplateSpecMetadata"],
            "job_spec_config": run_k8s["jobSpecConfig"],
        },
    }
    result = process_config(resolve_to_config_type(K8sRunLauncher.config_type()), run_launcher_config)
    assert result.success, result.errors
    daemon = values["dagsterDaemon"]
    queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    instance = {
        "run_queue": {
            "max_concurrent_runs": queue["maxConcurrentRuns"],
            "tag_concurrency_limits": [
                {"key": t["key"], "limit": t["limit"]} for t in queue["tagConcurrencyLimits"]
            ],
        },
        "run_monitoring": {
            "enabled": daemon["runMonitoring"]["enabled"],
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
        },
        "run_retries": {
            "enabled": daemon["runRetries"]["enabled"],
            "max_retries": daemon["runRetries"]["maxRetries"],
        },
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": {"bucket": logs["bucket"], "prefix": logs["prefix"]},
        },
    }
    result = process_config(resolve_to_config_type(dagster_instance_config_schema()), instance)
    assert result.success, result.errors


def test_dagster_code_location_and_run_pods_are_valid_kubernetes():
    """The user-code Deployment and a run Job, assembled from the values the way the chart uses them."""
    values = dagster_values()
    (dep,) = values["dagster-user-deployments"]["deployments"]
    image = f"{dep['image']['repository']}:{dep['image']['tag']}"
    code_container = {
        "name": dep["name"],
        "image": image,
        "imagePullPolicy": dep["image"]["pullPolicy"],
        "args": [
            "dagster",
            "api",
            "grpc",
            "-h",
            "0.0.0.0",
            "-p",
            str(dep["port"]),
            *dep["dagsterApiGrpcArgs"],
        ],
        "env": dep["env"],
        "envFrom": [{"secretRef": s} for s in dep["envSecrets"]],
        "resources": dep["resources"],
        "securityContext": dep["securityContext"],
        "ports": [{"name": "grpc", "containerPort": dep["port"]}],
    }
    code_location = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"dagster-{dep['name']}"},
        "spec": {
            "selector": {"matchLabels": {"deployment": dep["name"]}},
            "template": {
                "metadata": {"labels": {"deployment": dep["name"]}},
                "spec": {
                    "serviceAccountName": values["global"]["serviceAccountName"],
                    "securityContext": dep["podSecurityContext"],
                    "nodeSelector": dep["nodeSelector"],
                    "containers": [code_container],
                },
            },
        },
    }
    validate_k8s(code_location)
    run_k8s = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    run_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "dagster-run-0123"},
        "spec": {
            **run_k8s["jobSpecConfig"],
            "template": {
                "metadata": run_k8s["podTemplateSpecMetadata"],
                "spec": {
                    **run_k8s["podSpecConfig"],
                    "restartPolicy": "Never",
                    "serviceAccountName": values["global"]["serviceAccountName"],
                    "containers": [
                        {
                            **run_k8s["containerConfig"],
                            "name": "dagster",
                            "image": image,
                            "args": ["dagster", "api", "execute_run", "{}"],
                            "env": dep["env"],
                            "envFrom": [{"secretRef": s} for s in dep["envSecrets"]],
                        }
                    ],
                },
            },
        },
    }
    validate_k8s(run_job)
    assert karpenter()[("NodePool", run_k8s["podSpecConfig"]["nodeSelector"]["karpenter.sh/nodepool"])]


def test_pipeline_rbac_binds_the_dagster_service_account():
    role, binding = load_yaml(K8S / "pipeline-rbac.yaml")
    for doc in (role, binding):
        validate_k8s(doc)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (subject,) = binding["subjects"]
    assert subject["name"] == dagster_values()["serviceAccount"]["name"]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    # Everything the Triton chart creates, so `helm upgrade --install` works from a run pod.
    assert {
        ("apps", "deployments"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("", "secrets"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("policy", "poddisruptionbudgets"),
        ("monitoring.coreos.com", "servicemonitors"),
    } <= granted


def test_third_party_charts_are_pinned_and_dagster_matches_the_lock():
    import dagster

    charts = yaml.safe_load((K8S / "charts.yaml").read_text())["charts"]
    for chart in charts.values():
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(chart["version"])), chart
        assert (ROOT / chart["values"]).exists()
    assert (
        str(charts["dagster"]["version"]) == lock_pins("pipeline.lock.txt")["dagster"] == dagster.__version__
    )


def test_deploy_script_uses_the_pins_and_values_files():
    script = INFRA / "deploy.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    charts = yaml.safe_load((K8S / "charts.yaml").read_text())["charts"]
    result = subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    installs = {c.split()[3]: c for c in commands if " upgrade --install " in c}
    assert set(installs) == {"prometheus-adapter", "dagster", "triton"}
    assert f"--version {charts['dagster']['version']} " in installs["dagster"]
    assert f"--version {charts['prometheus-adapter']['version']} " in installs["prometheus-adapter"]
    assert "-f infra/helm/triton/values.yaml -f infra/helm/triton/values-eks-gpu.yaml" in installs["triton"]
    assert any(c.endswith("apply -f infra/k8s/karpenter-nodepools.yaml") for c in commands)


# -- images --------------------------------------------------------------------------------------------------
def dockerfile_copies(path: Path) -> list[str]:
    """Sources of the COPY instructions that read the build context (not --from=stage)."""
    sources = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from=") for p in parts):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


@pytest.mark.parametrize("dockerfile", ("pipeline.Dockerfile", "merlin-triton.Dockerfile"))
def test_dockerfiles_copy_what_exists_from_pinned_bases_and_run_as_non_root(dockerfile):
    path = DOCKER / dockerfile
    text = path.read_text()
    for source in dockerfile_copies(path):
        assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which does not exist"
    ignored = (DOCKER / f"{dockerfile}.dockerignore").read_text().split()
    for source in dockerfile_copies(path):
        assert not any(
            source == pattern or source.startswith(pattern.rstrip("/") + "/") for pattern in ignored
        ), f"{dockerfile} copies {source}, but its .dockerignore leaves it out of the context"
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)", text, re.M) + [
        b for b in re.findall(r"^FROM (\S+)", text, re.M) if not b.startswith("$")
    ]
    assert bases
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), (
            f"{dockerfile}: base {base} not pinned by tag"
        )
    final_user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert final_user.split(":")[0] not in ("root", "0")


def test_pipeline_image_installs_the_pipeline_lock_on_its_python():
    text = (DOCKER / "pipeline.Dockerfile").read_text()
    assert "requirements/pipeline.lock.txt" in dockerfile_copies(DOCKER / "pipeline.Dockerfile")
    assert re.search(r"pip install --no-deps -r \S*pipeline\.lock\.txt", text)
    python_tag = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)", text, re.M).group(1)
    assert "Python 3.11" in (ROOT / "requirements" / "pipeline.lock.txt").read_text().splitlines()[0]
    assert python_tag == "3.11"
    # Triton in this image is nvidia-pytriton's server: the lock must carry it, and numpy < 2 (its stub).
    pins = lock_pins("pipeline.lock.txt")
    assert "nvidia-pytriton" in pins and int(pins["numpy"].split(".")[0]) < 2
    assert 'CMD ["dagster", "api", "grpc", "-m", "recsys_assets.definitions"' in text


def test_merlin_image_extras_resolve_from_the_locks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pins", DOCKER / "pins.py")
    pins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pins)
    locks = [str(ROOT / "requirements" / "merlin.lock.txt"), str(ROOT / "requirements" / "pipeline.lock.txt")]
    lines, missing = pins.resolve(str(DOCKER / "merlin-extras.txt"), locks)
    assert not missing
    resolved = dict(line.split("==") for line in lines)
    assert resolved["dagster-pipes"] == lock_pins("merlin.lock.txt")["dagster-pipes"]
    assert resolved["boto3"] == lock_pins("pipeline.lock.txt")["boto3"]
    text = (DOCKER / "merlin-triton.Dockerfile").read_text()
    for lock in ("requirements/merlin.lock.txt", "requirements/pipeline.lock.txt"):
        assert lock in text
    assert "merlin-tensorflow:23.08" in text


# -- secrets -------------------------------------------------------------------------------------------------
AWS_KEY_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # access key ids
    re.compile(r"aws_secret_access_key\s*[=:]", re.I),  # credentials-file / env assignments
    re.compile(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)\s*[=:]"),
)


def _env_names(node):
    if isinstance(node, dict):
        if "name" in node and ("value" in node or "valueFrom" in node):
            yield node["name"]
        for value in node.values():
            yield from _env_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _env_names(value)


def test_no_static_aws_credentials_anywhere_in_infra():
    files = [p for p in INFRA.rglob("*") if p.is_file()] + [ROOT / "scripts" / "install-k8s-tools.sh"]
    for path in files:
        text = path.read_text(errors="replace")
        for pattern in AWS_KEY_PATTERNS:
            assert not pattern.search(text), f"{path.relative_to(ROOT)} matches {pattern.pattern}"
    docs = [d for p in (*K8S.glob("*.yaml"), *CHART.glob("values*.yaml")) for d in load_yaml(p)]
    if HELM.exists():
        docs += [d for f in VALUES_FILES for d in rendered(f)]
    names = set(_env_names(docs))
    assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


# -- the Dagster k8s profile ---------------------------------------------------------------------------------
def test_k8s_profile_builds_definitions_with_s3_and_gpu_pods():
    from recsys_assets.definitions import build_definitions
    from recsys_assets.lib.settings import Settings

    defs = build_definitions(Settings(profile="k8s", artifacts="s3://b/p"))
    assert defs.resolve_asset_graph().get_all_asset_keys()
    assert defs.resources["artifacts"].root == "s3://b/p"
    merlin = defs.resources["merlin"]
    assert merlin.profile == "k8s"
    assert merlin.command("recsys_assets.ml.env_report") == ["python", "-m", "recsys_assets.ml.env_report"]


def test_merlin_pipes_pod_spec_requests_a_gpu_on_the_gpu_pool(monkeypatch):
    from recsys_assets.defs.resources import MerlinRunner

    monkeypatch.delenv("RECSYS_MERLIN_IMAGE", raising=False)
    spec = MerlinRunner(profile="k8s").pod_spec()
    (main,) = spec["containers"]
    assert (
        main["resources"]["limits"]["nvidia.com/gpu"] == 1 == main["resources"]["requests"]["nvidia.com/gpu"]
    )
    assert main["image"] == "recsys-merlin:0.1.0"
    assert spec["serviceAccountName"] == dagster_values()["serviceAccount"]["name"]
    pool = karpenter()[("NodePool", spec["nodeSelector"]["karpenter.sh/nodepool"])]
    for taint in pool["spec"]["template"]["spec"]["taints"]:
        assert {"key": taint["key"], "operator": "Exists", "effect": taint["effect"]} in spec["tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    # The image follows the code location's environment (set by infra/k8s/dagster-values.yaml).
    monkeypatch.setenv("RECSYS_MERLIN_IMAGE", "registry.example/recsys-merlin:9.9.9")
    assert (
        MerlinRunner(profile="k8s").pod_spec()["containers"][0]["image"]
        == "registry.example/recsys-merlin:9.9.9"
    )
    assert MerlinRunner(profile="k8s", image="pinned:1").pod_spec()["containers"][0]["image"] == "pinned:1"


def test_merlin_pipes_pod_is_a_valid_kubernetes_pod(monkeypatch):
    """The pod PipesK8sClient would create (dagster-k8s's own pod builder), checked against the Pod schema."""
    from recsys_assets.defs.resources import MerlinRunner

    monkeypatch.setenv("RECSYS_ARTIFACTS", "s3://b/p")
    monkeypatch.setenv("RECSYS_PROFILE", "k8s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(
        "RECSYS_MERLIN_IMAGE", "123456789012.dkr.ecr.us-east-1.amazonaws.com/recsys-merlin:0.1.0"
    )
    pod = MerlinRunner(profile="k8s").pod_body("recsys_assets.ml.nvt_workflows", "--day", "3")
    validate_k8s(pod)
    (main,) = pod["spec"]["containers"]
    assert main["command"] == ["python", "-m", "recsys_assets.ml.nvt_workflows", "--day", "3"]
    assert main["image"].endswith("/recsys-merlin:0.1.0")
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["RECSYS_ARTIFACTS"] == "s3://b/p" and env["AWS_REGION"] == "us-east-1"
    assert "PYTHONPATH" not in env, "the merlin image has the package installed; no local checkout path"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
