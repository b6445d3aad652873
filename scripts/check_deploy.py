#!/usr/bin/env python3
"""Offline checks of what operators plug hotline into: the Kubernetes manifests, the
Dockerfile and docker-compose.yml with what it mounts. Run by scripts/check-deploy.sh inside
its virtualenv (deploy/requirements.txt); prints one line per check and every failure, and
exits 1 if anything failed.

What is NOT checked here: the image is not built and compose is not started (no container
engine is assumed), so the Dockerfile's commands, the images' tags, Prometheus' rules and
Grafana's dashboard are not run; kubernetes-validate checks each object against the API schema
of a Kubernetes version, not against a cluster (admission, quotas, the Secret's presence).
"""

import json
import os
import re
import shlex
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_DIR = os.path.join("deploy", "kubernetes")
# The oldest Kubernetes minor release still supported upstream (the newest three are; 1.34
# reached its end of life on 2026-10-27, 1.35 reaches it on 2027-02-28), and the newest that
# the pinned kubernetes-validate knows. Raise the first when it reaches its end of life.
K8S_VERSIONS = os.environ.get("HOTLINE_K8S_VERSIONS", "1.35.0 1.37.0").split()
# Kubernetes objects that are not hotline's manifests: not applied, not validated as objects.
NOT_OBJECTS = {"kustomization.yaml", "kustomization.yml"}
# Read by the logging setup rather than a clap flag.
EXTRA_ENV = {"RUST_LOG"}

failures = []
passed = 0


def fail(where, message):
    failures.append(f"{where}: {message}")
    print(f"FAIL  {where}: {message}")


def ok(where, message):
    global passed
    passed += 1
    print(f"ok    {where}: {message}")


def rel(path):
    return os.path.relpath(path, ROOT)


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def hotline_env_names():
    """Every environment variable hotline reads through its flags (src/config.rs)."""
    with open(os.path.join(ROOT, "src", "config.rs"), encoding="utf-8") as f:
        names = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', f.read()))
    return names | EXTRA_ENV


# --- Kubernetes -------------------------------------------------------------------------


def k8s_manifests():
    d = os.path.join(ROOT, K8S_DIR)
    if not os.path.isdir(d):
        fail(K8S_DIR, "missing")
        return []
    return sorted(
        os.path.join(d, f)
        for f in os.listdir(d)
        if f.endswith((".yaml", ".yml")) and f not in NOT_OBJECTS
    )


def validate_k8s(files):
    for version in K8S_VERSIONS:
        for path in files:
            where = f"{rel(path)} (Kubernetes {version})"
            r = subprocess.run(
                ["kubernetes-validate", "--strict", "-k", version, path],
                capture_output=True,
                text=True,
            )
            out = (r.stdout + r.stderr).strip()
            # An unknown kind or API version is only a warning to kubernetes-validate: here it
            # is a failure, as is a deprecation.
            bad = [
                line
                for line in out.splitlines()
                if line.startswith(("ERROR", "WARN", "FATAL", "Couldn't"))
            ]
            if r.returncode != 0 or bad:
                fail(where, "; ".join(bad) or out or f"exit status {r.returncode}")
            else:
                ok(where, "valid (strict)")


def check_kustomization(files):
    d = os.path.join(ROOT, K8S_DIR)
    path = os.path.join(d, "kustomization.yaml")
    where = rel(path)
    if not os.path.exists(path):
        fail(where, "missing")
        return
    docs = load_yaml_docs(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        fail(where, "must hold exactly one YAML mapping")
        return
    k = docs[0]
    if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
        fail(where, "apiVersion/kind must be kustomize.config.k8s.io/v1beta1 Kustomization")
    resources = k.get("resources") or []
    problems = []
    for r in resources:
        if not os.path.isfile(os.path.join(d, r)):
            problems.append(f"lists {r}, which does not exist")
        if ".example." in r:
            problems.append(f"lists {r}: an example is never applied")
    names = {os.path.basename(f) for f in files}
    for n in sorted(names - set(resources)):
        if ".example." not in n:
            problems.append(f"does not list {n}")
    known = {"apiVersion", "kind", "resources", "images", "namespace", "labels",
             "commonAnnotations", "patches", "configMapGenerator", "secretGenerator",
             "replicas", "components", "namePrefix", "nameSuffix"}
    for key in k:
        if key not in known:
            problems.append(f"unexpected field `{key}`")
    for p in problems:
        fail(where, p)
    if not problems:
        ok(where, f"{len(resources)} resources, every manifest listed, examples left out")


def objects_by_kind(files):
    objs = {}
    for path in files:
        for doc in load_yaml_docs(path):
            objs.setdefault(doc.get("kind"), []).append((path, doc))
    return objs


def check_k8s_consistency(files):
    env_names = hotline_env_names()
    objs = objects_by_kind(files)
    deployments = objs.get("Deployment", [])
    if len(deployments) != 1:
        fail(K8S_DIR, f"expected one Deployment, found {len(deployments)}")
        return
    dpath, dep = deployments[0]
    where = rel(dpath)
    spec = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    containers = spec["containers"]
    c = next((c for c in containers if c["name"] == "hotline"), None)
    if c is None:
        fail(where, "no container named hotline")
        return
    problems = []

    # Probes and the stop sequence.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    live = c.get("livenessProbe") or {}
    ready = c.get("readinessProbe") or {}
    if live.get("httpGet", {}).get("path") != "/healthz":
        problems.append("the liveness probe must GET /healthz")
    if not ready.get("httpGet"):
        problems.append("no HTTP readiness probe")
    window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    if window <= grace:
        problems.append(
            f"liveness periodSeconds x failureThreshold ({window} s) must exceed "
            f"terminationGracePeriodSeconds ({grace} s), or a drain could restart the container"
        )
    cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    if len(cmd) < 2 or not cmd[0].endswith("hotline") or cmd[1] != "drain":
        problems.append("the preStop hook must exec `hotline drain`")
    else:
        def flag(name, default):
            if name in cmd:
                i = cmd.index(name)
                return int(cmd[i + 1]) if i + 1 < len(cmd) else default
            return default
        hook = flag("--wait-s", 0) + flag("--ack-timeout-s", 10)
        if hook <= 0 or hook >= grace:
            problems.append(
                f"the preStop hook may take {hook} s (--ack-timeout-s + --wait-s), which must be "
                f"above 0 and well below terminationGracePeriodSeconds ({grace} s)"
            )

    # Security context.
    psc = spec.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        problems.append("runAsNonRoot is not set")
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if not isinstance(uid, int) or uid == 0:
        problems.append("runAsUser must be a numeric non-root user")
    if csc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        problems.append("capabilities must drop ALL")
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problems.append("seccompProfile must be RuntimeDefault")
    res = c.get("resources") or {}
    if not res.get("requests") or not res.get("limits"):
        problems.append("resources need requests and limits")

    # Settings: names hotline knows, the ConfigMap and Secret the pod refers to.
    configmaps = {d["metadata"]["name"]: (p, d) for p, d in objs.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: (p, d) for p, d in objs.get("Secret", [])}
    config = {}
    for ef in c.get("envFrom") or []:
        ref = ef.get("configMapRef")
        if ref:
            if ref["name"] not in configmaps:
                problems.append(f"envFrom names ConfigMap {ref['name']}, not among the manifests")
            else:
                config.update(configmaps[ref["name"]][1].get("data") or {})
        if ef.get("secretRef"):
            problems.append("a Secret is read whole through envFrom: name its keys instead")
    for name in config:
        if name not in env_names:
            problems.append(f"ConfigMap key {name} is not a setting hotline reads")
    for e in c.get("env") or []:
        if e["name"] not in env_names:
            problems.append(f"env {e['name']} is not a setting hotline reads")
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            example = secrets.get(ref["name"])
            if example is None:
                problems.append(f"env {e['name']} reads Secret {ref['name']}, which has no example")
            elif not ref.get("optional"):
                keys = set((example[1].get("stringData") or {})) | set(example[1].get("data") or {})
                if ref["key"] not in keys:
                    problems.append(
                        f"required Secret key {ref['key']} is missing from {rel(example[0])}"
                    )
    for sname, (spath, sdoc) in secrets.items():
        for key in (sdoc.get("stringData") or {}):
            if key not in env_names:
                problems.append(f"{rel(spath)}: key {key} is not a setting hotline reads")
    for key in ("ADMIN_TOKEN", "WEBHOOK_SECRET", "DATABASE_URL"):
        if key in config:
            problems.append(f"{key} is a secret: keep it out of the ConfigMap")

    # hotline must listen where the probes, the Service and the hook look.
    listen = config.get("LISTEN_ADDR", "127.0.0.1:8080")
    port = next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == "http"), None)
    if listen.startswith("127.") or not listen.endswith(f":{port}"):
        problems.append(f"LISTEN_ADDR {listen} must listen on all interfaces, port {port}")
    if port != 8080:
        problems.append("the preStop hook drains http://127.0.0.1:8080: keep port 8080")

    # The one writable place is a mounted volume.
    spool = config.get("SPOOL_DIR", "hotline-spool")
    mounts = [m["mountPath"] for m in c.get("volumeMounts") or []]
    if not any(spool.startswith(m.rstrip("/") + "/") or spool == m for m in mounts):
        problems.append(f"SPOOL_DIR {spool} is not on a mounted volume (the root is read-only)")

    # Selectors of the Service, PodDisruptionBudget and HorizontalPodAutoscaler.
    def selects(selector):
        return selector and all(labels.get(k) == v for k, v in selector.items())

    if not selects(dep["spec"]["selector"].get("matchLabels")):
        problems.append("the Deployment's selector does not match its pods")
    for p, svc in objs.get("Service", []):
        if not selects(svc["spec"].get("selector")):
            problems.append(f"{rel(p)}: the selector does not match hotline's pods")
    for p, pdb in objs.get("PodDisruptionBudget", []):
        if not selects(pdb["spec"].get("selector", {}).get("matchLabels")):
            problems.append(f"{rel(p)}: the selector does not match hotline's pods")
    for p, hpa in objs.get("HorizontalPodAutoscaler", []):
        t = hpa["spec"]["scaleTargetRef"]
        if t.get("kind") != "Deployment" or t.get("name") != dep["metadata"]["name"]:
            problems.append(f"{rel(p)}: scaleTargetRef is not the Deployment")
        if hpa["spec"].get("minReplicas", 1) < 2:
            problems.append(f"{rel(p)}: minReplicas below 2 leaves nothing serving during a replacement")
    for kind in ("Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"):
        if not objs.get(kind):
            problems.append(f"no {kind} among the manifests")

    for p in problems:
        fail(where, p)
    if not problems:
        ok(where, "probes, stop sequence, security context, settings and selectors agree")


# --- Dockerfile --------------------------------------------------------------------------


def dockerfile_instructions(path):
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.rstrip("\n")
            if not buf and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if buf and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            parts = buf.strip().split(None, 1)
            out.append((parts[0].upper(), parts[1] if len(parts) > 1 else ""))
            buf = ""
    return out


def check_dockerfile():
    path = os.path.join(ROOT, "Dockerfile")
    where = "Dockerfile"
    if not os.path.exists(path):
        fail(where, "missing")
        return
    ins = dockerfile_instructions(path)
    stages, args = [], {}
    for op, rest in ins:
        if op == "FROM":
            stages.append([])
        elif op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        if stages:
            stages[-1].append((op, rest))
    problems = []
    if len(stages) < 2:
        problems.append("expected a multi-stage build (builder, then runtime)")
    builds = []
    for op, rest in ins:
        if op == "RUN":
            for cmd in re.split(r"&&|;|\|\|", rest):
                words = shlex.split(cmd)
                if words[:2] == ["cargo", "build"]:
                    builds.append(" ".join(words))
    if not builds:
        problems.append("no `cargo build` step")
    for b in builds:
        if b != "cargo build --release --locked":
            problems.append(f"`{b}` is not CI's build command `cargo build --release --locked`")
    # The builder's toolchain is at least the crate's rust-version.
    first_from = next(rest for op, rest in ins if op == "FROM")
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), first_from.split()[0])
    m = re.match(r"rust:(\d+)\.(\d+)", image)
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        rv = re.search(r'^rust-version\s*=\s*"(\d+)\.(\d+)', f.read(), re.M)
    if not m:
        problems.append(f"the builder `{image}` is not an official rust:X.Y image")
    elif rv and (int(m.group(1)), int(m.group(2))) < (int(rv.group(1)), int(rv.group(2))):
        problems.append(f"the builder `{image}` is older than rust-version {rv.group(1)}.{rv.group(2)}")
    if stages:
        final = stages[-1]
        users = [rest.strip() for op, rest in final if op == "USER"]
        if not users:
            problems.append("the final stage sets no USER (it would run as root)")
        elif not re.fullmatch(r"\d+(:\d+)?", users[-1]) or users[-1].split(":")[0] == "0":
            problems.append(f"the final stage's USER `{users[-1]}` must be a numeric non-root uid")
        entry = [rest.strip() for op, rest in final if op == "ENTRYPOINT"]
        if not entry or json.loads(entry[-1]) != ["hotline"]:
            problems.append('the final stage needs ENTRYPOINT ["hotline"]')
        cmds = [rest.strip() for op, rest in final if op == "CMD"]
        if not cmds or json.loads(cmds[-1]) != ["serve"]:
            problems.append('the final stage needs CMD ["serve"]')
        # The earlier stages, by their `AS` names: the binary comes from one of them.
        earlier = set()
        for stage in stages[:-1]:
            words = stage[0][1].split()
            if len(words) == 3 and words[1].lower() == "as":
                earlier.add(words[2])
        if not any(
            op == "COPY"
            and rest.split()[-1] == "/usr/local/bin/hotline"
            and any(w.startswith("--from=") and w[len("--from="):] in earlier for w in rest.split())
            for op, rest in final
        ):
            problems.append("the binary is not copied from the build stage to /usr/local/bin/hotline")
        if not any(op == "EXPOSE" and "8080" in rest.split() for op, rest in final):
            problems.append("the final stage does not EXPOSE 8080")
    ignore = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(ignore):
        problems.append(".dockerignore is missing")
    else:
        with open(ignore, encoding="utf-8") as f:
            patterns = {l.strip().rstrip("/") for l in f if l.strip() and not l.startswith("#")}
        for must in ("target", ".git"):
            if must not in patterns:
                problems.append(f".dockerignore does not leave out {must}/")
    for p in problems:
        fail(where, p)
    if not problems:
        ok(where, "CI's build command, numeric non-root USER, entrypoint, .dockerignore")


# --- docker-compose.yml ------------------------------------------------------------------


def check_compose():
    path = os.path.join(ROOT, "docker-compose.yml")
    where = "docker-compose.yml"
    if not os.path.exists(path):
        fail(where, "missing")
        return None
    r = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        fail(where, "does not follow the compose specification: " + (r.stdout + r.stderr).strip())
    else:
        ok(where, "follows the compose specification (vendored schema)")
    docs = load_yaml_docs(path)
    compose = docs[0] if docs else {}
    problems = []
    named = set((compose.get("volumes") or {}).keys())
    mounted = []
    env_names = hotline_env_names()
    for name, svc in (compose.get("services") or {}).items():
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(ROOT, ctx, dockerfile)):
                problems.append(f"{name}: builds {os.path.join(ctx, dockerfile)}, which does not exist")
            env = svc.get("environment") or {}
            for key in env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]:
                if key not in env_names:
                    problems.append(f"{name}: environment {key} is not a setting hotline reads")
        for v in svc.get("volumes") or []:
            if isinstance(v, str):
                source = v.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            else:
                source, kind = v.get("source", ""), v.get("type", "volume")
            if kind == "bind":
                mounted.append((name, source))
            elif kind == "volume" and source and source not in named:
                problems.append(f"{name}: volume {source} is not declared under `volumes`")
        for ef in ([svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file") or []):
            p = ef if isinstance(ef, str) else ef.get("path")
            required = True if isinstance(ef, str) else ef.get("required", True)
            if required:
                mounted.append((name, p))
    for section in ("configs", "secrets"):
        for cname, c in (compose.get(section) or {}).items():
            if isinstance(c, dict) and c.get("file"):
                mounted.append((f"{section}.{cname}", c["file"]))
    for owner, source in mounted:
        full = os.path.normpath(os.path.join(ROOT, source))
        if source.startswith(("/", "~")):
            problems.append(f"{owner}: mounts {source}, outside the repository")
        elif not os.path.exists(full):
            problems.append(f"{owner}: mounts {source}, which does not exist in the repository")
    for p in problems:
        fail(where, p)
    if not problems:
        ok(where, f"{len(mounted)} mounted files exist; volumes declared; settings known")
    return compose


def check_monitoring_files(compose):
    if compose is None:
        return
    # Prometheus: its configuration parses and loads the rules file compose mounts.
    prom = os.path.join(ROOT, "deploy", "compose", "prometheus.yml")
    where = rel(prom)
    try:
        cfg = load_yaml_docs(prom)[0]
        jobs = [j.get("job_name") for j in cfg.get("scrape_configs") or []]
        rule_files = cfg.get("rule_files") or []
        svc = (compose.get("services") or {}).get("prometheus") or {}
        targets = [str(v).split(":")[1] for v in svc.get("volumes") or [] if isinstance(v, str) and ":" in v]
        covered = [t for t in targets if t.startswith("/etc/prometheus/rules")]
        problems = []
        if "hotline" not in jobs:
            problems.append("no `hotline` scrape job")
        if not rule_files or not covered:
            problems.append("the alert rules are not mounted and loaded")
        for p in problems:
            fail(where, p)
        if not problems:
            ok(where, f"scrape jobs {jobs}, rule files {rule_files}")
    except (OSError, yaml.YAMLError, IndexError, AttributeError) as e:
        fail(where, f"cannot be read: {e}")
    rules = os.path.join(ROOT, "deploy", "prometheus", "rules.yml")
    if os.path.exists(rules):
        try:
            groups = load_yaml_docs(rules)[0].get("groups")
            if not isinstance(groups, list) or not groups:
                fail(rel(rules), "no rule `groups`")
            else:
                ok(rel(rules), f"{len(groups)} rule groups parse (promtool checks and tests them in tests/api/deploy.rs)")
        except (yaml.YAMLError, IndexError, AttributeError) as e:
            fail(rel(rules), f"does not parse: {e}")
    # Grafana: provisioning parses; the dashboard's `datasource` variable can pick the
    # provisioned data source.
    prov = os.path.join(ROOT, "deploy", "compose", "grafana", "provisioning")
    ds_types = set()
    for sub, key in (("datasources", "datasources"), ("dashboards", "providers")):
        d = os.path.join(prov, sub)
        for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            p = os.path.join(d, f)
            try:
                items = load_yaml_docs(p)[0].get(key) or []
                if not items:
                    fail(rel(p), f"no {key}")
                    continue
                if key == "datasources":
                    ds_types |= {i.get("type") for i in items}
                ok(rel(p), f"{len(items)} {key}")
            except (yaml.YAMLError, IndexError, AttributeError) as e:
                fail(rel(p), f"does not parse: {e}")
    dash = os.path.join(ROOT, "deploy", "grafana", "hotline.json")
    if os.path.exists(dash):
        try:
            with open(dash, encoding="utf-8") as f:
                board = json.load(f)
            var = next(
                (v for v in (board.get("templating") or {}).get("list") or []
                 if v.get("name") == "datasource"),
                None,
            )
            if var is None or var.get("type") != "datasource":
                fail(rel(dash), "no template variable `datasource` of type datasource")
            elif var.get("query") not in ds_types:
                fail(rel(dash), f"`datasource` wants {var.get('query')!r}, provisioned: {sorted(ds_types)}")
            else:
                ok(rel(dash), "its `datasource` variable matches the provisioned data source")
        except (OSError, ValueError, AttributeError) as e:
            fail(rel(dash), f"does not parse: {e}")


def main():
    os.chdir(ROOT)
    print(f"== Kubernetes manifests ({K8S_DIR}), Kubernetes {', '.join(K8S_VERSIONS)}")
    files = k8s_manifests()
    validate_k8s(files)
    check_kustomization(files)
    check_k8s_consistency(files)
    print("== Dockerfile")
    check_dockerfile()
    print("== docker-compose.yml and what it mounts")
    compose = check_compose()
    check_monitoring_files(compose)
    print()
    if failures:
        print(f"check-deploy: {len(failures)} failed, {passed} passed:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"check-deploy: all {passed} checks passed")
    print("not checked: the image is not built and compose is not run (no container engine);")
    print("the Prometheus rules and the Grafana dashboard are evaluated by the test suite")
    print("(tests/api/deploy.rs: promtool, and the metrics of a fresh instance), not here.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
