"""The Kubernetes manifests (deploy/k8s): both overlays render, and what they render is safe to run.

Every check runs on two renderings of each overlay: a small built-in kustomize (it walks resources and
components and applies the transformers the overlays use; it refuses any kustomization field it does
not know) and, when `kubectl` is on PATH, `kubectl kustomize`. One test starts a real service with the
shared ConfigMap's settings and asks it the health names the probes ask.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib
import importlib.util
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from onefold.insights.settings import InsightsSettings
from onefold.platform.bus_permissions import CONSUMES, USERS, authorization_config, environment_password
from onefold.platform.config import load_settings
from onefold.platform.health import NATS_HEALTH_NAME, health_status, wait_for_health
from onefold.platform.nats import connect_options
from onefold.platform.nats_server import NatsServerProcess, nats_server_binary
from onefold.platform.ports import free_port, wait_for_port
from onefold.testing.processes import ServiceProcess

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
SERVICES = ("ingest", "identity", "consent", "segments", "journeys", "destinations", "insights")
# One process by design (a DuckDB file has one writer): one replica, no HPA, its file on a volume.
SINGLE_REPLICA = {"insights"}
GRPC_PORT = 50051
# The key-encryption key's variable: settings `eventlog.key_encryption_key`, from a Secret
# (onefold.eventlog.cipher.DEFAULT_KEK_ENV names the same variable).
KEK_ENV = "ONEFOLD_EVENTLOG__KEY_ENCRYPTION_KEY"
NATS_SECRET = "onefold-nats"  # a `<user>-password` key per NATS user
NATS_TLS_SECRET = "onefold-nats-tls"  # tls.crt, tls.key, ca.crt (cert-manager's layout)
NAMESPACE = "onefold"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PriorityClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
KUSTOMIZATION_FIELDS = {
    "apiVersion", "kind", "namespace", "labels", "resources", "components", "images", "replicas", "patches",
}  # fmt: skip

Doc = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def split_image(image: str) -> tuple[str, str | None]:
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, None
    return name, tag


def pod_spec(doc: Doc) -> Doc | None:
    return doc["spec"]["template"]["spec"] if doc["kind"] in WORKLOADS else None


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def labels_match(selector: Doc, labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        ok = {
            "In": present and value in expr.get("values", []),
            "NotIn": not present or value not in expr.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[expr["operator"]]
        if not ok:
            return False
    return True


def apply_json_patch(doc: Doc, ops: list[Doc]) -> None:
    for op in ops:
        assert op["op"] in {"replace", "add"}, f"walker supports replace/add patches, not {op['op']}"
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in node, f"patch path {op['path']} not found"
            node[last] = copy.deepcopy(op["value"])


def patch_targets(docs: list[Doc], target: Doc) -> list[Doc]:
    selector = {}
    if "labelSelector" in target:
        selector = {"matchLabels": dict(kv.split("=", 1) for kv in target["labelSelector"].split(","))}
    return [
        doc
        for doc in docs
        if doc["kind"] == target.get("kind", doc["kind"])
        and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"])
        and labels_match(selector, doc["metadata"].get("labels", {}))
    ]


def walk(directory: Path) -> list[Doc]:
    """Resources and components of one kustomization, with its transformers applied."""
    kustomization = load_yaml(directory / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: the test's walker does not model {sorted(unknown)}"
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        docs += walk(path) if path.is_dir() else load_yaml(path)
    for entry in kustomization.get("components", []):
        docs += walk(directory / entry)
    for doc in docs:
        if "namespace" in kustomization and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = kustomization["namespace"]
        for pairs in kustomization.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(pairs["pairs"])
        for image in kustomization.get("images", []):
            for container in containers(doc):
                name, tag = split_image(container["image"])
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
        for replicas in kustomization.get("replicas", []):
            if doc["kind"] in WORKLOADS and doc["metadata"]["name"] == replicas["name"]:
                doc["spec"]["replicas"] = replicas["count"]
    for patch in kustomization.get("patches", []):
        targets = patch_targets(docs, patch["target"])
        assert targets, f"{directory}: patch target {patch['target']} matches nothing"
        for doc in targets:
            apply_json_patch(doc, yaml.safe_load(patch["patch"]))
    return docs


@functools.cache
def render(overlay: str, renderer: str) -> tuple[Doc, ...]:
    directory = K8S / "overlays" / overlay
    if renderer == "walk":
        return tuple(walk(directory))
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the built-in walker still checks every overlay")
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@pytest.fixture(params=["walk", "kubectl"])
def renderer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["dev", "prod"])
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def docs(overlay: str, renderer: str) -> tuple[Doc, ...]:
    return render(overlay, renderer)


def find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def config_data(docs: tuple[Doc, ...]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap", "onefold-config")["data"])


def pod_labels(doc: Doc) -> dict[str, str]:
    return dict(doc["spec"]["template"]["metadata"]["labels"])


# --- structure -------------------------------------------------------------------------------------


def test_every_manifest_file_is_part_of_a_kustomization() -> None:
    referenced: set[Path] = set()

    def collect(directory: Path) -> None:
        kustomization = load_yaml(directory / "kustomization.yaml")[0]
        for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
            path = (directory / entry).resolve()
            collect(path) if path.is_dir() else referenced.add(path)

    for overlay_dir in (K8S / "overlays").iterdir():
        collect(overlay_dir)
    manifests = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests - referenced == set(), "manifests no overlay uses"


def test_no_secret_is_committed() -> None:
    for path in K8S.rglob("*.y*ml"):
        for doc in load_yaml(path):
            assert doc.get("kind") != "Secret", f"{path} commits a Secret; create it with kubectl (README)"
            assert "secretGenerator" not in doc, f"{path} generates a Secret from committed data"


def test_walker_and_kubectl_render_the_same_objects(overlay: str) -> None:
    walked = {(d["kind"], d["metadata"]["name"]) for d in render(overlay, "walk")}
    assert walked == {(d["kind"], d["metadata"]["name"]) for d in render(overlay, "kubectl")}


def test_everything_is_in_the_onefold_namespace(docs: tuple[Doc, ...]) -> None:
    assert find(docs, "Namespace", NAMESPACE)
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']}/{doc['metadata']['name']}"
    assert not find(docs, "Secret")


def test_each_service_has_a_deployment_service_and_service_account(docs: tuple[Doc, ...]) -> None:
    for name in SERVICES:
        deployment, service = one(docs, "Deployment", name), one(docs, "Service", name)
        account = one(docs, "ServiceAccount", name)
        assert account.get("automountServiceAccountToken") is False
        spec = pod_spec(deployment)
        assert spec["serviceAccountName"] == name and spec["automountServiceAccountToken"] is False
        assert labels_match(deployment["spec"]["selector"], pod_labels(deployment))
        assert labels_match({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment))
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports["grpc"]["port"] == GRPC_PORT and ports["grpc"]["targetPort"] == "grpc"
        assert ("http" in ports) == (name == "ingest")
        (container,) = spec["containers"]
        assert container["command"] == ["python", "-m", f"onefold.{name}"]
        assert importlib.util.find_spec(f"onefold.{name}.__main__") is not None
        assert {"name": "grpc", "containerPort": GRPC_PORT} in container["ports"]


def test_deployments_have_grpc_probes(docs: tuple[Doc, ...]) -> None:
    assert int(config_data(docs)["ONEFOLD_GRPC__PORT"]) == GRPC_PORT
    for deployment in find(docs, "Deployment"):
        (container,) = pod_spec(deployment)["containers"]
        live, ready, start = (container[p] for p in ("livenessProbe", "readinessProbe", "startupProbe"))
        assert live["grpc"]["port"] == GRPC_PORT and live["grpc"].get("service", "") == ""
        assert ready["grpc"] == {"port": GRPC_PORT, "service": NATS_HEALTH_NAME}
        assert start["grpc"]["port"] == GRPC_PORT and start["grpc"].get("service", "") == ""
        assert start["periodSeconds"] * start["failureThreshold"] >= 60


def test_pods_are_hardened(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec.get("topologySpreadConstraints") or doc["spec"].get("replicas") == 1, where
        for container in containers(doc):
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc.get("privileged") is not True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][side]), where
            assert split_image(container["image"])[1] not in (None, "latest"), (
                f"{where}: {container['image']}"
            )


def test_service_pods_run_as_the_image_user_with_writable_scratch(docs: tuple[Doc, ...]) -> None:
    data = config_data(docs)
    for deployment in find(docs, "Deployment"):
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsUser"] == 10001
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        for path in ("/tmp", data["ONEFOLD_DATA_DIR"]):
            assert "emptyDir" in volumes[mounts[path]], path
        grace = float(data["ONEFOLD_GRPC__GRACE_SECONDS"])
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > grace + float(pre_stop[1])


def test_services_take_settings_from_the_config_map_and_secrets_by_reference(docs: tuple[Doc, ...]) -> None:
    for name in SERVICES:
        spec = pod_spec(one(docs, "Deployment", name))
        (container,) = spec["containers"]
        assert {"configMapRef": {"name": "onefold-config"}} in container["envFrom"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert refs["ONEFOLD_DATABASE__URL"] == {"name": f"onefold-{name}", "key": "database-url"}
        assert refs["ONEFOLD_AUTH__DATABASE_URL"] == {"name": f"onefold-{name}", "key": "auth-database-url"}
        for env in container["env"]:
            assert "://" not in str(env.get("value", "")), f"{name}: a URL belongs in its Secret"
        assert refs[KEK_ENV] == {"name": f"onefold-{name}", "key": "key-encryption-key"}
        assert not [v for v in spec["volumes"] if "secret" in v], "secrets come by reference only"
        # The one Secret-backed volume: this service's NATS password (no other user's) and the CA.
        values = {e["name"]: e.get("value") for e in container["env"]}
        assert values["ONEFOLD_NATS__USER"] == name
        (projected,) = [v for v in spec["volumes"] if "projected" in v]
        sources = [source["secret"] for source in projected["projected"]["sources"]]
        assert sources == [
            {"name": NATS_SECRET, "items": [{"key": f"{name}-password", "path": "password"}]},
            {"name": NATS_TLS_SECRET, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
        ]
        assert projected["projected"]["defaultMode"] & 0o007 == 0, "not readable by others"
        mount = next(m for m in container["volumeMounts"] if m["name"] == projected["name"])
        assert mount["readOnly"] is True
        data = config_data(docs)
        for setting, file in (("PASSWORD_FILE", "password"), ("TLS_CA_FILE", "ca.crt")):
            assert data[f"ONEFOLD_NATS__{setting}"] == f"{mount['mountPath']}/{file}"


def test_every_consuming_service_gets_its_service_credential(docs: tuple[Doc, ...]) -> None:
    """A consumer opens its upstreams' sealed events with data keys it asks them for, with its
    service credential: a consuming Deployment without one would serve and consume nothing."""
    consumers = {name for name, upstreams in CONSUMES.items() if upstreams}
    assert consumers == set(SERVICES) - {"ingest"}
    for name in SERVICES:
        (container,) = pod_spec(one(docs, "Deployment", name))["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        token = refs.get("ONEFOLD_AUTH__SERVICE_TOKEN")
        if name in consumers:
            assert token == {"name": f"onefold-{name}", "key": "service-token", "optional": True}, name
        else:
            assert token is None, f"{name} calls no other service"


def test_config_map_is_accepted_by_the_settings_loader(docs: tuple[Doc, ...]) -> None:
    """An unknown ONEFOLD_* key stops a service at start, so every key must be one the schema knows."""
    for name in SERVICES:
        container = pod_spec(one(docs, "Deployment", name))["containers"][0]
        env = dict(config_data(docs))
        env.update({e["name"]: e.get("value", "postgresql://u:p@db/x") for e in container["env"]})
        settings = load_settings(name, env=env)
        assert settings.grpc.port == GRPC_PORT and settings.grpc.host == "0.0.0.0"
        assert settings.database_url().startswith("postgresql")
        assert settings.auth.bootstrap_admin is (name == "ingest")
        assert settings.nats.user == name and settings.nats.password_file and settings.nats.tls_ca_file
    cipher = importlib.util.find_spec("onefold.eventlog.cipher")
    if cipher is not None:
        assert importlib.import_module("onefold.eventlog.cipher").DEFAULT_KEK_ENV == KEK_ENV
    nats_url = config_data(docs)["ONEFOLD_NATS__URL"]
    nats = one(docs, "Service", "nats")
    assert nats_url == f"tls://nats:{nats['spec']['ports'][0]['port']}"


# --- NATS and PostgreSQL ---------------------------------------------------------------------------


def nats_config(docs: tuple[Doc, ...]) -> str:
    return str(one(docs, "ConfigMap", "nats-config")["data"]["nats.conf"])


def test_nats_is_a_three_node_jetstream_cluster_that_fsyncs(docs: tuple[Doc, ...]) -> None:
    statefulset = one(docs, "StatefulSet", "nats")
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    headless = one(docs, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    config = "\n".join(line.split("#")[0] for line in nats_config(docs).splitlines())
    assert re.search(r"jetstream\s*\{[^}]*sync_interval:\s*always", config)
    routes = re.findall(r"nats://(nats-\d)\.([\w-]+):6222", config)
    assert routes == [(f"nats-{i}", headless["metadata"]["name"]) for i in range(3)]
    pdb = one(docs, "PodDisruptionBudget", "nats")
    assert labels_match(pdb["spec"]["selector"], pod_labels(statefulset))
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 2


def test_nats_requires_tls_and_the_generated_authorization(docs: tuple[Doc, ...]) -> None:
    config = nats_config(docs)
    assert authorization_config(environment_password) in config, (
        "the authorization block is stale: paste `python -m onefold.platform.bus_permissions` into nats.yaml"
    )
    assert "no_auth_user" not in config and "allow_non_tls" not in config
    uncommented = "\n".join(line.split("#")[0] for line in config.splitlines())
    files = (
        "cert_file: /etc/nats-tls/tls.crt",
        "key_file: /etc/nats-tls/tls.key",
        "ca_file: /etc/nats-tls/ca.crt",
    )
    client_tls = re.search(r"^tls\s*\{([^}]*)\}", uncommented, re.MULTILINE)
    assert client_tls and all(f in client_tls.group(1) for f in files), "clients must use TLS"
    cluster_tls = re.search(r"cluster\s*\{[^}]*?tls\s*\{([^}]*)\}", uncommented)
    assert cluster_tls and "verify: true" in cluster_tls.group(1), "routes need mutual TLS"

    (container,) = pod_spec(one(docs, "StatefulSet", "nats"))["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    for user in USERS:
        variable = environment_password(user).removeprefix("$")
        assert refs[variable] == {"name": NATS_SECRET, "key": f"{user}-password"}
    volumes = {v["name"]: v for v in pod_spec(one(docs, "StatefulSet", "nats"))["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/nats-tls")
    assert volumes[mount["name"]]["secret"]["secretName"] == NATS_TLS_SECRET and mount["readOnly"]


def write_test_pki(directory: Path) -> None:
    """A CA and a server certificate for localhost, in the layout of the Secret onefold-nats-tls."""
    now = datetime.now(UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [
                x509.DNSName("localhost"),
                x509.DNSName("nats"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onefold test CA")])
    ca = certificate("onefold test CA", ca_key, ca_name, ca_key, ca=True)
    server = certificate("nats", server_key, ca_name, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "tls.crt").write_bytes(server.public_bytes(pem))
    (directory / "tls.key").write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.fixture
def k8s_nats(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """The prod nats.conf run by a real nats-server on this machine: its URL, TLS dir and passwords."""
    try:
        binary = nats_server_binary()
    except Exception:
        pytest.skip("nats-server is not installed")
    tls = tmp_path / "nats-tls"
    tls.mkdir()
    write_test_pki(tls)
    client, cluster, monitor = free_port(), free_port(), free_port()
    config = (
        nats_config(render("prod", "walk"))
        .replace("/etc/nats-tls/", f"{tls}/")
        .replace("/var/run/nats/", f"{tmp_path}/")
        .replace("/data/jetstream", str(tmp_path / "jetstream"))
        .replace("0.0.0.0:4222", f"127.0.0.1:{client}")
        .replace("0.0.0.0:6222", f"127.0.0.1:{cluster}")
        .replace("0.0.0.0:8222", f"127.0.0.1:{monitor}")
    )
    path = tmp_path / "nats.conf"
    path.write_text(config)
    # nats-server parses a $VARIABLE's value as config: one starting with a digit reads as a number.
    passwords = {user: "p" + secrets.token_hex(24) for user in USERS}
    env = {
        "POD_NAME": "nats-0",
        **{environment_password(u).removeprefix("$"): p for u, p in passwords.items()},
    }
    checked = subprocess.run(
        [binary, "-t", "-c", str(path)], capture_output=True, text=True, env=env, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with (tmp_path / "nats.log").open("wb") as log:
        server = subprocess.Popen([binary, "-c", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(client, "127.0.0.1", 30), (tmp_path / "nats.log").read_text()
        yield f"tls://localhost:{client}", tls, passwords
    finally:
        server.terminate()
        server.wait(30)


async def test_the_k8s_nats_config_refuses_plain_and_anonymous_clients(
    k8s_nats: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, tls, passwords = k8s_nats
    trusted = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    once: dict[str, Any] = {"allow_reconnect": False, "max_reconnect_attempts": 0, "connect_timeout": 5}
    with pytest.raises(Exception):  # noqa: B017 - the server's refusal, whatever nats-py calls it
        await nats.connect(url, tls=trusted, **once)
    with pytest.raises(Exception):  # noqa: B017 - a wrong password
        await nats.connect(url, tls=trusted, user="ingest", password="guessed", **once)
    with pytest.raises(Exception):  # noqa: B017 - a server certificate from an unknown CA
        await nats.connect(
            url, tls=ssl.create_default_context(), user="ingest", password=passwords["ingest"], **once
        )

    # A service as its Deployment configures it: its user, its password file, the CA file.
    (tmp_path / "password").write_text(passwords["identity"] + "\n")
    docs = render("prod", "walk")
    env = {**config_data(docs), "ONEFOLD_NATS__URL": url, "ONEFOLD_NATS__USER": "identity"}
    env["ONEFOLD_NATS__PASSWORD_FILE"] = str(tmp_path / "password")
    env["ONEFOLD_NATS__TLS_CA_FILE"] = str(tls / "ca.crt")
    settings = load_settings("identity", env=env).nats
    client = await nats.connect(settings.url, **connect_options(settings), **once)
    try:
        assert client.is_connected
    finally:
        await client.close()

    # A client that does not start TLS, even with the right password, gets no further than INFO.
    host, port = url.removeprefix("tls://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await reader.readline()).decode().removeprefix("INFO "))
        assert info["tls_required"] is True and info["auth_required"] is True
        login = {"user": "identity", "pass": passwords["identity"], "verbose": False, "pedantic": False}
        writer.write(f"CONNECT {json.dumps(login)}\r\nPING\r\n".encode())
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    assert b"PONG" not in answer, answer


def test_dev_has_postgres_with_a_database_per_service(renderer: str) -> None:
    docs = render("dev", renderer)
    statefulset = one(docs, "StatefulSet", "postgres")
    assert statefulset["spec"]["volumeClaimTemplates"]
    script = "\n".join(one(docs, "ConfigMap", "postgres-init")["data"].values())
    (databases,) = re.findall(r"for db in ([\w ]+);", script)
    assert set(databases.split()) == {*SERVICES, "auth"}
    env = {e["name"] for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {f"PASSWORD_{db.upper()}" for db in databases.split()} <= env
    for name in SERVICES:
        assert one(docs, "Deployment", name)["spec"]["replicas"] == 1


def test_prod_has_no_in_cluster_postgres_and_pinned_images(renderer: str) -> None:
    docs = render("prod", renderer)
    assert not find(docs, "StatefulSet", "postgres")
    for deployment in find(docs, "Deployment"):
        name, tag = split_image(pod_spec(deployment)["containers"][0]["image"])
        assert "/" in name and tag and re.fullmatch(r"\d+\.\d+\.\d+\S*", tag), (name, tag)


# --- scale and availability ------------------------------------------------------------------------


def test_each_service_has_an_hpa_and_a_pdb(docs: tuple[Doc, ...], overlay: str) -> None:
    for deployment in find(docs, "Deployment"):
        name, replicas = deployment["metadata"]["name"], deployment["spec"]["replicas"]
        pdb = one(docs, "PodDisruptionBudget", name)
        assert labels_match(pdb["spec"]["selector"], pod_labels(deployment))
        assert pdb["spec"].get("maxUnavailable") == 1, "minAvailable would block drains of 1 replica"
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "failing pods must not hold drains"
        if name in SINGLE_REPLICA:
            assert not find(docs, "HorizontalPodAutoscaler", name), f"{name} must not be autoscaled"
            assert pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", name
            continue
        hpa = one(docs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["minReplicas"] <= replicas <= hpa["spec"]["maxReplicas"]
        if overlay == "prod":
            assert replicas >= 2 and hpa["spec"]["minReplicas"] >= 2


def test_insights_runs_one_pod_with_its_warehouse_on_a_persistent_volume(docs: tuple[Doc, ...]) -> None:
    for name in SINGLE_REPLICA:
        deployment = one(docs, "Deployment", name)
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two pods must never open the file"
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        env = {
            **config_data(docs),
            **{e["name"]: e.get("value", "postgresql://u:p@db/x") for e in container["env"]},
        }
        settings = load_settings(name, env=env, sections=[InsightsSettings])
        assert settings.eventlog.workers == 1
        warehouse = Path(settings.section(InsightsSettings).warehouse)
        assert warehouse.is_absolute() and warehouse.suffix == ".duckdb"
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        mount = mounts[str(warehouse.parent)]
        assert not mount.get("readOnly") and not mount.get("subPath")
        volumes = {v["name"]: v for v in spec["volumes"]}
        claim = one(
            docs, "PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
        )
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"]


# --- network policies ------------------------------------------------------------------------------


def allowed(docs: tuple[Doc, ...], src: dict[str, str] | None, dst: dict[str, str], port: int) -> bool:
    """Would the NetworkPolicies let a pod labelled `src` open TCP `port` on a pod labelled `dst`?

    `src=None` is a client outside the namespace (an ingress controller, another team's app): only
    rules without peers admit it, since every podSelector peer here means "in this namespace".
    """
    policies = find(docs, "NetworkPolicy")

    def side(pod: dict[str, str], peer: dict[str, str] | None, direction: str, peers_key: str) -> bool:
        selecting = [
            p
            for p in policies
            if labels_match(p["spec"]["podSelector"], pod) and direction in p["spec"]["policyTypes"]
        ]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy["spec"].get(direction.lower(), []):
                ports = rule.get("ports")
                if ports and not any(p.get("port") == port for p in ports):
                    continue
                peers = rule.get(peers_key)
                if not peers or (
                    peer is not None
                    and any("podSelector" in x and labels_match(x["podSelector"], peer) for x in peers)
                ):
                    return True
        return False

    egress = src is None or side(src, dst, "Egress", "to")
    return egress and side(dst, src, "Ingress", "from")


def test_network_policies_allow_only_onefold_paths(docs: tuple[Doc, ...]) -> None:
    default_deny = one(docs, "NetworkPolicy", "default-deny")["spec"]
    assert default_deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = {d["metadata"]["name"]: pod_labels(d) for d in docs if d["kind"] in WORKLOADS}
    stranger = None  # a pod in another namespace
    for name in SERVICES:
        for other in SERVICES:
            if other == "insights":  # data-subject requests, and its consumers for their data keys
                expected = name == "consent" or "insights" in CONSUMES[name]
            elif name == "insights":  # only its upstreams, for their subjects' data keys
                expected = other in CONSUMES["insights"]
            else:
                expected = True
            assert allowed(docs, pods[name], pods[other], GRPC_PORT) is expected, f"{name} -> {other}"
        assert allowed(docs, pods[name], pods["nats"], 4222), f"{name} -> nats"
        assert not allowed(docs, stranger, pods[name], GRPC_PORT), f"stranger -> {name}"
        assert not allowed(docs, pods["nats"], pods[name], GRPC_PORT), f"nats -> {name}"
        if "postgres" in pods:
            assert allowed(docs, pods[name], pods["postgres"], 5432), f"{name} -> postgres"
    assert allowed(docs, pods["nats"], pods["nats"], 6222)
    assert not allowed(docs, stranger, pods["nats"], 4222)
    assert allowed(docs, stranger, pods["ingest"], 8080), "the tracking API is public"
    assert not allowed(docs, stranger, pods["identity"], 8080)
    if "postgres" in pods:
        assert not allowed(docs, stranger, pods["postgres"], 5432)
        assert not allowed(docs, pods["nats"], pods["postgres"], 5432)


def test_prod_services_may_reach_the_external_database(renderer: str) -> None:
    docs = render("prod", renderer)
    for name in SERVICES:
        labels = pod_labels(one(docs, "Deployment", name))
        rules = [
            rule
            for p in find(docs, "NetworkPolicy")
            if labels_match(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("egress", [])
            if any("ipBlock" in peer for peer in rule.get("to", []))
        ]
        assert any(port["port"] == 5432 for rule in rules for port in rule["ports"]), name


# --- the probes against a real service -------------------------------------------------------------


@pytest.fixture
def ingest_with_k8s_settings(tmp_path: Path, nats_server: NatsServerProcess) -> Iterator[ServiceProcess]:
    """ingest started with the rendered ConfigMap (the address, data dir and secrets made local)."""
    env = {k: v for k, v in config_data(render("prod", "walk")).items() if k != "ONEFOLD_DATA_DIR"}
    env.pop("ONEFOLD_GRPC__PORT")
    for local in [key for key in env if key.startswith("ONEFOLD_NATS__")]:  # the local server's own
        env.pop(local)
    env["ONEFOLD_DATABASE__URL"] = f"sqlite:///{tmp_path / 'ingest.db'}"
    env["ONEFOLD_AUTH__DATABASE_URL"] = f"sqlite:///{tmp_path / 'auth.db'}"
    service = ServiceProcess("ingest", tmp_path / "data", nats_server, extra_env=env)
    service.start()
    yield service
    service.stop()


def test_probe_health_names_follow_nats(
    ingest_with_k8s_settings: ServiceProcess, nats_server: NatsServerProcess
) -> None:
    target = ingest_with_k8s_settings.target
    assert wait_for_health(target, NATS_HEALTH_NAME, "SERVING", timeout=15)
    assert health_status(target, "") == "SERVING"
    nats_server.stop()
    assert wait_for_health(target, NATS_HEALTH_NAME, "NOT_SERVING", timeout=15), "readiness must drop"
    assert health_status(target, "") == "SERVING", "liveness must not restart a pod for a NATS outage"
    nats_server.start()
    assert wait_for_health(target, NATS_HEALTH_NAME, "SERVING", timeout=30), "readiness must come back"
