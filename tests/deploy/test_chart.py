"""The Helm chart: lint, render, Kubernetes schema validation and the security rules."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from connectors.erp_adapter.adapter import load_routes
from connectors.erp_adapter.routing import ErpRoute, RoutingTable, load_routing_table
from qmsflow.settings import PROJECT_ROOT, Settings
from tests.deploy.conftest import (
    CHART,
    KUBERNETES_VERSIONS,
    PRODUCTION_VALUES,
    Manifest,
    render,
    run_helm,
)

#: kinds from CRDs that kubernetes-validate has no schema for, and the API group each must use
CUSTOM_KINDS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
}
#: env names that carry credentials: only ever from a secretKeyRef
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|USERNAME|DATABASE_URL|_KEY$")
PINNED_IMAGE = re.compile(r"^[^@\s]+(@sha256:[a-f0-9]{64}|:(?!latest$)[\w][\w.-]{0,127})$")
#: two ERPs on top of the production values: every optional field on one, none on the other
ROUTES: list[dict[str, Any]] = [
    {
        "name": "erp-us",
        "sites": ["BOS1", "RDU2"],
        "baseUrl": "https://erp-us.example.com/sap",
        "tokenSecret": {"name": "qmsflow-erp-us", "key": "token"},
        "mappingConfigMap": {"name": "erp-mapping-us", "key": "erp_mapping.toml"},
        "timeout": 7.5,
        "breakerFailures": 4,
        "breakerCooldown": 60,
    },
    {
        "name": "erp-eu",
        "sites": ["DUB1", "*"],
        "baseUrl": "https://erp-eu.example.com/s4",
        "tokenSecret": {"name": "qmsflow-erp-eu", "key": "api-token"},
    },
]
ROUTE_LABEL = "qmsflow/erp-route"


@pytest.fixture(scope="session")
def routes_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A values file adding ROUTES to the production values."""
    path = tmp_path_factory.mktemp("values") / "routes.yaml"
    path.write_text(yaml.safe_dump({"erpAdapter": {"routes": ROUTES}}), "utf-8")
    return path


@pytest.fixture(scope="session")
def routed_manifests(helm: Path, routes_values: Path) -> list[Manifest]:
    """The chart rendered with the production values and two ERP routes."""
    return render(helm, "-f", str(PRODUCTION_VALUES), "-f", str(routes_values))


@pytest.fixture(scope="session", params=["default", "production", "routes"])
def manifests(
    request: pytest.FixtureRequest,
    default_manifests: list[Manifest],
    production_manifests: list[Manifest],
    routed_manifests: list[Manifest],
) -> list[Manifest]:
    """Each render in turn: default values, production values, production with two ERP routes."""
    return {
        "default": default_manifests,
        "production": production_manifests,
        "routes": routed_manifests,
    }[request.param]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload in a render."""
    for doc in manifests:
        spec = doc.get("spec", {})
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", spec["template"]["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Init and main containers of a pod spec."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    """The manifests of one kind."""
    return [doc for doc in manifests if doc["kind"] == kind]


def erp_adapters(manifests: list[Manifest]) -> list[Manifest]:
    """The ERP adapter Deployments of a render."""
    return [
        d
        for d in by_kind(manifests, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "erp-adapter"
    ]


class TestChartFiles:
    """Files of the chart that need no helm binary."""

    def test_debezium_config_is_the_repo_file(self) -> None:
        """The chart's copy of the Debezium connector config equals connectors/debezium's."""
        repo = PROJECT_ROOT / "connectors" / "debezium" / "erp-postgres.json"
        copy = CHART / "files" / "erp-postgres.json"
        assert copy.read_bytes() == repo.read_bytes(), (
            f"{copy} differs from {repo}: copy the repo file into the chart"
        )

    @pytest.mark.parametrize("values", ["values.yaml", "values-production.yaml", "routes"])
    def test_values_files_meet_the_schema(self, values: str) -> None:
        """Both values files, and the production values with ROUTES, meet values.schema.json."""
        schema = json.loads((CHART / "values.schema.json").read_text("utf-8"))
        defaults = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
        if values == "routes":
            overrides = _merge(
                yaml.safe_load(PRODUCTION_VALUES.read_text("utf-8")),
                {"erpAdapter": {"routes": ROUTES}},
            )
        else:
            overrides = yaml.safe_load((CHART / values).read_text("utf-8"))
        jsonschema.validate(_merge(defaults, overrides), schema)

    def test_schema_refuses_a_route_name_no_deployment_can_carry(self) -> None:
        """A route name ending in a dash (an invalid Deployment name) fails the schema."""
        schema = json.loads((CHART / "values.schema.json").read_text("utf-8"))
        defaults = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
        bad = {"erpAdapter": {"enabled": True, "routes": [{**ROUTES[1], "name": "erp-"}]}}
        with pytest.raises(jsonschema.ValidationError, match="erp-"):
            jsonschema.validate(_merge(defaults, bad), schema)

    def test_every_value_is_documented(self) -> None:
        """Every key of values.yaml (and of a route entry) has a description in the schema."""
        schema = json.loads((CHART / "values.schema.json").read_text("utf-8"))
        values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
        missing = (
            list(_undocumented(values, schema, ""))
            + list(_undocumented(yaml.safe_load(PRODUCTION_VALUES.read_text("utf-8")), schema, ""))
            + list(_undocumented({"erpAdapter": {"routes": ROUTES}}, schema, ""))
        )
        assert not missing, f"values without a description in values.schema.json: {missing}"


def _merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge key by key, anything else is replaced."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if key in base else value
    return merged


def _undocumented(values: Any, schema: dict[str, Any], path: str) -> Iterator[str]:
    if isinstance(values, list) and "items" in schema:
        for n, item in enumerate(values):
            yield from _undocumented(item, schema["items"], f"{path}[{n}].")
        return
    if not isinstance(values, dict):
        return
    properties = schema.get("properties")
    if properties is None:  # a free-form map (resources, affinity, labels…)
        return
    for key, value in values.items():
        sub = properties.get(key)
        if sub is None or not sub.get("description"):
            yield f"{path}{key}"
        else:
            yield from _undocumented(value, sub, f"{path}{key}.")


class TestHelm:
    """helm lint and template against the real helm binary."""

    @pytest.mark.parametrize(
        "values", [[], ["-f", str(PRODUCTION_VALUES)]], ids=["default", "production"]
    )
    def test_lint_is_clean(self, helm: Path, values: list[str]) -> None:
        """`helm lint --strict` passes for the default and the production values."""
        result = run_helm(helm, "lint", "--strict", str(CHART), *values)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_unpinned_image_is_refused(self, helm: Path) -> None:
        """Rendering with image.tag=latest fails instead of deploying a moving image."""
        result = run_helm(helm, "template", "q", str(CHART), "--set", "image.tag=latest")
        assert result.returncode != 0
        assert "image" in result.stderr and "tag" in result.stderr

    def test_root_filesystem_writable_is_refused(self, helm: Path) -> None:
        """The values schema refuses a writable root filesystem."""
        result = run_helm(
            helm,
            "template",
            "q",
            str(CHART),
            "--set",
            "containerSecurityContext.readOnlyRootFilesystem=false",
        )
        assert result.returncode != 0
        assert "readOnlyRootFilesystem" in result.stderr


class TestManifests:
    """Rendered manifests (default and production values) against schemas and rules."""

    @pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
    def test_valid_for_kubernetes(self, manifests: list[Manifest], version: str) -> None:
        """Every built-in manifest validates strictly; custom kinds use their known API."""
        for doc in manifests:
            if doc["kind"] in CUSTOM_KINDS:
                assert doc["apiVersion"] == CUSTOM_KINDS[doc["kind"]], doc["metadata"]["name"]
                continue
            kubernetes_validate.validate(doc, version, strict=True)

    def test_validator_rejects_unknown_fields(self, default_manifests: list[Manifest]) -> None:
        """The validator is not a no-op: an unknown field in a Deployment fails it."""
        deployment = json.loads(json.dumps(by_kind(default_manifests, "Deployment")[0]))
        deployment["spec"]["template"]["spec"]["containers"][0]["runAsRoot"] = True
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)

    def test_no_container_runs_as_root(self, manifests: list[Manifest]) -> None:
        """Every container runs non-root, read-only, without privilege escalation or caps."""
        for name, pod in pod_specs(manifests):
            pod_ctx = pod.get("securityContext", {})
            for container in containers(pod):
                ctx = {**pod_ctx, **container.get("securityContext", {})}
                where = f"{name} container {container['name']}"
                assert ctx.get("runAsNonRoot") is True, where
                assert ctx.get("runAsUser", 1) != 0, where
                assert ctx.get("readOnlyRootFilesystem") is True, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert "ALL" in ctx.get("capabilities", {}).get("drop", []), where
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is no emptyDir"

    def test_no_secret_as_plain_env_value(self, manifests: list[Manifest]) -> None:
        """Credentials come from secretKeyRef only; the chart renders no Secret of its own."""
        assert not by_kind(manifests, "Secret")
        for name, pod in pod_specs(manifests):
            for container in containers(pod):
                for env in container.get("env", []):
                    if SECRET_ENV.search(env["name"]):
                        assert "value" not in env, f"{name}: {env['name']} is a plain value"
                        assert "secretKeyRef" in env["valueFrom"], f"{name}: {env['name']}"

    def test_every_image_is_pinned(self, manifests: list[Manifest]) -> None:
        """Every image names a version tag (not latest) or a sha256 digest."""
        for name, pod in pod_specs(manifests):
            for container in containers(pod):
                assert PINNED_IMAGE.match(container["image"]), f"{name}: {container['image']}"

    def test_every_container_has_requests_and_limits(self, manifests: list[Manifest]) -> None:
        """Every container declares cpu and memory requests and limits."""
        for name, pod in pod_specs(manifests):
            for container in containers(pod):
                resources = container["resources"]
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources[bound]), f"{name} {bound}"

    def test_workers_keep_state_on_their_volume(self, manifests: list[Manifest]) -> None:
        """Workers are a StatefulSet whose QMSFLOW_STACK_DIR is its volumeClaimTemplate."""
        (workers,) = by_kind(manifests, "StatefulSet")
        (claim,) = workers["spec"]["volumeClaimTemplates"]
        (container,) = workers["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert container["args"] == ["worker"]
        assert env["QMSFLOW_STORE"] == "rocksdb"
        assert env["QMSFLOW_STACK_DIR"] == mounts[claim["metadata"]["name"]]

    def test_migrations_run_before_install_and_upgrade(self, manifests: list[Manifest]) -> None:
        """A pre-install/pre-upgrade Job migrates the database, then creates the topics."""
        (job,) = by_kind(manifests, "Job")
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        pod = job["spec"]["template"]["spec"]
        assert [c["args"] for c in containers(pod)] == [["db", "migrate"], ["topics", "create"]]

    def test_every_workload_has_a_disruption_budget(self, manifests: list[Manifest]) -> None:
        """Each Deployment and StatefulSet is covered by a PodDisruptionBudget."""
        budgets = [
            b["spec"]["selector"]["matchLabels"] for b in by_kind(manifests, "PodDisruptionBudget")
        ]
        for doc in manifests:
            if doc["kind"] in ("Deployment", "StatefulSet"):
                labels = doc["spec"]["template"]["metadata"]["labels"]
                assert any(b.items() <= labels.items() for b in budgets), doc["metadata"]["name"]

    def test_debezium_config_map_carries_the_connector(self, manifests: list[Manifest]) -> None:
        """The ConfigMap holds connectors/debezium/erp-postgres.json, parsed equal."""
        (config_map,) = [
            c
            for c in by_kind(manifests, "ConfigMap")
            if c["metadata"]["name"].endswith("-debezium-erp-postgres")
        ]
        repo = PROJECT_ROOT / "connectors" / "debezium" / "erp-postgres.json"
        assert json.loads(config_map["data"]["erp-postgres.json"]) == json.loads(
            repo.read_text("utf-8")
        )


class TestProduction:
    """What the production values add."""

    def test_erp_adapter_only_when_enabled(
        self, default_manifests: list[Manifest], production_manifests: list[Manifest]
    ) -> None:
        """The ERP adapter is off by default and runs `qmsflow erp-adapter` when enabled."""

        def adapters(manifests: list[Manifest]) -> list[Manifest]:
            return [
                d
                for d in by_kind(manifests, "Deployment")
                if d["metadata"]["name"].endswith("-erp-adapter")
            ]

        assert not adapters(default_manifests)
        (adapter,) = adapters(production_manifests)
        assert adapter["spec"]["template"]["spec"]["containers"][0]["args"] == ["erp-adapter"]

    def test_status_page_is_served(self, production_manifests: list[Manifest]) -> None:
        """`qmsflow status-page` runs on all interfaces behind a Service on its port."""
        (page,) = [
            d
            for d in by_kind(production_manifests, "Deployment")
            if d["metadata"]["name"].endswith("-status-page")
        ]
        (container,) = page["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["status-page", "--host", "0.0.0.0"]
        port = {e["name"]: e.get("value") for e in container["env"]}["QMSFLOW_STATUS_PAGE_PORT"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/api/status"
        (service,) = [
            s
            for s in by_kind(production_manifests, "Service")
            if s["metadata"]["name"] == page["metadata"]["name"]
        ]
        assert service["spec"]["selector"].items() <= (
            page["spec"]["template"]["metadata"]["labels"].items()
        )
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (int(port), "http")
        ]

    @pytest.mark.parametrize("runtime", ["faust", "batch"])
    def test_scaling_watches_the_services_own_groups(self, helm: Path, runtime: str) -> None:
        """KEDA scales each workload on the consumer groups the code itself uses.

        Under the batch runtime the worker has two: Faust's (correlation, golden records) and
        the one reading the ingest topics.
        """
        manifests = render(helm, "-f", str(PRODUCTION_VALUES), "--set", f"worker.runtime={runtime}")
        values = yaml.safe_load(PRODUCTION_VALUES.read_text("utf-8"))
        settings = Settings(
            app_id=values["appId"], topic_prefix=values["topicPrefix"], worker_runtime=runtime
        )
        expected = {
            "StatefulSet": sorted({settings.worker_group, settings.ingest_group}),
            "Deployment": [settings.topic(f"{settings.app_id}-sink")],  # run_sink's group
        }
        names = {f"{d['kind']}/{d['metadata']['name']}" for d in manifests}
        scaled = by_kind(manifests, "ScaledObject")
        assert len(scaled) == 2
        for obj in scaled:
            target = obj["spec"]["scaleTargetRef"]
            assert f"{target['kind']}/{target['name']}" in names
            groups = sorted(t["metadata"]["consumerGroup"] for t in obj["spec"]["triggers"])
            assert groups == expected[target["kind"]]
        (worker,) = by_kind(manifests, "StatefulSet")
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["QMSFLOW_WORKER_RUNTIME"] == runtime
        assert all("replicas" not in d["spec"] for d in by_kind(manifests, "StatefulSet"))

    def test_kafka_credentials_are_per_service(self, production_manifests: list[Manifest]) -> None:
        """Each component authenticates with its own account's Secret."""
        secrets: dict[str, set[str]] = {}
        for name, pod in pod_specs(production_manifests):
            for container in containers(pod):
                for env in container.get("env", []):
                    if env["name"] == "QMSFLOW_KAFKA_SASL_PASSWORD":
                        ref = env["valueFrom"]["secretKeyRef"]["name"]
                        secrets.setdefault(ref, set()).add(name.split("/")[1])
        assert len(secrets) == 5, secrets  # worker, sink, erp-adapter, migrate, status page

    def test_service_monitor_selects_metrics_services(
        self, production_manifests: list[Manifest]
    ) -> None:
        """The ServiceMonitor's port is one every worker and sink Service exposes."""
        (monitor,) = by_kind(production_manifests, "ServiceMonitor")
        port = monitor["spec"]["endpoints"][0]["port"]
        services = [
            s
            for s in by_kind(production_manifests, "Service")
            if any(p["name"] == "metrics" for p in s["spec"]["ports"])
        ]
        assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services} == {
            "worker",
            "sink",
        }
        for service in services:
            assert port in {p["name"] for p in service["spec"]["ports"]}


class TestErpRoutes:
    """erpAdapter.routes: one routing table, one Deployment (one pod) per ERP."""

    def test_one_deployment_per_route(self, routed_manifests: list[Manifest]) -> None:
        """Each route runs `qmsflow erp-adapter --route <name>` with the table and its own token."""
        adapters = {d["metadata"]["name"]: d for d in erp_adapters(routed_manifests)}
        assert sorted(adapters) == ["qmsflow-erp-adapter-erp-eu", "qmsflow-erp-adapter-erp-us"]
        for route in ROUTES:
            deployment = adapters[f"qmsflow-erp-adapter-{route['name']}"]
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            assert container["args"] == ["erp-adapter", "--route", route["name"]]
            env = {e["name"]: e for e in container["env"]}
            assert env["QMSFLOW_ERP_ROUTES_FILE"]["value"] == "/etc/qmsflow/erp-routes/routes.toml"
            token = f"ERP_TOKEN_{route['name'].upper().replace('-', '_')}"
            assert env[token]["valueFrom"]["secretKeyRef"] == route["tokenSecret"]
            # the single-ERP variables would hand one ERP's token to whatever reads them
            assert "QMSFLOW_ERP_BASE_URL" not in env and "QMSFLOW_ERP_API_TOKEN" not in env
            other_tokens = {e for e in env if e.startswith("ERP_TOKEN_")} - {token}
            assert not other_tokens, f"{route['name']} gets another ERP's token: {other_tokens}"

    def test_routes_do_not_share_pods_or_budgets(self, routed_manifests: list[Manifest]) -> None:
        """No Deployment's or budget's selector matches another route's pods."""
        adapters = erp_adapters(routed_manifests)
        budgets = [
            b
            for b in by_kind(routed_manifests, "PodDisruptionBudget")
            if b["metadata"]["labels"]["app.kubernetes.io/component"] == "erp-adapter"
        ]
        assert len(budgets) == len(ROUTES)
        for deployment in adapters:
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            route = labels[ROUTE_LABEL]
            selectors = [d["spec"]["selector"]["matchLabels"] for d in adapters] + [
                b["spec"]["selector"]["matchLabels"] for b in budgets
            ]
            matching = [sel[ROUTE_LABEL] for sel in selectors if sel.items() <= labels.items()]
            assert matching == [route, route], f"{route}'s pods are selected by {matching}"

    def test_routes_file_is_what_the_adapter_loads(
        self, routed_manifests: list[Manifest], tmp_path: Path
    ) -> None:
        """The rendered routes.toml, loaded by routing.py, yields ROUTES; each pod finds its own.

        Each route's token variable and mapping file resolve inside that route's own pod: the
        variable from the route's Secret, the mapping from its ConfigMap mounted at that path.
        """
        (config_map,) = [
            c
            for c in by_kind(routed_manifests, "ConfigMap")
            if c["metadata"]["name"].endswith("-erp-routes")
        ]
        tomllib.loads(config_map["data"]["routes.toml"])  # plain TOML, before the model
        routes_file = tmp_path / "routes.toml"
        routes_file.write_text(config_map["data"]["routes.toml"], "utf-8")
        table = load_routing_table(routes_file)
        mapping_dir = Path("/etc/qmsflow/erp-mapping")
        assert table == RoutingTable(
            version=1,
            route=(
                ErpRoute(
                    name="erp-us",
                    sites=("BOS1", "RDU2"),
                    base_url="https://erp-us.example.com/sap",
                    token_env="ERP_TOKEN_ERP_US",
                    mapping_file=mapping_dir / "erp-us.toml",
                    timeout=7.5,
                    breaker_failures=4,
                    breaker_cooldown=60.0,
                ),
                ErpRoute(
                    name="erp-eu",
                    sites=("DUB1", "*"),
                    base_url="https://erp-eu.example.com/s4",
                    token_env="ERP_TOKEN_ERP_EU",
                ),
            ),
        )
        values = {r["name"]: r for r in ROUTES}
        for deployment in erp_adapters(routed_manifests):
            pod = deployment["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            env = {e["name"]: e for e in container["env"]}
            # the pod's own view: the routes file through its mount, then its --route
            path = Path(env["QMSFLOW_ERP_ROUTES_FILE"]["value"])
            volume = _mounted_volume(pod, container, path.parent)
            assert volume["configMap"]["name"] == config_map["metadata"]["name"]
            assert path.name in config_map["data"]
            settings = Settings(erp_routes_file=routes_file)
            route = load_routes(settings)[container["args"][2]]
            expected = values[route.name]
            assert route.token_env is not None
            assert env[route.token_env]["valueFrom"]["secretKeyRef"] == expected["tokenSecret"]
            if route.mapping_file is None:
                assert "mappingConfigMap" not in expected
                continue
            volume = _mounted_volume(pod, container, route.mapping_file.parent)
            assert volume["configMap"]["name"] == expected["mappingConfigMap"]["name"]
            assert volume["configMap"]["items"] == [
                {"key": expected["mappingConfigMap"]["key"], "path": route.mapping_file.name}
            ]

    def test_routes_change_nothing_else(
        self, production_manifests: list[Manifest], routed_manifests: list[Manifest]
    ) -> None:
        """Adding routes replaces only the ERP adapter's objects; the rest renders the same."""

        def others(manifests: list[Manifest]) -> list[Manifest]:
            return [
                d
                for d in manifests
                if d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
                != "erp-adapter"
            ]

        assert others(routed_manifests) == others(production_manifests)
        assert len(others(production_manifests)) < len(production_manifests)

    def test_without_routes_one_adapter_as_before(
        self, helm: Path, production_manifests: list[Manifest]
    ) -> None:
        """Empty routes render exactly the single-ERP adapter: no table, no route labels."""
        assert render(helm, "-f", str(PRODUCTION_VALUES), "--set-json", "erpAdapter.routes=[]") == (
            production_manifests
        )
        (adapter,) = erp_adapters(production_manifests)
        assert adapter["metadata"]["name"] == "qmsflow-erp-adapter"
        (container,) = adapter["spec"]["template"]["spec"]["containers"]
        env = {e["name"] for e in container["env"]}
        assert {"QMSFLOW_ERP_BASE_URL", "QMSFLOW_ERP_API_TOKEN"} <= env
        assert "QMSFLOW_ERP_ROUTES_FILE" not in env
        assert not any(ROUTE_LABEL in json.dumps(d) for d in production_manifests)
        assert not [
            c for c in by_kind(production_manifests, "ConfigMap") if "erp-routes" in json.dumps(c)
        ]

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"sites": ["DUB1", "BOS1"]}, 'site "BOS1" is routed to both "erp-us" and "erp-eu"'),
            ({"name": "erp-us"}, 'route name "erp-us" appears twice'),
        ],
        ids=["site-twice", "name-twice"],
    )
    def test_ambiguous_table_is_refused(
        self, helm: Path, tmp_path: Path, change: dict[str, Any], message: str
    ) -> None:
        """A site or a route name listed twice fails the render, as routing.py would at start-up."""
        values = tmp_path / "values.yaml"
        routes = [ROUTES[0], {**ROUTES[1], **change}]
        values.write_text(yaml.safe_dump({"erpAdapter": {"enabled": True, "routes": routes}}))
        result = run_helm(helm, "template", "q", str(CHART), "-f", str(values))
        assert result.returncode != 0
        assert message in result.stderr


def _mounted_volume(pod: dict[str, Any], container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The pod volume the container mounts at `path`."""
    (name,) = [m["name"] for m in container["volumeMounts"] if Path(m["mountPath"]) == path]
    volumes: list[dict[str, Any]] = [v for v in pod["volumes"] if v["name"] == name]
    (volume,) = volumes
    return volume


def test_render_is_deterministic(helm: Path) -> None:
    """Two renders of the production values are byte-identical (reviewable diffs)."""
    assert render(helm, "-f", str(PRODUCTION_VALUES)) == render(helm, "-f", str(PRODUCTION_VALUES))
