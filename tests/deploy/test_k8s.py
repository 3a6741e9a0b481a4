"""The Kubernetes manifests in deploy/k8s are valid objects for Kubernetes 1.37 (checked offline
against its strict JSON schemas: a misspelt or misplaced field fails, it is not ignored), and
keep what a reviewer would otherwise check by hand: unprivileged containers, probes and
resource bounds on long-running ones, Secret and ConfigMap references that resolve, selectors
that select, and a kustomization that applies every manifest but the Secret template."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
K8S_VERSION = "1.37.0"
KUSTOMIZATION = "kustomization.yaml"
SECRET_TEMPLATE = "secret.example.yaml"
PART_OF = ("app.kubernetes.io/part-of", "riskloop")

Doc = dict[str, Any]


def load(name: str) -> list[Doc]:
    with open(K8S / name) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def manifests() -> list[tuple[str, Doc]]:
    """(file, object) for every Kubernetes object; kustomization.yaml is kustomize's own
    config, not an API object, and has no schema."""
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != KUSTOMIZATION)
    return [(name, doc) for name in files for doc in load(name)]


def ident(file: str, doc: Doc) -> str:
    return f"{file}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(kind: str) -> list[Doc]:
    return [d for _, d in manifests() if d["kind"] == kind]


def named(kind: str, name: str) -> Doc:
    [doc] = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] == "Deployment":
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(doc: Doc) -> Iterator[tuple[Doc, Doc]]:
    """(pod spec, container) for every container and init container of a workload."""
    spec = pod_spec(doc)
    if spec is not None:
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield spec, c


def walk(node: Any, key: str) -> Iterator[Doc]:
    """Every mapping found under `key`, anywhere in the object."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                yield v
            yield from walk(v, key)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def strict_error(doc: Doc) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
        return e.message  # an unknown kind or apiVersion is an error too, not a skip
    return None


def test_every_manifest_validates_strictly() -> None:
    docs = manifests()
    # the Secret template is not applied by kustomize, but users copy it: it must be valid too
    assert SECRET_TEMPLATE in {f for f, _ in docs}
    errors = [f"{ident(f, d)}: {err}" for f, d in docs if (err := strict_error(d))]
    assert not errors, f"invalid for Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


def test_the_validator_can_fail() -> None:
    """Without this, a validator that accepted anything would pass the test above."""
    api = named("Deployment", "riskloop-api")
    assert strict_error(api) is None
    unknown = copy.deepcopy(api)
    unknown["spec"]["replica"] = 2  # a typo of `replicas`
    assert "'replica' was unexpected" in (strict_error(unknown) or "")
    # only the strict schemas catch it: the default ones accept unknown fields
    kubernetes_validate.validate(unknown, K8S_VERSION, strict=False)
    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    assert "is not of type 'integer'" in (strict_error(wrong_type) or "")


def test_every_object_is_labelled_part_of_riskloop() -> None:
    key, value = PART_OF
    unlabelled = [ident(f, d) for f, d in manifests() if d["metadata"]["labels"].get(key) != value]
    assert not unlabelled


def test_containers_run_unprivileged() -> None:
    workloads = of_kind("Deployment") + of_kind("CronJob")
    assert workloads
    problems = []
    for doc in workloads:
        for spec, c in containers(doc):
            pod_sc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
            # a container's setting overrides the pod's
            effective = {**pod_sc, **sc}
            where = f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}"
            if effective.get("runAsNonRoot") is not True or effective.get("runAsUser") == 0:
                problems.append(f"{where}: may run as root")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: does not drop ALL capabilities")
            if effective.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
    assert not problems, "\n".join(problems)


def test_long_running_containers_have_probes_and_bounds() -> None:
    problems = []
    for doc in of_kind("Deployment"):
        for _, c in containers(doc):
            where = f"Deployment/{doc['metadata']['name']} container {c['name']}"
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in c:
                    problems.append(f"{where}: no {probe}")
            # a probe on a port the container does not declare never succeeds
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{where}: {probe} on undeclared port {port}")
            resources = c.get("resources", {})
            for bound in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(bound, {})):
                    problems.append(f"{where}: no cpu and memory {bound}")
    assert not problems, "\n".join(problems)


def test_api_probes_follow_the_service() -> None:
    [(_, api)] = [*containers(named("Deployment", "riskloop-api"))]
    assert api["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # liveness must not kill a pod still loading its model
    assert api["startupProbe"]["httpGet"]["path"] == "/livez"


def test_read_only_containers_write_only_to_volumes() -> None:
    """With a read-only root, every directory the process is told to write must be mounted."""
    problems = []
    for doc in of_kind("Deployment") + of_kind("CronJob"):
        for _, c in containers(doc):
            if not c.get("securityContext", {}).get("readOnlyRootFilesystem"):
                continue
            mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert "/tmp" in mounts, f"{c['name']}: read-only root without a writable /tmp"
            for env in c.get("env", []):
                value = env.get("value", "")
                if re.search(r"(_DIR|HOME)$", env["name"]) and not any(
                    value == m or value.startswith(m + "/") for m in mounts
                ):
                    problems.append(f"{c['name']}: {env['name']}={value} is not on a volume")
    assert not problems, "\n".join(problems)


def test_variable_references_are_defined() -> None:
    """Kubernetes leaves an undefined $(VAR) in command/args as literal text, silently."""
    problems = []
    for doc in of_kind("Deployment") + of_kind("CronJob"):
        for _, c in containers(doc):
            defined = {e["name"] for e in c.get("env", [])}
            for word in c.get("command", []) + c.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", word):
                    if var not in defined:
                        problems.append(f"{c['name']}: $({var}) is not in its env")
    assert not problems, "\n".join(problems)


def test_secret_references_match_the_template() -> None:
    [template] = load(SECRET_TEMPLATE)
    name = template["metadata"]["name"]
    keys = set(template.get("stringData", {})) | set(template.get("data", {}))
    used = set()
    for file, doc in manifests():
        if file == SECRET_TEMPLATE:
            continue
        for ref in walk(doc, "secretKeyRef"):
            assert ref["name"] == name, f"{ident(file, doc)}: Secret {ref['name']} has no template"
            assert ref["key"] in keys, f"{ident(file, doc)}: key {ref['key']} not in {name}"
            used.add(ref["key"])
        for ref in walk(doc, "secretRef"):
            assert ref["name"] == name, f"{ident(file, doc)}: Secret {ref['name']} has no template"
            used |= keys
    # a key nothing reads is a value the user is asked for in vain (or a misspelt reference)
    assert keys == used, f"unused keys in {SECRET_TEMPLATE}: {sorted(keys - used)}"


def test_config_map_references_resolve() -> None:
    data = {d["metadata"]["name"]: set(d.get("data", {})) for d in of_kind("ConfigMap")}
    for file, doc in manifests():
        for ref in walk(doc, "configMapRef"):
            assert ref["name"] in data, f"{ident(file, doc)}: no ConfigMap {ref['name']}"
        for ref in walk(doc, "configMapKeyRef"):
            assert ref["key"] in data.get(ref["name"], set()), f"{ident(file, doc)}: {ref}"


def test_selectors_select_what_they_mean() -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in of_kind("Deployment")
    }
    for doc in of_kind("Deployment"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pods[doc["metadata"]["name"]].items(), doc["metadata"]["name"]
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    for doc in of_kind("Deployment") + of_kind("CronJob"):
        for volume in (pod_spec(doc) or {}).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    for doc in of_kind("Service") + of_kind("PodDisruptionBudget"):
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        selected = [n for n, labels in pods.items() if selector.items() <= labels.items()]
        assert selected, f"{doc['kind']}/{doc['metadata']['name']} selects no pods"
    for doc in of_kind("HorizontalPodAutoscaler"):
        assert doc["spec"]["scaleTargetRef"]["name"] in pods


def test_api_service_points_at_the_api_port() -> None:
    service = named("Service", "riskloop-api")
    [(_, api)] = [*containers(named("Deployment", "riskloop-api"))]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    [port] = service["spec"]["ports"]
    assert port["port"] == 80 and ports[port["targetPort"]] == 3000
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) in ports.values()


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    [kustomization] = load(KUSTOMIZATION)
    resources = kustomization["resources"]
    missing = [r for r in resources if not (K8S / r).is_file()]
    assert not missing, f"listed in {KUSTOMIZATION} but absent: {missing}"
    files = {p.name for p in K8S.glob("*.yaml")} - {KUSTOMIZATION, SECRET_TEMPLATE}
    assert set(resources) == files, f"not listed: {sorted(files - set(resources))}"
    # placeholders applied as a real Secret would overwrite the user's
    assert SECRET_TEMPLATE not in resources
    secrets = [ident(r, d) for r in resources for d in load(r) if d["kind"] == "Secret"]
    assert not secrets, f"Secrets applied by {KUSTOMIZATION}: {secrets}"
    for generator in kustomization.get("secretGenerator", []):
        assert "literals" not in generator, "secret values written into kustomization.yaml"


def test_kustomization_sets_exactly_the_images_in_use() -> None:
    """Users point the images at their registry in kustomization.yaml: an entry no workload
    uses silently does nothing, and a workload image without one is easy to miss."""
    [kustomization] = load(KUSTOMIZATION)
    used = {
        c["image"].rsplit(":", 1)[0]
        for doc in of_kind("Deployment") + of_kind("CronJob")
        for _, c in containers(doc)
    }
    assert {i["name"] for i in kustomization.get("images", [])} == used
