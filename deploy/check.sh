#!/usr/bin/env bash
# Checks the deployment assets under deploy/ without Docker: that every
# JSON and YAML file parses, that compose.yaml, the Dockerfile, the
# provisioning files and the systemd unit agree with each other, and that
# every dashboard query is listed in grafana/queries.txt and uses only the
# broker's metric names. Uses promtool too when it is on the PATH.
#
#   bash deploy/check.sh
#
# Exits non-zero at the first problem, with one line naming the file.
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$deploy"

fail() {
    echo "check.sh: $*" >&2
    exit 1
}

command -v python3 >/dev/null || fail "python3 is required"

# JSON: every file, dashboards or not.
json_count=0
while IFS= read -r -d '' file; do
    python3 -m json.tool "$file" >/dev/null 2>&1 || fail "${file#./}: not valid JSON"
    json_count=$((json_count + 1))
done < <(find . -name '*.json' -print0)
echo "ok: $json_count JSON files parse"

# YAML needs PyYAML, which Python does not ship; without it the YAML files
# are not parsed and the compose checks fall back to reading lines.
if python3 -c 'import yaml' 2>/dev/null; then
    have_yaml=1
    echo "note: PyYAML $(python3 -c 'import yaml; print(yaml.__version__)') found; YAML files are parsed"
else
    have_yaml=0
    echo "note: PyYAML is not importable (apt-get install python3-yaml); YAML files are not parsed"
fi

python3 - "$have_yaml" <<'PYTHON'
import json
import os
import re
import sys

HAVE_YAML = sys.argv[1] == "1"
if HAVE_YAML:
    import yaml


def fail(path, message):
    print(f"check.sh: {path}: {message}", file=sys.stderr)
    sys.exit(1)


def ok(message):
    print(f"ok: {message}")


def files(suffixes):
    found = []
    for root, dirs, names in os.walk("."):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(suffixes):
                found.append(os.path.relpath(os.path.join(root, name)))
    return found


# --- YAML ---------------------------------------------------------------------

yaml_docs = {}
if HAVE_YAML:
    for path in files((".yaml", ".yml")):
        try:
            with open(path) as f:
                yaml_docs[path] = yaml.safe_load(f)
        except yaml.YAMLError as error:
            fail(path, f"not valid YAML: {str(error).splitlines()[0]}")
        if not isinstance(yaml_docs[path], dict):
            fail(path, "expected a mapping at the top level")
    ok(f"{len(yaml_docs)} YAML files parse")

# --- config keys, for SAVA_<SECTION>__<KEY> variables ------------------------

CONFIG = "config/sava.toml"
config_keys = None
try:
    import tomllib
except ModuleNotFoundError:
    print("note: tomllib needs Python 3.11; SAVA_* variables are not checked")
else:
    try:
        with open(CONFIG, "rb") as f:
            config = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as error:
        fail(CONFIG, f"cannot read it: {error}")
    config_keys = {(section, key) for section, table in config.items() for key in table}
    # Sections of the telemetry work, not in the example config yet.
    config_keys |= {("telemetry", "otlp_endpoint"), ("telemetry", "service_name"),
                    ("telemetry", "sampling_ratio"), ("metrics", "per_topic")}


def check_sava_variable(path, name):
    if config_keys is None or not name.startswith("SAVA_"):
        return
    match = re.fullmatch(r"SAVA_([A-Z0-9_]+?)__([A-Z0-9_]+)", name)
    if not match:
        fail(path, f"{name} is not of the form SAVA_<SECTION>__<KEY>")
    section, key = match.group(1).lower(), match.group(2).lower()
    if (section, key) not in config_keys:
        fail(path, f"{name} names no config key [{section}] {key} (see {CONFIG})")


drain_timeout = None
if config_keys is not None:
    drain_timeout = config.get("cluster", {}).get("drain_timeout_secs")

# --- Dockerfile -----------------------------------------------------------------

DOCKERFILE = "docker/Dockerfile"
try:
    dockerfile = open(DOCKERFILE).read()
except OSError:
    fail(DOCKERFILE, "missing")
stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.M | re.I))
for stage in ("runtime", "runtime-fdb"):
    if stage not in stages:
        fail(DOCKERFILE, f"no stage named {stage}")
for needle, what in ((r"^EXPOSE\s+6650\s+50051\s+9040\s*$", "EXPOSE 6650 50051 9040"),
                     (r"^HEALTHCHECK\s.*readyz", "a HEALTHCHECK on /readyz"),
                     (r"^VOLUME\s+/var/lib/sava\s*$", "VOLUME /var/lib/sava"),
                     (r"^USER\s+sava\s*$", "USER sava"),
                     (r"--features\s+sava-broker/foundationdb", "the foundationdb build")):
    if not re.search(needle, dockerfile, re.M | re.S):
        fail(DOCKERFILE, f"lacks {what}")
if not os.path.exists(DOCKERFILE + ".dockerignore"):
    fail(DOCKERFILE + ".dockerignore", "missing: the build context would include target/")
ok(f"{DOCKERFILE} has its stages, ports, health check and user")

# --- compose.yaml ----------------------------------------------------------------

COMPOSE = "compose/compose.yaml"
COMPOSE_DIR = os.path.dirname(COMPOSE)
SERVICES = {"broker-1", "broker-2", "broker-3", "minio", "minio-init", "fdb", "fdb-init",
            "otel-collector", "jaeger", "prometheus", "grafana"}
try:
    compose_text = open(COMPOSE).read()
except OSError:
    fail(COMPOSE, "missing")

if HAVE_YAML:
    compose = yaml_docs[COMPOSE]
    services = compose.get("services") or {}
    mounts = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            target = volume.split(":")[1] if isinstance(volume, str) else volume.get("target", "")
            mounts.append((name, source, target))
            if not source.startswith((".", "/")) and source not in (compose.get("volumes") or {}):
                fail(COMPOSE, f"service {name} mounts volume {source}, which is not declared")
        build = service.get("build")
        if build:
            context = os.path.normpath(os.path.join(COMPOSE_DIR, build.get("context", ".")))
            dockerfile_path = os.path.normpath(os.path.join(context, build.get("dockerfile", "Dockerfile")))
            if os.path.realpath(dockerfile_path) != os.path.realpath(DOCKERFILE):
                fail(COMPOSE, f"service {name} builds {dockerfile_path}, not {DOCKERFILE}")
            if build.get("target") and build["target"] not in stages:
                fail(COMPOSE, f"service {name} builds target {build['target']}, not a stage of {DOCKERFILE}")
        environment = service.get("environment") or {}
        names = environment.keys() if isinstance(environment, dict) else \
            [entry.split("=")[0] for entry in environment]
        for variable in names:
            check_sava_variable(COMPOSE, variable)
        if name.startswith("broker-"):
            if service.get("build", {}).get("target") != "runtime-fdb":
                fail(COMPOSE, f"service {name} must build the runtime-fdb target")
            if "SAVA_BROKER__ADVERTISED_URL" not in environment:
                fail(COMPOSE, f"service {name} sets no advertised URL")
    advertised = [services[b]["environment"]["SAVA_BROKER__ADVERTISED_URL"]
                  for b in sorted(services) if b.startswith("broker-")]
    if len(set(advertised)) != len(advertised):
        fail(COMPOSE, "two brokers advertise the same URL")
else:
    block = compose_text.split("\nservices:\n", 1)
    if len(block) != 2:
        fail(COMPOSE, "no services: section")
    services = dict.fromkeys(re.findall(r"^  ([a-z0-9][a-z0-9_-]*):\s*$", block[1].split("\nvolumes:\n")[0], re.M))
    mounts = [("?", source, target) for source, target in
              re.findall(r"^\s*-\s+(\.{1,2}/[^:\s]+):([^:\s]+)", compose_text, re.M)]
    for variable in re.findall(r"^\s+(SAVA_[A-Z0-9_]+):", compose_text, re.M):
        check_sava_variable(COMPOSE, variable)

missing = SERVICES - set(services)
if missing:
    fail(COMPOSE, f"lacks the services {', '.join(sorted(missing))}")
for name, source, _ in mounts:
    if source.startswith("."):
        resolved = os.path.normpath(os.path.join(COMPOSE_DIR, source))
        if not os.path.exists(resolved):
            fail(COMPOSE, f"service {name} mounts {source}, which does not exist ({resolved})")
ok(f"{COMPOSE} has its {len(SERVICES)} services, and every file it mounts exists")

# --- Prometheus and Grafana provisioning ---------------------------------------------

PROMETHEUS = "compose/prometheus.yml"
if HAVE_YAML:
    targets = set()
    for job in yaml_docs[PROMETHEUS].get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            targets.update(static.get("targets") or [])
    for broker in sorted(s for s in services if s.startswith("broker-")):
        if f"{broker}:9040" not in targets:
            fail(PROMETHEUS, f"does not scrape {broker}:9040")
    ok(f"{PROMETHEUS} scrapes every broker")

DATASOURCES = "compose/grafana/provisioning/datasources"
DASHBOARD_PROVIDERS = "compose/grafana/provisioning/dashboards"
for directory in (DATASOURCES, DASHBOARD_PROVIDERS):
    if not any(n.endswith((".yaml", ".yml")) for n in os.listdir(directory)):
        fail(directory, "holds no provisioning file")
if HAVE_YAML:
    sources = [s for path, doc in yaml_docs.items() if path.startswith(DATASOURCES)
               for s in doc.get("datasources") or []]
    if not any(s.get("uid") == "prometheus" and s.get("type") == "prometheus" for s in sources):
        fail(DATASOURCES, "declares no prometheus data source with uid \"prometheus\"")
    paths = [p.get("options", {}).get("path") for path, doc in yaml_docs.items()
             if path.startswith(DASHBOARD_PROVIDERS) for p in doc.get("providers") or []]
    dashboard_mounts = {t for _, s, t in mounts if os.path.normpath(os.path.join(COMPOSE_DIR, s))
                        == os.path.normpath("grafana/dashboards")}
    if not set(paths) & dashboard_mounts:
        fail(DASHBOARD_PROVIDERS, f"reads {paths}, where compose.yaml mounts no dashboards")
    ok("Grafana provisioning declares uid \"prometheus\" and reads the mounted dashboards")

# --- dashboards and queries.txt ----------------------------------------------------

QUERIES = "grafana/queries.txt"
COUNTERS = ["sava_topic_messages_in_total", "sava_topic_bytes_in_total",
            "sava_topic_messages_out_total", "sava_topic_bytes_out_total",
            "sava_subscription_redelivered_total", "sava_subscription_dead_lettered_total",
            "sava_offload_segments_total", "sava_offload_uploaded_bytes_total",
            "sava_offload_upload_errors_total", "sava_object_store_errors_total",
            "sava_tier_cache_hits_total", "sava_tier_cache_misses_total",
            "sava_metadata_conflicts_total", "sava_lookups_total"]
GAUGES = ["sava_topic_producers", "sava_topic_consumers", "sava_topic_subscriptions",
          "sava_subscription_backlog_messages", "sava_subscription_backlog_bytes",
          "sava_subscription_oldest_unacked_age_seconds", "sava_broker_topics_loaded",
          "sava_broker_topics_owned", "sava_broker_leader", "sava_broker_lease_holds",
          "sava_connected_producers", "sava_connected_consumers", "sava_offload_lag_messages",
          "sava_topic_local_bytes", "sava_topic_spare_bytes"]
HISTOGRAMS = ["sava_group_commit_batch_bytes", "sava_fsync_duration_seconds",
              "sava_object_store_request_duration_seconds",
              "sava_metadata_transaction_duration_seconds"]
METRICS = set(COUNTERS) | set(GAUGES) | {
    f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
# PromQL words that look like metric names but are not.
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "irate",
                "increase", "histogram_quantile", "or", "and", "unless", "on", "ignoring",
                "group_left", "group_right", "le", "instance", "topic", "subscription",
                "operation", "result", "job", "clamp_min", "bool", "offset", "topk",
                "bottomk", "label_values"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}


def check_expression(path, expr):
    balance = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for char in re.sub(r'"[^"]*"', '""', expr):
        if char in balance:
            stack.append(balance[char])
        elif char in balance.values():
            if not stack or stack.pop() != char:
                fail(path, f"unbalanced brackets in: {expr}")
    if stack or expr.count('"') % 2:
        fail(path, f"unbalanced brackets or quotes in: {expr}")
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    for name in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_strings):
        if name in PROMQL_WORDS or name.startswith("__"):
            continue
        if name.startswith("sava_"):
            if name not in METRICS:
                fail(path, f"{name} is not one of the broker's metric names: {expr}")
        elif not re.fullmatch(r"\d+[smhdwy]|e\d*|Inf|NaN", name):
            fail(path, f"unexpected word {name} in: {expr}")


try:
    lines = open(QUERIES).read().split("\n")
except OSError:
    fail(QUERIES, "missing")
if lines and lines[-1] == "":
    lines.pop()
listed = set()
for number, line in enumerate(lines, 1):
    if not line.strip():
        fail(QUERIES, f"line {number} is empty")
    if "$" in line:
        fail(QUERIES, f"line {number} still holds a template variable: {line}")
    if line in listed:
        fail(QUERIES, f"line {number} repeats an earlier line: {line}")
    check_expression(QUERIES, line)
    listed.add(line)


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


used = set()
uids = {}
dashboards = files((".json",))
dashboards = [d for d in dashboards if d.startswith("grafana/dashboards/")]
if len(dashboards) < 3:
    fail("grafana/dashboards", f"expected sava-overview, sava-topics and sava-storage, found {dashboards}")
for path in dashboards:
    with open(path) as f:
        board = json.load(f)
    for field in ("uid", "title"):
        if not isinstance(board.get(field), str) or not board[field]:
            fail(path, f"has no {field}")
    if board["uid"] in uids:
        fail(path, f"uid {board['uid']} is also the uid of {uids[board['uid']]}")
    uids[board["uid"]] = path
    if board.get("schemaVersion") != 39:
        fail(path, f"schemaVersion is {board.get('schemaVersion')}, expected 39")
    if not board.get("panels"):
        fail(path, "has no panels")
    variables = {v.get("name") for v in board.get("templating", {}).get("list", [])}
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and variable.get("datasource", {}).get("uid") != "prometheus":
            fail(path, f"variable {variable.get('name')} does not use the data source uid \"prometheus\"")
    ids = set()
    for panel in all_panels(board["panels"]):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            fail(path, f"panel id {panel.get('id')} is used twice")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            fail(path, f"panel \"{title}\" has no gridPos")
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") != "prometheus":
            fail(path, f"panel \"{title}\" does not use the data source uid \"prometheus\"")
        targets = panel.get("targets") or []
        if not targets:
            fail(path, f"panel \"{title}\" has no targets")
        for target in targets:
            expr = target.get("expr", "")
            if not expr:
                fail(path, f"panel \"{title}\" has a target without expr")
            if target.get("datasource", {}).get("uid", "prometheus") != "prometheus":
                fail(path, f"panel \"{title}\" has a target on another data source")
            for name in re.findall(r"\$\{?(\w+)", expr):
                if name not in variables and name not in BUILTIN_VARIABLES:
                    fail(path, f"panel \"{title}\" uses ${name}, which the dashboard does not define")
            query = expr.replace("$topic", ".+").replace("$__rate_interval", "1m")
            if query not in listed:
                fail(path, f"panel \"{title}\": {query} is not in {QUERIES}")
            check_expression(path, expr.replace("$__rate_interval", "1m"))
            used.add(query)
ok(f"{len(dashboards)} dashboards have uid, title and panels; every query is in {QUERIES}")

unused = [line for line in lines if line not in used]
if unused:
    fail(QUERIES, f"lists a query no dashboard uses: {unused[0]}")
ok(f"{QUERIES}: {len(lines)} queries, each used, only Sava's metric names")

# --- systemd ------------------------------------------------------------------

UNIT = "systemd/sava-broker.service"
try:
    unit_lines = [l.strip() for l in open(UNIT) if l.strip() and not l.lstrip().startswith(("#", ";"))]
except OSError:
    fail(UNIT, "missing")
section, directives = None, {}
for line in unit_lines:
    if line.startswith("["):
        section = line.strip("[]")
        continue
    if "=" not in line:
        fail(UNIT, f"not a directive: {line}")
    key, value = line.split("=", 1)
    directives.setdefault((section, key.strip()), []).append(value.strip())
required = {
    "User": "sava",
    "EnvironmentFile": "-/etc/sava/sava.env",
    "ExecStart": "/usr/local/bin/sava-broker --config /etc/sava/sava.toml",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
}
for key, value in required.items():
    if value not in directives.get(("Service", key), []):
        fail(UNIT, f"[Service] lacks {key}={value}")
for key in ("Type", "LimitNOFILE", "TimeoutStopSec", "ProtectSystem"):
    if ("Service", key) not in directives:
        fail(UNIT, f"[Service] lacks {key}=")
if directives[("Service", "Type")][-1] not in ("exec", "simple"):
    fail(UNIT, "Type= should be exec or simple")
stop = directives[("Service", "TimeoutStopSec")][-1]
if not stop.isdigit():
    fail(UNIT, f"TimeoutStopSec={stop}: expected plain seconds")
if drain_timeout is not None and int(stop) < drain_timeout + 10:
    fail(UNIT, f"TimeoutStopSec={stop} leaves no room for cluster.drain_timeout_secs={drain_timeout}")
if ("Install", "WantedBy") not in directives:
    fail(UNIT, "[Install] lacks WantedBy=")
ok(f"{UNIT} has its directives; the stop timeout covers the drain")

ENV_EXAMPLE = "systemd/sava.env.example"
try:
    env_lines = open(ENV_EXAMPLE).read().splitlines()
except OSError:
    fail(ENV_EXAMPLE, "missing")
for number, line in enumerate(env_lines, 1):
    stripped = line.strip()
    if not stripped:
        continue
    assignment = re.fullmatch(r"#?([A-Za-z_][A-Za-z0-9_]*)=(.*)", stripped)
    if stripped.startswith("#") and not assignment:
        continue
    if not assignment:
        fail(ENV_EXAMPLE, f"line {number} is neither a comment nor KEY=value: {line}")
    check_sava_variable(ENV_EXAMPLE, assignment.group(1))
ok(f"{ENV_EXAMPLE} holds KEY=value lines naming real config keys")
PYTHON

# promtool: Debian's prometheus package. Checks the scrape config, and the
# PromQL syntax of every query by loading them as recording rules.
if command -v promtool >/dev/null; then
    promtool check config compose/prometheus.yml >/dev/null 2>&1 \
        || fail "compose/prometheus.yml: promtool check config fails ($(promtool check config compose/prometheus.yml 2>&1 | tail -n 1))"
    rules=$(mktemp --suffix=.yml)
    trap 'rm -f "$rules"' EXIT
    python3 - grafana/queries.txt >"$rules" <<'PYTHON'
import json
import sys

print("groups:\n  - name: dashboard-queries\n    rules:")
for number, line in enumerate(open(sys.argv[1]).read().splitlines(), 1):
    print(f"      - record: sava:dashboard_query:{number}")
    print(f"        expr: {json.dumps(line)}")
PYTHON
    promtool check rules "$rules" >/dev/null 2>&1 \
        || fail "grafana/queries.txt: promtool rejects a query ($(promtool check rules "$rules" 2>&1 | grep -v '^Checking' | head -n 1))"
    echo "ok: promtool accepts compose/prometheus.yml and every query"
else
    echo "note: promtool is not on the PATH (Debian: apt-get install prometheus); prometheus.yml and PromQL syntax not checked by it"
fi

echo "check.sh: all checks passed"
