"""Static invariants of the deployment: Terraform (infra/) and docker-compose.yml.

Every check parses the real files (python-hcl2, PyYAML) and resolves the values Terraform
would use for the example environment (terraform.tfvars.example, else variable defaults).
Each check is a plain function taking the repository root, so the self-tests at the bottom
can run it against a mutated copy and prove that it fails when the invariant is broken.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from hclutil import META_KEYS, Dir, Environment, Unresolvable, first_block, label, literal, references

# Facts of the server (the contract the deployment is built against). The server's built-in
# defaults; config/base.toml and config/production.toml may override them (read below).
DEFAULT_PING_INTERVAL_MS = 25_000  # server.ping_interval_ms
DEFAULT_SHUTDOWN_TIMEOUT_MS = 25_000  # server.shutdown_timeout_ms: the drain after SIGTERM
DEFAULT_ECS_STOP_POLL_MS = 2_000  # server.ecs_stop_poll_ms: how soon a node sees its task stopping
FARGATE_MAX_STOP_TIMEOUT_S = 120
APP_PORT = 8080
METRICS_PORT = 9090

ENV_DIR = Path("infra/environments/example")
MODULES_DIR = Path("infra/modules")


def server_setting_s(root: Path, key: str, default_ms: int) -> float:
    """A [server] setting in seconds as production sees it: default, then config/base.toml,
    then config/production.toml (the image runs with CHATTY_ENVIRONMENT=production)."""
    value = default_ms
    for name in ("base.toml", "production.toml"):
        path = root / "config" / name
        if path.exists():
            value = tomllib.loads(path.read_text(encoding="utf-8")).get("server", {}).get(key, value)
    return value / 1000


def ping_interval_s(root: Path) -> float:
    return server_setting_s(root, "ping_interval_ms", DEFAULT_PING_INTERVAL_MS)


def drain_s(root: Path) -> float:
    return server_setting_s(root, "shutdown_timeout_ms", DEFAULT_SHUTDOWN_TIMEOUT_MS)


def _env(root: Path) -> Environment:
    return Environment(root / ENV_DIR)


def _module_holding(env: Environment, rtype: str, rname: str):
    """(module call name, Scope) of the module that declares resource rtype.rname."""
    found = []
    for mname in env.env.modules:
        mod = env.module_dir(mname)
        if (rtype, rname) in mod.resources:
            found.append(mname)
    assert len(found) == 1, f"expected exactly one module declaring {rtype}.{rname}, found {found}"
    return found[0], env.scope(found[0])


def _resolve(scope, value, what: str):
    try:
        return scope.value(value)
    except Unresolvable as e:
        raise AssertionError(f"{what}: cannot resolve to a literal ({e})") from None


# ----------------------------------------------------------------------------------------------
# Load balancer and drain timing
# ----------------------------------------------------------------------------------------------


def alb_idle_timeout(root: Path) -> int:
    env = _env(root)
    _, scope = _module_holding(env, "aws_lb", "this")
    body = scope.module.resource("aws_lb", "this")
    assert "idle_timeout" in body, "aws_lb.this must set idle_timeout (the 60 s default is fine, but be explicit)"
    return _resolve(scope, body["idle_timeout"], "aws_lb.this.idle_timeout")


def deregistration_delay(root: Path) -> int:
    env = _env(root)
    _, scope = _module_holding(env, "aws_lb_target_group", "app")
    body = scope.module.resource("aws_lb_target_group", "app")
    # Terraform's default is 300 s, which would break the invariant: it must be set.
    assert "deregistration_delay" in body, "target group must set deregistration_delay (default 300 s)"
    return int(_resolve(scope, body["deregistration_delay"], "deregistration_delay"))


def container_definition(root: Path):
    env = _env(root)
    _, scope = _module_holding(env, "aws_ecs_task_definition", "this")
    td = scope.module.resource("aws_ecs_task_definition", "this")
    expr = td["container_definitions"]
    m = re.fullmatch(r"\$\{jsonencode\((?:concat\()?\[local\.([A-Za-z0-9_]+)\](?:, local\.[A-Za-z0-9_]+\))?\)\}", expr)
    assert m, f"container_definitions must be jsonencode([local.<name>]) or jsonencode(concat([local.<name>], local.<sidecars>)) for this test to read it, got {expr}"
    raw = scope.module.locals[m.group(1)]
    # merge(local.<literal>, <additions>): the additions (traces' dependsOn) are checked where
    # they are made; the literal is the definition.
    merged = re.match(r"\$\{merge\(local\.([A-Za-z0-9_]+),", raw) if isinstance(raw, str) else None
    if merged:
        raw = scope.module.locals[merged.group(1)]
    assert isinstance(raw, dict), "the container definition local must be an object literal"
    return scope, raw


def ecs_stop_timeout(root: Path) -> int:
    scope, cdef = container_definition(root)
    assert "stopTimeout" in cdef, "container definition must set stopTimeout (ECS default is 30 s)"
    return int(_resolve(scope, cdef["stopTimeout"], "stopTimeout"))


def check_alb_idle_timeout(root: Path) -> None:
    idle, ping = alb_idle_timeout(root), ping_interval_s(root)
    assert idle > ping, f"ALB idle_timeout {idle}s must exceed the {ping:g}s ping interval"


def check_drain_timing(root: Path) -> None:
    delay = deregistration_delay(root)
    stop = ecs_stop_timeout(root)
    assert delay <= stop, f"deregistration_delay {delay}s must be <= ECS stopTimeout {stop}s"
    assert stop <= FARGATE_MAX_STOP_TIMEOUT_S, f"stopTimeout {stop}s exceeds Fargate's {FARGATE_MAX_STOP_TIMEOUT_S}s"
    drain = drain_s(root)
    assert stop > drain, f"stopTimeout {stop}s leaves no room for the {drain:g}s drain"
    # The node starts draining when it sees its task stopping (src/ecs.rs), at the start of the
    # deregistration delay; the ALB ends what is still open when the delay runs out, so the
    # delay must cover seeing it plus the whole drain.
    poll = server_setting_s(root, "ecs_stop_poll_ms", DEFAULT_ECS_STOP_POLL_MS)
    assert poll > 0, "server.ecs_stop_poll_ms must stay on in production"
    assert delay > drain + poll, \
        f"deregistration_delay {delay}s must exceed the {poll:g}s stop poll plus the {drain:g}s drain"


def check_target_group(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_lb_target_group", "app")
    tg = scope.module.resource("aws_lb_target_group", "app")
    assert _resolve(scope, tg["target_type"], "target_type") == "ip", "Fargate (awsvpc) needs target_type ip"
    assert _resolve(scope, tg["port"], "target group port") == APP_PORT
    hc = first_block(tg, "health_check")
    path = _resolve(scope, hc["path"], "health_check.path")
    assert path == "/readyz", f"health check path must be /readyz (503 while draining), got {path!r}"
    if "matcher" in hc:
        assert _resolve(scope, hc["matcher"], "matcher") == "200"


def check_listeners(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_lb_listener", "https")
    mod = scope.module
    listeners = mod.resources_of("aws_lb_listener")
    by_port = {int(_resolve(scope, b["port"], "listener port")): b for b in listeners.values()}
    assert set(by_port) == {80, 443}, f"expected listeners on 80 and 443 only, got {sorted(by_port)}"

    http_action = first_block(by_port[80], "default_action")
    assert _resolve(scope, http_action["type"], "http action") == "redirect", "port 80 must redirect"
    redirect = first_block(http_action, "redirect")
    assert _resolve(scope, redirect["protocol"], "redirect protocol") == "HTTPS"
    assert str(_resolve(scope, redirect["port"], "redirect port")) == "443"

    https = by_port[443]
    assert _resolve(scope, https["protocol"], "https protocol") == "HTTPS"
    cert = https.get("certificate_arn", "")
    assert re.fullmatch(r"\$\{var\.[a-z_]+\}", cert), "certificate_arn must come from a variable"
    assert _resolve(scope, first_block(https, "default_action")["type"], "https action") == "forward"


# ----------------------------------------------------------------------------------------------
# Data stores, registry
# ----------------------------------------------------------------------------------------------


def check_rds(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_db_instance", "this")
    db = scope.module.resource("aws_db_instance", "this")
    assert _resolve(scope, db.get("storage_encrypted", False), "storage_encrypted") is True, "RDS storage must be encrypted"
    retention = _resolve(scope, db.get("backup_retention_period", 0), "backup_retention_period")
    assert retention >= 1, "automated backups must be on"
    assert _resolve(scope, db.get("publicly_accessible", False), "publicly_accessible") is False
    # multi_az is a variable (per environment), not hard-wired.
    assert re.fullmatch(r"\$\{var\.[a-z_]+\}", str(db.get("multi_az", ""))), "multi_az must come from a variable"


def check_database_roles(root: Path) -> None:
    """Serving tasks connect as the application role with verify-full TLS; only the one-off
    migration task gets the schema owner's URL."""
    outputs = (root / MODULES_DIR / "rds" / "outputs.tf").read_text(encoding="utf-8")
    for name in ("database_url", "migration_database_url"):
        m = re.search(r'output "' + name + r'" \{(.*?)\n\}', outputs, flags=re.S)
        assert m, f"rds module must output {name}"
        assert "local.tls" in m.group(1), f"{name} must use the verify-full TLS parameters"
    tls = re.search(r'tls\s*=\s*"([^"]*)"', outputs)
    assert tls and "sslmode=verify-full" in tls.group(1) and "sslrootcert=" in tls.group(1), \
        "RDS URLs must use sslmode=verify-full with sslrootcert"
    app = re.search(r'output "database_url" \{(.*?)\n\}', outputs, flags=re.S).group(1)
    assert "var.app_username" in app and "var.username" not in app, \
        "the serving URL must name the application role, not the master user"

    rds_vars = (root / MODULES_DIR / "rds" / "variables.tf").read_text(encoding="utf-8")
    ca = re.search(r'variable "ca_bundle_path" \{[^}]*default\s*=\s*"([^"]+)"', rds_vars)
    assert ca, "rds module must declare ca_bundle_path with a default"
    dockerfile = (root / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ADD\b.*global-bundle\.pem\s*\\?\s*\n?\s*" + re.escape(ca.group(1)), dockerfile, flags=re.M), \
        f"the image must carry the RDS CA bundle at {ca.group(1)}"

    scope, cdef = container_definition(root)
    assert "migration_secrets" not in str(cdef.get("secrets", "")), \
        "the serving container must not get the migration (owner) secrets"
    env_vars = scope.module.locals.get("environment", "")
    assert re.search(r'CHATTY__DATABASE__MIGRATE_ON_START\s*=\s*"false"', str(env_vars)) or \
        "CHATTY__DATABASE__MIGRATE_ON_START" in str(env_vars), "serving tasks must not migrate on start"
    mig = scope.module.locals.get("migrate_container_definition")
    assert isinstance(mig, dict), "ecs module must define the migration task's container"
    assert _resolve(scope, mig.get("command"), "command") == ["migrate"], "the migration task must run `chatty migrate`"
    assert "migration_secrets" in str(mig.get("secrets", "")), "the migration task must get the owner's URL"

    env = _env(root)
    ecs_call = env.env.modules.get("ecs", {})
    assert "module.secrets.migration_secrets" in str(ecs_call.get("migration_secrets", "")), \
        "the environment must hand the migration secrets to the ecs module"
    assert "module.secrets.container_secrets" in str(ecs_call.get("secrets", "")), \
        "the serving secrets must be the secrets module's container_secrets"
    secrets_main = (root / MODULES_DIR / "secrets" / "main.tf").read_text(encoding="utf-8")
    assert re.search(r'migration_only\s*=\s*\["migration-database-url"\]', secrets_main), \
        "the owner's URL must be marked migration-only in the secrets module"


def check_metrics_on_aws(root: Path) -> None:
    """On AWS something scrapes every task and evaluates the same alert rules as compose."""
    env = _env(root)
    ecs_call = env.env.modules.get("ecs", {})
    assert "module.prometheus.remote_write_url" in str(ecs_call.get("metrics_remote_write_url", "")), \
        "the ecs module must get the Prometheus workspace's remote-write URL (ADOT sidecar)"
    prom_call = env.env.modules.get("prometheus")
    assert prom_call, "the environment must call the prometheus module"
    rules = str(prom_call.get("rules_file", "")).strip('"')
    assert rules.startswith("${path.root}/") and \
        (root / ENV_DIR / rules.removeprefix("${path.root}/")).resolve() == (root / "grafana" / "alerts.yml").resolve(), \
        "the workspace must load grafana/alerts.yml, the rules compose's Prometheus loads"
    assert "module.alarms.topic_arn" in str(prom_call.get("sns_topic_arn", "")), \
        "Prometheus alerts must notify the alarms SNS topic"
    ecs_main = (root / MODULES_DIR / "ecs" / "main.tf").read_text(encoding="utf-8")
    assert re.search(r'targets\s*=\s*\["127\.0\.0\.1:\$\{var\.metrics_port\}"\]', ecs_main), \
        "the sidecar must scrape chatty's metrics port"
    assert '"aps:RemoteWrite"' in ecs_main and "resource_to_telemetry_conversion" in ecs_main, \
        "the task role must be allowed to remote-write, and series must carry the task's labels"
    alarms_main = (root / MODULES_DIR / "alarms" / "main.tf").read_text(encoding="utf-8")
    assert "alias/aws/sns" not in alarms_main, \
        "CloudWatch and AMP cannot publish to a topic under the AWS-managed SNS key"


XRAY_WRITE_ACTIONS = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "xray:GetSamplingStatisticsSummary",
}
TRACES_ON = "${var.traces_enabled ? 1 : 0}"


def _hcl_code(text: str) -> str:
    """HCL source without comments and descriptions (prose may name what the code must not)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'(?m)^\s*(description|error_message)\s*=\s*".*"$', "", text)
    return re.sub(r"(?m)(^|\s)(#|//).*$", "", text)


def check_traces_on_aws(root: Path) -> None:
    """traces_enabled (default off) adds, and only then: the OTLP receiver and the X-Ray
    exporter to the ADOT sidecar (which then runs also without metrics), chatty's OTLP
    settings pointing at that receiver, a dependsOn that waits for the sidecar to START (never
    to be HEALTHY: chat must not wait on tracing) and the task role's X-Ray permissions."""
    env = _env(root)
    ecs_call = env.env.modules.get("ecs", {})
    assert ecs_call.get("traces_enabled") == "${var.traces_enabled}", "the environment must pass traces_enabled to the ecs module"
    assert ecs_call.get("trace_sample_ratio") == "${var.trace_sample_ratio}", "the environment must pass trace_sample_ratio to the ecs module"
    assert env.env_scope.value(ecs_call["traces_enabled"]) is False, "traces must be off unless an environment turns them on"
    plain = {label(k): v for k, v in (ecs_call.get("environment") or {}).items()}
    assert not any(k.startswith("CHATTY__TELEMETRY__") for k in plain), \
        "set the telemetry variables through traces_enabled, not the plain environment (they would bypass the switch)"

    _, scope = _module_holding(env, "aws_ecs_task_definition", "this")
    mod = scope.module
    for name, default in (("traces_enabled", False), ("trace_sample_ratio", 0.01)):
        assert name in mod.variables, f"ecs module must declare {name}"
        assert literal(mod.variables[name].get("default")) == default, f"ecs {name} must default to {default}"
    validation = str(mod.variables["trace_sample_ratio"].get("validation", ""))
    assert re.search(r">=\s*0\b", validation) and re.search(r"<=\s*1\b", validation), "trace_sample_ratio must be validated to 0..1"
    code = _hcl_code(mod.text)

    # chatty's settings: only in trace_environment, which is empty unless traces are on.
    port = _resolve(scope, mod.locals.get("otlp_http_port"), "local.otlp_http_port")
    trace_env = str(mod.locals.get("trace_environment", ""))
    m = re.fullmatch(r"\$\{var\.traces_enabled \? \{(?P<on>.*)\} : \{\}\}", trace_env, flags=re.S)
    assert m, f"local.trace_environment must be var.traces_enabled ? {{...}} : {{}}, got {trace_env}"
    assert re.search(r'CHATTY__TELEMETRY__OTLP_ENDPOINT = "http://(localhost|127\.0\.0\.1):\$\{local\.otlp_http_port\}"', m["on"]), \
        "chatty must export to the sidecar's OTLP/HTTP receiver on the task's loopback"
    assert re.search(r"CHATTY__TELEMETRY__SAMPLE_RATIO = tostring\(var\.trace_sample_ratio\)", m["on"]), \
        "CHATTY__TELEMETRY__SAMPLE_RATIO must come from trace_sample_ratio"
    assert code.count("CHATTY__TELEMETRY__") == 2, "the telemetry variables must be set in local.trace_environment only"
    assert "local.trace_environment" in str(mod.locals.get("environment", "")), "the container environment must merge local.trace_environment"

    # Start order: START on the sidecar, added only with traces; nothing ever waits for HEALTHY.
    _, cdef = container_definition(root)
    assert "dependsOn" not in cdef, "the container's dependsOn belongs to the traces option (merged in when on)"
    dep = re.fullmatch(r"\$\{merge\(local\.container_definition, var\.traces_enabled \? \{dependsOn = \[(?P<deps>.*)\]\} : \{\}\)\}",
                       str(mod.locals.get("chatty_container", "")), flags=re.S)
    assert dep, "local.chatty_container must be merge(local.container_definition, var.traces_enabled ? {dependsOn = [...]} : {})"
    assert re.fullmatch(r'\{containerName = local\.adot_container_name, condition = "START"\}', dep["deps"]), \
        f"chatty must depend on the sidecar with condition START, got {dep['deps']}"
    assert not re.search(r'condition\s*=\s*"(HEALTHY|SUCCESS|COMPLETE)"', code), \
        "chatty must never wait for the collector to be HEALTHY (or to exit): chat must not wait on tracing"
    assert "local.chatty_container" in str(mod.resource("aws_ecs_task_definition", "this")["container_definitions"])

    # The sidecar: runs for metrics or traces; its traces part is selected by traces_enabled.
    assert mod.locals.get("adot_enabled") == "${local.metrics_enabled || var.traces_enabled}", \
        "the ADOT sidecar must run when metrics or traces are on"
    assert str(mod.locals.get("sidecars", "")).startswith("${local.adot_enabled ? ["), "local.sidecars must be gated on local.adot_enabled"
    assert mod.locals.get("adot_signals") == {"metrics": "${local.metrics_enabled}", "traces": "${var.traces_enabled}"}, \
        "local.adot_signals must switch the metrics part on metrics and the traces part on traces_enabled"
    assert re.search(r"\{metrics = local\.adot_metrics, traces = local\.adot_traces\} : part if local\.adot_signals\[name\]",
                     str(mod.locals.get("adot_parts", ""))), "local.adot_parts must keep the parts whose signal is on"
    traces = mod.locals.get("adot_traces")
    assert isinstance(traces, dict), "local.adot_traces must be an object literal"
    endpoint = literal(traces["receivers"]["otlp"]["protocols"]["http"]["endpoint"].replace("${local.otlp_http_port}", str(port)))
    assert re.fullmatch(rf"(127\.0\.0\.1|localhost|0\.0\.0\.0):{port}", endpoint), f"otlp http receiver must listen on port {port}, got {endpoint}"
    assert "awsxray" in traces["exporters"], "traces must be exported to X-Ray (awsxray)"
    pipeline = {k: literal(v) for k, v in traces["pipelines"]["traces"].items()}
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["awsxray"], f"traces pipeline: otlp -> awsxray, got {pipeline}"
    assert "batch" in pipeline["processors"], "the traces pipeline must batch"
    metrics = str(mod.locals.get("adot_metrics", ""))
    assert "otlp" not in metrics and "awsxray" not in metrics, "the metrics part must not carry the traces components"
    assert code.count("awsxray") == len(re.findall(r"awsxray", str(traces))), "awsxray must appear in local.adot_traces only"

    # X-Ray permissions: only with traces on.
    xray_docs = []
    for (kind, name), body in list(mod.data.items()) + list(mod.resources.items()):
        if "xray:" in str(body):
            assert body.get("count") == TRACES_ON, f"{kind}.{name} grants X-Ray access: its count must be {TRACES_ON}"
            xray_docs.append(name)
            actions = {literal(a) for s in body.get("statement", []) for a in s.get("actions", [])}
            missing = XRAY_WRITE_ACTIONS - actions
            assert not missing, f"{kind}.{name} lacks {sorted(missing)}"
    assert xray_docs, "the task role needs the X-Ray write permissions when traces are on"
    attached = [(n, b) for n, b in mod.resources_of("aws_iam_role_policy").items()
                if any(f"data.aws_iam_policy_document.{d}" in str(b.get("policy", "")) for d in xray_docs)]
    assert attached, "the X-Ray policy document must be attached to a role"
    for n, b in attached:
        assert b.get("role") == "${aws_iam_role.task.id}", f"aws_iam_role_policy.{n}: X-Ray access belongs to the task role"
        assert b.get("count") == TRACES_ON, f"aws_iam_role_policy.{n} must exist only with traces on"


def check_provider_lock(root: Path) -> None:
    """Every environment pins its providers' builds (supply chain): a committed lock file with
    the aws provider's version and checksum."""
    for env_dir in sorted((root / "infra" / "environments").iterdir()):
        if not env_dir.is_dir():
            continue
        lock = env_dir / ".terraform.lock.hcl"
        assert lock.exists(), f"{env_dir.name}: commit .terraform.lock.hcl"
        text = lock.read_text(encoding="utf-8")
        m = re.search(r'provider "registry\.terraform\.io/hashicorp/aws" \{[^}]*version\s*=\s*"([\d.]+)"[^}]*hashes\s*=\s*\[\s*"h1:', text, flags=re.S)
        assert m, f"{env_dir.name}: the lock file must pin hashicorp/aws with a checksum"
        assert m.group(1).startswith("5."), f"{env_dir.name}: aws {m.group(1)} is outside versions.tf's 5.x"


def check_redis(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_elasticache_replication_group", "this")
    rg = scope.module.resource("aws_elasticache_replication_group", "this")
    transit = _resolve(scope, rg.get("transit_encryption_enabled", False), "transit_encryption_enabled")
    assert transit is True, "Redis transit_encryption_enabled must be true"
    at_rest = _resolve(scope, rg.get("at_rest_encryption_enabled", False), "at_rest_encryption_enabled")
    assert at_rest is True, "Redis at_rest_encryption_enabled must be true"
    assert rg.get("auth_token"), "Redis must use an auth_token"


def check_ecr(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_ecr_repository", "this")
    repo = scope.module.resource("aws_ecr_repository", "this")
    scanning = first_block(repo, "image_scanning_configuration")
    assert _resolve(scope, scanning["scan_on_push"], "scan_on_push") is True


# ----------------------------------------------------------------------------------------------
# Security groups
# ----------------------------------------------------------------------------------------------


def _rules(mod: Dir, rtype: str):
    for name, body in mod.resources_of(rtype).items():
        yield name, body


def check_security_groups(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_security_group", "tasks")
    mod = scope.module

    def sg_of(body):
        m = re.fullmatch(r"\$\{aws_security_group\.([a-z_]+)\.id\}", body["security_group_id"])
        assert m, f"rule must attach to a security group of this module: {body['security_group_id']}"
        return m.group(1)

    def ports(body):
        return (_resolve(scope, body["from_port"], "from_port"), _resolve(scope, body["to_port"], "to_port"))

    ingress = [(n, b) for n, b in _rules(mod, "aws_vpc_security_group_ingress_rule")]
    assert not mod.resources_of("aws_security_group_rule"), "use the per-rule resources only"
    for sg_type in ("aws_security_group",):
        for name, body in mod.resources_of(sg_type).items():
            assert "ingress" not in body and "egress" not in body, f"{name}: inline rules hide the rule set"

    tasks_in = [b for _, b in ingress if sg_of(b) == "tasks"]
    assert tasks_in, "tasks need ingress rules"
    for b in tasks_in:
        p = ports(b)
        if p == (APP_PORT, APP_PORT):
            assert b.get("referenced_security_group_id") == "${aws_security_group.alb.id}", \
                "the public port of the tasks must be open to the ALB security group only"
            assert "cidr_ipv4" not in b
        elif p == (METRICS_PORT, METRICS_PORT):
            assert b.get("cidr_ipv4") == "${var.vpc_cidr}", "the metrics port must be open to the VPC CIDR only"
        else:
            raise AssertionError(f"unexpected ingress to tasks on ports {p}")

    for store, port in (("rds", 5432), ("redis", 6379)):
        rules = [b for _, b in ingress if sg_of(b) == store]
        assert rules, f"{store} needs an ingress rule from the tasks"
        for b in rules:
            assert ports(b) == (port, port), f"{store} ingress must be on {port} only"
            assert b.get("referenced_security_group_id") == "${aws_security_group.tasks.id}", \
                f"{store} must accept the tasks' security group only"
        egress = [b for _, b in _rules(mod, "aws_vpc_security_group_egress_rule") if sg_of(b) == store]
        assert not egress, f"{store} needs no egress rules"

    for name, b in ingress:
        if sg_of(b) != "alb":
            cidr = b.get("cidr_ipv4")
            assert cidr not in ('"0.0.0.0/0"',), f"{name}: only the ALB may be open to the internet"

    # The security module must be given the VPC's real CIDR.
    sec_inputs = env.env.modules["security"]
    assert sec_inputs.get("vpc_cidr") == "${module.network.vpc_cidr}", "security.vpc_cidr must be the VPC's CIDR"


# ----------------------------------------------------------------------------------------------
# ECS task definition
# ----------------------------------------------------------------------------------------------


def check_task_definition(root: Path) -> None:
    scope, cdef = container_definition(root)
    hc = cdef.get("healthCheck")
    assert hc, "container healthCheck missing"
    cmd = _resolve(scope, hc["command"], "healthCheck.command")
    assert cmd == ["CMD", "chatty", "healthcheck"], f"container health check must run `chatty healthcheck`, got {cmd}"

    log = cdef.get("logConfiguration", {})
    assert literal(log.get("logDriver")) == "awslogs", "logs must go to CloudWatch through awslogs"

    secrets_expr = cdef.get("secrets", "")
    assert "valueFrom" in secrets_expr, "secrets must be injected with valueFrom (Secrets Manager / SSM)"

    ports = [_resolve(scope, p["containerPort"], "containerPort") for p in cdef.get("portMappings", [])]
    assert sorted(ports) == [APP_PORT, METRICS_PORT], f"container ports must be {APP_PORT} and {METRICS_PORT}, got {ports}"

    # Nothing secret in plain environment variables of the environment's module call.
    env = _env(root)
    for mname, body in env.env.modules.items():
        plain = body.get("environment")
        if isinstance(plain, dict):
            for key in plain:
                k = label(key)
                assert not re.search(r"SECRET|API_KEY|PASSWORD|DATABASE__URL|REDIS__URL", k), \
                    f"module {mname}: {k} must come from Secrets Manager, not plain environment"

    svc_mod = scope.module
    svc = svc_mod.resource("aws_ecs_service", "this")
    lb = first_block(svc, "load_balancer")
    assert _resolve(scope, lb["container_port"], "container_port") == APP_PORT
    net = first_block(svc, "network_configuration")
    assert _resolve(scope, net.get("assign_public_ip", False), "assign_public_ip") is False


def check_autoscaling(root: Path) -> None:
    env = _env(root)
    _, scope = _module_holding(env, "aws_appautoscaling_target", "this")
    policies = scope.module.resources_of("aws_appautoscaling_policy")
    metrics = set()
    for body in policies.values():
        cfg = first_block(body, "target_tracking_scaling_policy_configuration")
        if "predefined_metric_specification" in cfg:
            metrics.add(literal(first_block(cfg, "predefined_metric_specification")["predefined_metric_type"]))
        if "customized_metric_specification" in cfg:
            text = str(cfg["customized_metric_specification"])
            if "ActiveConnectionCount" in text:
                metrics.add("ActiveConnectionCount")
    for needed in ("ECSServiceAverageCPUUtilization", "ECSServiceAverageMemoryUtilization", "ALBRequestCountPerTarget"):
        assert needed in metrics, f"missing a target tracking policy on {needed}"
    assert "ActiveConnectionCount" in metrics, "missing the connections scaling policy"


# ----------------------------------------------------------------------------------------------
# Hygiene: documented variables, consistent references
# ----------------------------------------------------------------------------------------------


def _all_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in (root / MODULES_DIR).iterdir() if p.is_dir())
    return dirs + [root / ENV_DIR]


def check_variables_documented(root: Path) -> None:
    missing = []
    for d in _all_dirs(root):
        mod = Dir.load(d)
        for name, body in mod.variables.items():
            desc = body.get("description")
            if not (isinstance(desc, str) and len(literal(desc).strip()) >= 10):
                missing.append(f"{d.relative_to(root)}: variable {name}")
        for name, body in mod.outputs.items():
            if not body.get("description"):
                missing.append(f"{d.relative_to(root)}: output {name}")
    assert not missing, "undocumented: " + ", ".join(missing)


def check_references(root: Path) -> None:
    problems = []
    for d in _all_dirs(root):
        mod = Dir.load(d)
        for kind, name, attr in references(mod.text):
            if kind == "var" and name not in mod.variables:
                problems.append(f"{d.name}: var.{name} not declared")
            if kind == "local" and name not in mod.locals:
                problems.append(f"{d.name}: local.{name} not declared")
    env = _env(root)
    for mname, body in env.env.modules.items():
        mod = env.module_dir(mname)
        meta_args = {"source", "depends_on", "providers", "count", "for_each"}
        args = {k for k in body if k not in META_KEYS and k not in meta_args}
        for a in sorted(args - set(mod.variables)):
            problems.append(f"module {mname}: argument {a} is not a variable of {mod.path.name}")
        for v, vbody in mod.variables.items():
            if "default" not in vbody and v not in args:
                problems.append(f"module {mname}: required variable {v} not passed")
    for kind, name, attr in references(env.env.text):
        if kind == "module":
            if name not in env.env.modules:
                problems.append(f"module.{name} is not called")
            elif attr and attr not in env.module_dir(name).outputs:
                problems.append(f"module.{name}.{attr} is not an output")
    assert not problems, "; ".join(problems)


def check_tfvars_example(root: Path) -> None:
    env = _env(root)
    required = [n for n, b in env.env.variables.items() if "default" not in b]
    missing = [n for n in required if n not in env.tfvars]
    assert not missing, f"terraform.tfvars.example lacks required variables: {missing}"
    unknown = [n for n in env.tfvars if n not in env.env.variables]
    assert not unknown, f"terraform.tfvars.example sets undeclared variables: {unknown}"


# ----------------------------------------------------------------------------------------------
# docker-compose.yml
# ----------------------------------------------------------------------------------------------


def _compose(root: Path) -> dict:
    with open(root / "docker-compose.yml", encoding="utf-8") as fh:
        data = yaml.safe_load(fh)  # resolves YAML anchors and << merge keys
    assert isinstance(data, dict) and "services" in data
    return data


def _env_map(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def _chatty_services(compose: dict) -> dict:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if any(str(k).startswith("CHATTY__") for k in _env_map(svc))
    }


def _healthcheck_cmd(svc: dict) -> str:
    hc = svc.get("healthcheck")
    assert hc and not hc.get("disable"), "healthcheck missing or disabled"
    test = hc.get("test")
    assert test and test != ["NONE"], "healthcheck has no test"
    return " ".join(test) if isinstance(test, list) else str(test)


def _volumes(svc: dict) -> list[tuple[str, str, bool]]:
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            src, dst = parts[0], parts[1]
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
        else:
            src, dst, ro = v.get("source"), v.get("target"), bool(v.get("read_only"))
        out.append((src, dst, ro))
    return out


def check_compose_start_order(root: Path) -> None:
    compose = _compose(root)
    services = compose["services"]
    for dep, probe in (("postgres", "pg_isready"), ("redis", "redis-cli")):
        assert dep in services, f"compose needs a {dep} service"
        cmd = _healthcheck_cmd(services[dep])
        assert probe in cmd, f"{dep} healthcheck must use {probe}, got {cmd!r}"
        if dep == "redis":
            assert "ping" in cmd.lower(), "redis healthcheck must ping"

    nodes = _chatty_services(compose)
    assert len(nodes) >= 2, f"need at least two chatty nodes, found {sorted(nodes)}"
    node_ids = set()
    for name, svc in nodes.items():
        deps = svc.get("depends_on")
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with conditions"
        for dep in ("postgres", "redis"):
            assert dep in deps, f"{name} must depend on {dep}"
            cond = deps[dep].get("condition")
            assert cond == "service_healthy", f"{name} -> {dep}: condition must be service_healthy, got {cond}"
        env = _env_map(svc)
        assert env.get("CHATTY__REDIS__URL"), f"{name}: CHATTY__REDIS__URL must be set (cluster mode)"
        assert env.get("CHATTY__DATABASE__URL", "").startswith("postgres"), f"{name}: Postgres URL missing"
        assert env.get("CHATTY__SERVER__HOST") == "0.0.0.0", f"{name}: must listen on 0.0.0.0"
        node_ids.add(env.get("CHATTY__NODE__ID"))
        assert "chatty" in _healthcheck_cmd(svc) and "healthcheck" in _healthcheck_cmd(svc)
        grace = str(svc.get("stop_grace_period", "10s"))
        m = re.fullmatch(r"(\d+)s", grace)
        drain = drain_s(root)
        assert m and int(m.group(1)) > drain, f"{name}: stop_grace_period {grace} must exceed the {drain:g}s drain"
    assert None not in node_ids and len(node_ids) == len(nodes), "every chatty node needs its own CHATTY__NODE__ID"


def check_compose_grafana_mounts(root: Path) -> None:
    compose = _compose(root)
    services = compose["services"]
    assert "grafana" in services, "compose needs a grafana service"
    mounts = {dst: (src, ro) for src, dst, ro in _volumes(services["grafana"])}
    for dst, src in (("/etc/grafana/provisioning", "./grafana/provisioning"),
                     ("/var/lib/grafana/dashboards", "./grafana/dashboards")):
        assert dst in mounts, f"grafana must mount {dst}"
        assert mounts[dst][0] == src, f"grafana {dst} must come from {src}, got {mounts[dst][0]}"
        assert mounts[dst][1], f"grafana {dst} must be read-only"

    prom = [s for s in services.values() if "prometheus" in str(s.get("image", ""))]
    assert prom, "compose needs a prometheus service"
    pmounts = {src: dst for src, dst, _ in _volumes(prom[0])}
    assert "./grafana/prometheus.yml" in pmounts, "prometheus must mount ./grafana/prometheus.yml"

    cfg_path = root / "grafana" / "prometheus.yml"
    assert cfg_path.exists(), "grafana/prometheus.yml is referenced by compose but missing"
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    targets = {
        t
        for job in cfg.get("scrape_configs", [])
        for sc in job.get("static_configs", [])
        for t in sc.get("targets", [])
    }
    for node in _chatty_services(compose):
        assert f"{node}:{METRICS_PORT}" in targets, f"prometheus must scrape {node}:{METRICS_PORT}"


def check_compose_load_balancer(root: Path) -> None:
    compose = _compose(root)
    services = compose["services"]
    nodes = _chatty_services(compose)
    lbs = [(n, s) for n, s in services.items() if re.search(r"nginx|haproxy", str(s.get("image", "")))]
    assert len(lbs) == 1, "compose needs exactly one nginx/haproxy load balancer"
    name, lb = lbs[0]
    assert any(str(p).split(":")[-1] == "8080" or str(p).endswith(":8080") for p in lb.get("ports", [])), \
        "the load balancer must publish the chat page (container port 8080)"
    conf_src = [src for src, dst, ro in _volumes(lb) if dst.startswith("/etc/nginx")]
    assert conf_src, "nginx config must be mounted from the repository"
    conf = (root / conf_src[0]).read_text(encoding="utf-8")
    for node in nodes:
        assert re.search(rf"server\s+{re.escape(node)}:{APP_PORT}\b", conf), f"upstream must include {node}:{APP_PORT}"
    ws = re.search(r"location\s+(=\s*)?/ws\s*\{(?P<body>.*?)\n\s*\}", conf, re.S)
    assert ws, "nginx needs a location for /ws"
    body = ws.group("body")
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", body), "/ws must pass the Upgrade header"
    assert re.search(r"proxy_set_header\s+Connection\s+\$\w+;", body), "/ws must pass the Connection header"
    assert re.search(r"proxy_http_version\s+1\.1;", body), "/ws needs HTTP/1.1 to upstream"
    m = re.search(r"proxy_read_timeout\s+(\d+)s?;", body)
    assert m and int(m.group(1)) > ping_interval_s(root), "/ws proxy_read_timeout must exceed the ping interval"


OTLP_HTTP_PORT = 4318
JAEGER_UI_PORT = 16686


def _pinned(image: str) -> bool:
    """name:tag with a version number in the tag (or a digest): not latest, not a bare name."""
    if "@sha256:" in image:
        return True
    tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
    return bool(re.search(r"\d+\.\d+", tag)) and "latest" not in tag


def _published(svc: dict) -> set[int]:
    """Container ports published on the host."""
    out = set()
    for p in svc.get("ports", []):
        target = p.get("target") if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
        out.add(int(target))
    return out


def check_compose_tracing(root: Path) -> None:
    """`docker compose up` shows traces: the nodes export OTLP/HTTP to an OpenTelemetry
    Collector (memory_limiter, batch) that forwards to Jaeger, whose UI is published; Grafana
    has Jaeger as a datasource. Tracing never holds chat back: the nodes do not wait for the
    collector to be healthy, and the collector (distroless: no shell) has no healthcheck that
    could never pass and so fail `up --wait`."""
    compose = _compose(root)
    services = compose["services"]
    collectors = [(n, s) for n, s in services.items() if "opentelemetry-collector" in str(s.get("image", ""))]
    assert len(collectors) == 1, "compose needs one OpenTelemetry Collector service"
    cname, coll = collectors[0]
    assert _pinned(str(coll["image"])), f"{cname}: pin the collector image to a version, got {coll['image']}"
    assert "healthcheck" not in coll or coll["healthcheck"].get("disable"), \
        f"{cname}: the collector image has no shell or wget, so a healthcheck cannot run (and `up --wait` would fail)"
    command = [str(c) for c in coll.get("command") or []]
    config_path = next((c.split("=", 1)[1] for c in command if c.startswith("--config=")), None)
    if config_path is None and "--config" in command:
        config_path = command[command.index("--config") + 1]
    assert config_path, f"{cname}: pass the configuration with --config"
    mounts = {dst: (src, ro) for src, dst, ro in _volumes(coll)}
    assert config_path in mounts, f"{cname}: {config_path} must be mounted from the repository"
    src, ro = mounts[config_path]
    assert src == "./deploy/otel-collector.yaml" and ro, f"{cname}: mount ./deploy/otel-collector.yaml read-only at {config_path}"

    cfg = yaml.safe_load((root / "deploy" / "otel-collector.yaml").read_text(encoding="utf-8"))
    pipelines = cfg["service"]["pipelines"]
    traces = [p for name, p in pipelines.items() if name.split("/")[0] == "traces"]
    assert traces, "the collector needs a traces pipeline"
    for kind in ("receivers", "processors", "exporters"):
        for p in traces:
            for comp in p.get(kind, []):
                assert comp in (cfg.get(kind) or {}), f"collector: {kind[:-1]} {comp} is used but not configured"
    for ext in cfg["service"].get("extensions", []):
        assert ext in (cfg.get("extensions") or {}), f"collector: extension {ext} is used but not configured"
    assert any(e.split("/")[0] == "health_check" for e in cfg["service"].get("extensions", [])), \
        "collector: enable the health_check extension (the only health signal of a distroless image)"
    pipe = traces[0]
    otlp = [r for r in pipe["receivers"] if r.split("/")[0] == "otlp"]
    assert otlp, "the traces pipeline must receive OTLP"
    http = (cfg["receivers"][otlp[0]].get("protocols") or {}).get("http") or {}
    assert str(http.get("endpoint", "")).endswith(f":{OTLP_HTTP_PORT}"), f"collector: OTLP/HTTP must listen on {OTLP_HTTP_PORT}"
    procs = [p.split("/")[0] for p in pipe["processors"]]
    assert procs and procs[0] == "memory_limiter", "collector: memory_limiter must come first in the pipeline"
    assert "batch" in procs, "collector: the traces pipeline must batch"
    jaegers = [(n, s) for n, s in services.items() if str(s.get("image", "")).startswith("jaegertracing/")]
    assert len(jaegers) == 1, "compose needs one Jaeger service"
    jname, jaeger = jaegers[0]
    exporters = {e: cfg["exporters"][e] for e in pipe["exporters"] if e.split("/")[0] in ("otlp", "otlp_grpc")}
    assert exporters, "collector: the traces pipeline must export OTLP (gRPC) to Jaeger"
    for e, ecfg in exporters.items():
        assert ecfg.get("endpoint") == f"{jname}:4317", f"collector: exporter {e} must send to {jname}:4317"
        assert (ecfg.get("tls") or {}).get("insecure") is True, f"collector: exporter {e} needs tls.insecure (plain gRPC in the network)"

    image = str(jaeger["image"])
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", image), f"{jname}: pin a Jaeger v2 all-in-one image, got {image}"
    published = _published(jaeger)
    assert JAEGER_UI_PORT in published, f"{jname}: publish the UI ({JAEGER_UI_PORT})"
    assert not published & {4317, 4318}, f"{jname}: OTLP stays inside the compose network"

    for name, svc in _chatty_services(compose).items():
        env = _env_map(svc)
        assert env.get("CHATTY__TELEMETRY__OTLP_ENDPOINT") == f"http://{cname}:{OTLP_HTTP_PORT}", \
            f"{name}: CHATTY__TELEMETRY__OTLP_ENDPOINT must be http://{cname}:{OTLP_HTTP_PORT}"
        # ${VAR:-default} as compose resolves it without a .env.
        raw = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(env.get("CHATTY__TELEMETRY__SAMPLE_RATIO", "")))
        assert re.fullmatch(r"(0(\.\d+)?|1(\.0+)?)", raw), f"{name}: CHATTY__TELEMETRY__SAMPLE_RATIO must be within 0..1, got {raw!r}"
        dep = (svc.get("depends_on") or {}).get(cname)
        assert dep is None or dep.get("condition") != "service_healthy", \
            f"{name}: must not wait for the collector to be healthy (tracing never holds chat back)"

    grafana_ds = root / "grafana" / "provisioning" / "datasources"
    found = [
        ds
        for f in sorted(grafana_ds.glob("*.y*ml"))
        for ds in (yaml.safe_load(f.read_text(encoding="utf-8")) or {}).get("datasources", [])
        if ds.get("type") == "jaeger"
    ]
    assert found, "Grafana needs a Jaeger datasource (grafana/provisioning/datasources/)"
    assert found[0].get("url") == f"http://{jname}:{JAEGER_UI_PORT}", f"the Jaeger datasource must query http://{jname}:{JAEGER_UI_PORT}"
    assert not found[0].get("isDefault"), "Prometheus stays the default datasource"


def check_trusted_proxies(root: Path) -> None:
    """Per-IP caps must count clients, not the load balancer: every node trusts exactly the
    proxy in front of it (compose: nginx at a fixed address; ECS: the ALB's public subnets)."""
    import ipaddress

    compose = _compose(root)
    services = compose["services"]
    lbs = [s for s in services.values() if re.search(r"nginx|haproxy", str(s.get("image", "")))]
    assert len(lbs) == 1, "compose needs exactly one load balancer"
    addr = (lbs[0].get("networks") or {}).get("default", {}).get("ipv4_address")
    assert addr, "the load balancer needs a fixed address (networks.default.ipv4_address)"
    subnets = [c["subnet"] for c in compose.get("networks", {}).get("default", {}).get("ipam", {}).get("config", [])]
    assert any(ipaddress.ip_address(addr) in ipaddress.ip_network(n) for n in subnets), \
        f"the load balancer's address {addr} must lie in the default network's fixed subnet {subnets}"
    for name, svc in _chatty_services(compose).items():
        value = _env_map(svc).get("CHATTY__SERVER__TRUSTED_PROXIES") or ""
        nets = [ipaddress.ip_network(x.strip(), strict=False) for x in value.split(",") if x.strip()]
        assert nets, f"{name}: CHATTY__SERVER__TRUSTED_PROXIES must be set (else every client shares nginx's cap)"
        assert any(ipaddress.ip_address(addr) in n for n in nets), f"{name}: must trust the load balancer {addr}"
        assert all(n.prefixlen >= 16 for n in nets), f"{name}: trusting {value} trusts far more than the proxy"

    env = _env(root)
    ecs_env = env.env.modules["ecs"].get("environment") or {}
    value = next((v for k, v in ecs_env.items() if label(k) == "CHATTY__SERVER__TRUSTED_PROXIES"), "")
    assert "module.network.public_subnet_cidrs" in str(value), \
        "ECS: CHATTY__SERVER__TRUSTED_PROXIES must be the public subnets' CIDRs (where the ALB lives)"
    assert "public_subnet_cidrs" in env.module_dir("network").outputs, "the network module must export public_subnet_cidrs"


ALARMED_METRICS = {
    ("AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"),
    ("AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"),
    ("AWS/ApplicationELB", "UnHealthyHostCount"),
    ("AWS/ApplicationELB", "HealthyHostCount"),
    ("AWS/ECS", "CPUUtilization"),
    ("AWS/ECS", "MemoryUtilization"),
    ("AWS/RDS", "CPUUtilization"),
    ("AWS/RDS", "FreeStorageSpace"),
    ("AWS/ElastiCache", "EngineCPUUtilization"),
}


def check_alarms(root: Path) -> None:
    """The AWS side pages someone: CloudWatch alarms on the load balancer, the service, RDS and
    ElastiCache, every one notifying (and clearing through) an encrypted SNS topic."""
    env = _env(root)
    assert "alarms" in env.env.modules, "the environment must call the alarms module"
    mod = env.module_dir("alarms")
    topics = mod.resources_of("aws_sns_topic")
    assert topics, "alarms need an SNS topic"
    for name, t in topics.items():
        assert t.get("kms_master_key_id"), f"aws_sns_topic.{name} must be encrypted"
    alarms = mod.resources_of("aws_cloudwatch_metric_alarm")
    assert alarms, "no CloudWatch alarm"
    for name, a in alarms.items():
        for key in ("alarm_actions", "ok_actions"):
            assert "aws_sns_topic." in str(a.get(key, "")), f"aws_cloudwatch_metric_alarm.{name}: {key} must notify the topic"
    # The metrics watched: from the resources and the table they are built from.
    text = mod.text
    found = set()
    for ns, metric in ALARMED_METRICS:
        if re.search(rf'namespace\s*=\s*"{re.escape(ns)}"[^}}]*?metric(_name)?\s*=\s*"{metric}"', text, re.S):
            found.add((ns, metric))
    missing = sorted(ALARMED_METRICS - found)
    assert not missing, f"no alarm on {missing}"
    inputs = env.env.modules["alarms"]
    for arg in ("alb_arn_suffix", "target_group_arn_suffix", "ecs_service_name", "rds_instance_id", "redis_replication_group_id"):
        assert str(inputs.get(arg, "")).startswith("${module."), f"alarms.{arg} must come from the module that owns it"


def check_alert_rules(root: Path) -> None:
    """grafana/alerts.yml is loaded by the compose Prometheus; every alert has a severity, a
    summary and a runbook section in docs/operations.md, and grafana/alerts.test.yml proves it
    both fires and stays quiet."""
    rules_path = root / "grafana" / "alerts.yml"
    assert rules_path.exists(), "grafana/alerts.yml (the alerting rules) is missing"
    rules = yaml.safe_load(rules_path.read_text(encoding="utf-8"))
    alerts = [r for g in rules.get("groups", []) for r in g.get("rules", []) if "alert" in r]
    assert alerts, "grafana/alerts.yml defines no alert"
    ops = (root / "docs" / "operations.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", ops, re.M)
    }
    for a in alerts:
        name = a["alert"]
        assert a.get("labels", {}).get("severity") in ("critical", "warning"), f"{name}: severity must be critical or warning"
        ann = a.get("annotations", {})
        assert ann.get("summary"), f"{name}: summary annotation missing"
        runbook = ann.get("runbook", "")
        m = re.fullmatch(r"docs/operations\.md#(.+)", runbook)
        assert m, f"{name}: runbook must point into docs/operations.md, got {runbook!r}"
        assert m.group(1) in anchors, f"{name}: docs/operations.md has no section #{m.group(1)}"

    tests = yaml.safe_load((root / "grafana" / "alerts.test.yml").read_text(encoding="utf-8"))
    assert "alerts.yml" in tests.get("rule_files", []), "alerts.test.yml must test alerts.yml"
    fires, quiet = set(), set()
    for t in tests.get("tests", []):
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    for a in alerts:
        assert a["alert"] in fires, f"{a['alert']}: no promtool test in which it fires"
        assert a["alert"] in quiet, f"{a['alert']}: no promtool test in which it stays quiet"

    prom_cfg = yaml.safe_load((root / "grafana" / "prometheus.yml").read_text(encoding="utf-8"))
    assert "alerts.yml" in prom_cfg.get("rule_files", []), "grafana/prometheus.yml must load alerts.yml"
    compose = _compose(root)
    prom = [s for s in compose["services"].values() if "prometheus" in str(s.get("image", ""))]
    mounts = {src: dst for src, dst, _ in _volumes(prom[0])}
    assert mounts.get("./grafana/alerts.yml") == "/etc/prometheus/alerts.yml", \
        "prometheus must mount ./grafana/alerts.yml beside its configuration"


# ----------------------------------------------------------------------------------------------
# The tests
# ----------------------------------------------------------------------------------------------

CHECKS = [
    check_alb_idle_timeout,
    check_drain_timing,
    check_target_group,
    check_listeners,
    check_rds,
    check_database_roles,
    check_metrics_on_aws,
    check_traces_on_aws,
    check_provider_lock,
    check_redis,
    check_ecr,
    check_security_groups,
    check_task_definition,
    check_autoscaling,
    check_variables_documented,
    check_references,
    check_tfvars_example,
    check_compose_start_order,
    check_compose_grafana_mounts,
    check_compose_load_balancer,
    check_compose_tracing,
    check_alert_rules,
    check_trusted_proxies,
    check_alarms,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_invariant(check, root):
    check(root)


def test_values_are_read_not_assumed(root):
    """The resolved numbers are what the example environment deploys with."""
    idle, delay, stop = alb_idle_timeout(root), deregistration_delay(root), ecs_stop_timeout(root)
    print(f"idle_timeout={idle}s deregistration_delay={delay}s stopTimeout={stop}s")
    assert all(isinstance(x, int) for x in (idle, delay, stop))


# ----------------------------------------------------------------------------------------------
# Self-tests: each mutation breaks one invariant in a copy of the repository; the matching
# check must fail on it. This proves the checks read real values.
# ----------------------------------------------------------------------------------------------


def _sub(path: Path, pattern: str | None, repl: str) -> None:
    if pattern is None:  # replace the whole file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(repl, encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    new, n = re.subn(pattern, repl, text, flags=re.M)
    assert n, f"mutation pattern {pattern!r} matched nothing in {path}"
    path.write_text(new, encoding="utf-8")


MUTATIONS = {
    "idle_timeout_below_ping": (
        check_alb_idle_timeout,
        [(ENV_DIR / "terraform.tfvars.example", r"^alb_idle_timeout\s*=.*$", "alb_idle_timeout = 20")],
    ),
    "idle_timeout_default_below_ping": (
        check_alb_idle_timeout,
        [
            (ENV_DIR / "terraform.tfvars.example", r"^alb_idle_timeout\s*=.*$", ""),
            (ENV_DIR / "variables.tf", r'(variable "alb_idle_timeout" \{[^}]*default\s*=\s*)\d+', r"\g<1>25"),
        ],
    ),
    "deregistration_delay_shorter_than_drain": (
        check_drain_timing,
        [(ENV_DIR / "terraform.tfvars.example", r"^deregistration_delay\s*=.*$", "deregistration_delay = 20")],
    ),
    "deregistration_delay_above_stop_timeout": (
        check_drain_timing,
        [(ENV_DIR / "terraform.tfvars.example", r"^deregistration_delay\s*=.*$", "deregistration_delay = 90")],
    ),
    "deregistration_delay_unset": (
        check_drain_timing,
        [(MODULES_DIR / "alb/main.tf", r"^\s*deregistration_delay\s*=.*$", "")],
    ),
    "stop_timeout_above_fargate_max": (
        check_drain_timing,
        [
            (ENV_DIR / "terraform.tfvars.example", r"^stop_timeout\s*=.*$", "stop_timeout = 150"),
            (ENV_DIR / "terraform.tfvars.example", r"^deregistration_delay\s*=.*$", "deregistration_delay = 30"),
        ],
    ),
    "ping_interval_raised_in_production_config": (
        check_alb_idle_timeout,
        [("config/production.toml", None, "[server]\nping_interval_ms = 150000\n")],
    ),
    "drain_longer_than_stop_timeout": (
        check_drain_timing,
        [("config/production.toml", None, "[server]\nshutdown_timeout_ms = 60000\n")],
    ),
    "health_check_path": (
        check_target_group,
        [(ENV_DIR / "main.tf", r'health_check_path(\s*)= "/readyz"', r'health_check_path\1= "/healthz"')],
    ),
    "target_type_instance": (
        check_target_group,
        [(MODULES_DIR / "alb/main.tf", r'target_type = "ip"', 'target_type = "instance"')],
    ),
    "rds_unencrypted": (
        check_rds,
        [(MODULES_DIR / "rds/main.tf", r"storage_encrypted(\s*)= true", r"storage_encrypted\1= false")],
    ),
    "redis_plaintext": (
        check_redis,
        [(MODULES_DIR / "redis/main.tf", r"transit_encryption_enabled = true", "transit_encryption_enabled = false")],
    ),
    "ecr_no_scan": (
        check_ecr,
        [(MODULES_DIR / "ecr/main.tf", r"scan_on_push = true", "scan_on_push = false")],
    ),
    "metrics_open_to_world": (
        check_security_groups,
        [(MODULES_DIR / "security/main.tf", r"cidr_ipv4(\s*)= var\.vpc_cidr", r'cidr_ipv4\1= "0.0.0.0/0"')],
    ),
    "undocumented_variable": (
        check_variables_documented,
        [(MODULES_DIR / "redis/variables.tf", r'^  description = "Redis port\."$|^  description = "ElastiCache node type\."$', "")],
    ),
    "undeclared_variable": (
        check_references,
        [(MODULES_DIR / "alb/main.tf", r"var\.idle_timeout", "var.idle_timeout_s")],
    ),
    "compose_started_not_healthy": (
        check_compose_start_order,
        [("docker-compose.yml", r"condition: service_healthy", "condition: service_started")],
    ),
    "compose_no_pg_healthcheck": (
        check_compose_start_order,
        [("docker-compose.yml", r"pg_isready", "true")],
    ),
    "grafana_mount_elsewhere": (
        check_compose_grafana_mounts,
        [("docker-compose.yml", r"\./grafana/dashboards:", "./dashboards:")],
    ),
    "alert_rules_not_loaded": (
        check_alert_rules,
        [("grafana/prometheus.yml", r"^rule_files:\n  - alerts\.yml\n", "")],
    ),
    "alert_rules_not_mounted": (
        check_alert_rules,
        [("docker-compose.yml", r"^\s*- \./grafana/alerts\.yml:/etc/prometheus/alerts\.yml:ro\n", "")],
    ),
    "alert_without_a_quiet_test": (
        check_alert_rules,
        [("grafana/alerts.test.yml", r"(- eval_time: 2m\n\s*alertname: )ChattyNodeDown", r"\g<1>ChattyElse")],
    ),
    "alert_without_a_runbook_section": (
        check_alert_rules,
        [("docs/operations.md", r"^### Alert: ChattyBusReconnecting$", "### Bus reconnects")],
    ),
    "compose_trusts_no_proxy": (
        check_trusted_proxies,
        [("docker-compose.yml", r"^\s*CHATTY__SERVER__TRUSTED_PROXIES:.*\n", "")],
    ),
    "compose_trusts_everyone": (
        check_trusted_proxies,
        [("docker-compose.yml", r"CHATTY__SERVER__TRUSTED_PROXIES: .*$", "CHATTY__SERVER__TRUSTED_PROXIES: 0.0.0.0/0")],
    ),
    "ecs_trusts_no_proxy": (
        check_trusted_proxies,
        [(ENV_DIR / "main.tf", r"^\s*CHATTY__SERVER__TRUSTED_PROXIES\s*=.*\n", "")],
    ),
    "no_rds_storage_alarm": (
        check_alarms,
        [(MODULES_DIR / "alarms/main.tf", r'metric = "FreeStorageSpace"', 'metric = "ReadIOPS"')],
    ),
    "alarm_without_action": (
        check_alarms,
        [(MODULES_DIR / "alarms/main.tf", r"^\s*ok_actions\s*=.*\n", "")],
    ),
    "alarms_module_not_called": (
        check_alarms,
        [(ENV_DIR / "main.tf", r'^module "alarms" \{', 'module "alarms_disabled" {')],
    ),
    "rds_tls_not_verified": (
        check_database_roles,
        [(MODULES_DIR / "rds/outputs.tf", r"sslmode=verify-full", "sslmode=require")],
    ),
    "app_connects_as_master": (
        check_database_roles,
        [(MODULES_DIR / "rds/outputs.tf", r"^    var\.app_username,", "    var.username,")],
    ),
    "ca_bundle_not_in_image": (
        check_database_roles,
        [("Dockerfile", r"/usr/local/share/chatty/rds-global-bundle\.pem", "/tmp/bundle.pem")],
    ),
    "service_gets_owner_url": (
        check_database_roles,
        [(MODULES_DIR / "ecs/main.tf", r"secrets     = \[for k in sort\(keys\(var\.secrets\)\) : \{ name = k, valueFrom = var\.secrets\[k\] \}\]",
          "secrets     = [for k in sort(keys(merge(var.secrets, var.migration_secrets))) : { name = k, valueFrom = merge(var.secrets, var.migration_secrets)[k] }]")],
    ),
    "no_metrics_sidecar": (
        check_metrics_on_aws,
        [(ENV_DIR / "main.tf", r"^\s*metrics_remote_write_url\s*=.*\n", "")],
    ),
    "sidecar_scrapes_elsewhere": (
        check_metrics_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r"127\.0\.0\.1:\$\{var\.metrics_port\}", "127.0.0.1:8080")],
    ),
    "topic_under_aws_managed_key": (
        check_metrics_on_aws,
        [(MODULES_DIR / "alarms/main.tf", r"kms_master_key_id = aws_kms_key\.topic\.arn", 'kms_master_key_id = "alias/aws/sns"')],
    ),
    "traces_wait_for_healthy_sidecar": (
        check_traces_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r'condition = "START"', 'condition = "HEALTHY"')],
    ),
    "trace_settings_always_on": (
        check_traces_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r"trace_environment = var\.traces_enabled \?", "trace_environment = true ?")],
    ),
    "xray_policy_always_on": (
        check_traces_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r"^  count = var\.traces_enabled \? 1 : 0$", "  count = 1")],
    ),
    "traces_not_wired": (
        check_traces_on_aws,
        [(ENV_DIR / "main.tf", r"^\s*traces_enabled\s*=.*\n", "")],
    ),
    "traces_on_by_default": (
        check_traces_on_aws,
        [(ENV_DIR / "variables.tf", r'(variable "traces_enabled" \{[^}]*default\s*=\s*)false', r"\g<1>true")],
    ),
    "traces_not_to_xray": (
        check_traces_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r'\["awsxray"\]', '["debug"]')],
    ),
    "chatty_traces_to_wrong_port": (
        check_traces_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r'"http://localhost:\$\{local\.otlp_http_port\}"', '"http://localhost:4317"')],
    ),
    "sidecar_only_with_metrics": (
        check_traces_on_aws,
        [(MODULES_DIR / "ecs/main.tf", r"sidecars = local\.adot_enabled \?", "sidecars = local.metrics_enabled ?")],
    ),
    "compose_waits_for_healthy_collector": (
        check_compose_tracing,
        [("docker-compose.yml", r"(otel-collector:\n\s+condition: )service_started", r"\g<1>service_healthy")],
    ),
    "collector_unpinned": (
        check_compose_tracing,
        [("docker-compose.yml", r"otel/opentelemetry-collector:[\d.]+", "otel/opentelemetry-collector:latest")],
    ),
    "collector_healthcheck_without_shell": (
        check_compose_tracing,
        [("docker-compose.yml", r'^(    command: \["--config", "/etc/otelcol/config\.yaml"\]\n)',
          r'\1    healthcheck:\n      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:13133/"]\n')],
    ),
    "collector_without_memory_limiter": (
        check_compose_tracing,
        [("deploy/otel-collector.yaml", r"processors: \[memory_limiter, batch\]", "processors: [batch]")],
    ),
    "collector_exports_elsewhere": (
        check_compose_tracing,
        [("deploy/otel-collector.yaml", r"endpoint: jaeger:4317", "endpoint: localhost:4317")],
    ),
    "nodes_trace_elsewhere": (
        check_compose_tracing,
        [("docker-compose.yml", r"CHATTY__TELEMETRY__OTLP_ENDPOINT: .*$", "CHATTY__TELEMETRY__OTLP_ENDPOINT: http://otel-collector:4317")],
    ),
    "jaeger_otlp_published": (
        check_compose_tracing,
        [("docker-compose.yml", r'^(      - "\$\{JAEGER_PORT:-16686\}:16686"\n)', r'\1      - "4317:4317"\n')],
    ),
    "no_jaeger_datasource": (
        check_compose_tracing,
        [("grafana/provisioning/datasources/jaeger.yml", None, "apiVersion: 1\n")],
    ),
    "provider_lock_emptied": (
        check_provider_lock,
        [(ENV_DIR / ".terraform.lock.hcl", None, "# emptied\n")],
    ),
    "nginx_no_upgrade_header": (
        check_compose_load_balancer,
        [("deploy/nginx.conf", r"proxy_set_header Upgrade \$http_upgrade;", "")],
    ),
}


@pytest.fixture
def repo_copy(root, tmp_path):
    dst = tmp_path / "repo"
    for rel in ("infra", "deploy", "grafana", "config", "docs"):
        if (root / rel).exists():
            shutil.copytree(root / rel, dst / rel, ignore=shutil.ignore_patterns(".terraform", "__pycache__"))
    shutil.copy2(root / "docker-compose.yml", dst / "docker-compose.yml")
    shutil.copy2(root / "Dockerfile", dst / "Dockerfile")
    return dst


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_check_fails_on_mutation(mutation, repo_copy):
    check, edits = MUTATIONS[mutation]
    check(repo_copy)  # the unmodified copy passes
    for rel, pattern, repl in edits:
        _sub(repo_copy / rel, pattern, repl)
    with pytest.raises(AssertionError):
        check(repo_copy)
