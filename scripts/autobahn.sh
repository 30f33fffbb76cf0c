#!/usr/bin/env bash
# WebSocket protocol conformance: run the Autobahn|Testsuite fuzzing client against Chatty's
# test-only echo endpoint (/debug/echo, which reads through the same bounded reader as /ws).
# See docs/conformance.md for the selected cases, the exclusions and how to read the report.
#
#   scripts/autobahn.sh            install wstest if needed, build, run, check
#
# Steps:
#   1. wstest (PyPI autobahntestsuite, Python 2.7 only) runs one of two ways ($AUTOBAHN_RUNNER:
#      auto, the default, takes the first that is available):
#      - venv: installed, pinned by conformance/autobahn/requirements.txt, into the virtualenv
#        .tools/autobahn/venv; skipped when that venv already matches the requirements (a stamp
#        file holds their hash). Python 2.7 comes from $AUTOBAHN_PYTHON, else pyenv
#        ($PYENV_ROOT or ~/.pyenv, any 2.7.x), else `python2.7` on PATH.
#      - docker: the project's own image (crossbario/autobahn-testsuite, the same suite version
#        25.10.1 on PyPy 2.7), pinned by digest in $AUTOBAHN_IMAGE, with host networking. This
#        is how GitHub's runners (no Python 2.7) run it.
#      With neither, the script stops and says how to get one.
#   2. cargo build --release -p chatty.
#   3. The server starts on two free loopback ports with the echo endpoint on and a throwaway
#      SQLite database, and is stopped on exit whatever happens.
#   4. conformance/autobahn/fuzzingclient.json is rendered with the real port into
#      test-output/autobahn/fuzzingclient.json and `wstest -m fuzzingclient` runs it; the report
#      (index.html, index.json, one file per case) and the server's log stay in test-output/autobahn/.
#   5. conformance/autobahn/check_report.py checks index.json: every case's behavior and
#      behaviorClose must be OK, NON-STRICT or INFORMATIONAL, and every selected case must have
#      run. It prints `autobahn: N passed, M failed`; the script exits non-zero on any failure.
#
# Environment: AUTOBAHN_RUNNER (auto|venv|docker), AUTOBAHN_PYTHON (a python2.7), AUTOBAHN_IMAGE, AUTOBAHN_TIMEOUT (seconds for wstest, default 900),
# CARGO_TARGET_DIR (honoured when locating the binary).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { printf '[autobahn] error: %s\n' "$*" >&2; exit 1; }

started=$(date +%s)
tools="$root/.tools/autobahn"
venv="$tools/venv"
requirements="$root/conformance/autobahn/requirements.txt"
spec_template="$root/conformance/autobahn/fuzzingclient.json"
out="$root/test-output/autobahn"

# ---------------------------------------------------------------------------------------------
# 1. Python 2.7 and wstest
# ---------------------------------------------------------------------------------------------
is_py27() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; }

find_python27() {
  if [ -n "${AUTOBAHN_PYTHON:-}" ]; then
    is_py27 "$AUTOBAHN_PYTHON" || die "AUTOBAHN_PYTHON=$AUTOBAHN_PYTHON is not a working Python 2.7"
    echo "$AUTOBAHN_PYTHON"
    return
  fi
  local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}" p
  for p in $(printf '%s\n' "$pyenv_root"/versions/2.7*/bin/python2.7 | sort -rV) \
    "$(command -v python2.7 2>/dev/null || true)"; do
    if [ -n "$p" ] && is_py27 "$p"; then
      echo "$p"
      return
    fi
  done
  die "Python 2.7 not found: Autobahn|Testsuite runs only on Python 2.7. Looked in
    \$AUTOBAHN_PYTHON, $pyenv_root/versions/2.7*/bin/python2.7 and python2.7 on PATH.
    Install it with pyenv (\`pyenv install 2.7.18\`) or point AUTOBAHN_PYTHON at a python2.7."
}

stamp_of() {
  # What the venv was built from: the requirements and the interpreter.
  { cat "$requirements"; echo "python=$1"; } | sha256sum | cut -d' ' -f1
}

install_wstest() {
  local py=$1 want
  want=$(stamp_of "$py")
  if [ -x "$venv/bin/wstest" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$want" ]; then
    log "wstest: already installed in ${venv#"$root"/}"
    return
  fi
  log "installing wstest (pinned, $requirements) into ${venv#"$root"/} with $py"
  command -v cc >/dev/null || command -v gcc >/dev/null ||
    die "no C compiler (cc): Twisted and wsaccel build from source; install one (Debian: apt-get install build-essential)"
  "$py" -m pip --version >/dev/null 2>&1 || "$py" -m ensurepip >/dev/null 2>&1 ||
    die "$py has no pip and ensurepip failed"
  rm -rf "$venv"
  mkdir -p "$tools"
  # virtualenv 16.7.12: the last single-module virtualenv that runs on Python 2.7 and brings
  # its own pip/setuptools wheels (no network for those); --target keeps it out of $py's site.
  if [ ! -f "$tools/bootstrap/virtualenv.py" ]; then
    "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$tools/bootstrap" virtualenv==16.7.12 2>&1 | grep -v DEPRECATION >&2 || true
    [ -f "$tools/bootstrap/virtualenv.py" ] || die "could not install virtualenv==16.7.12"
  fi
  PYTHONPATH="$tools/bootstrap" "$py" -m virtualenv --quiet --no-download "$venv" >&2 ||
    die "could not create the virtualenv $venv"
  # --no-deps: requirements.txt pins the whole closure; `pip check` proves nothing is missing.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$requirements" 2>&1 |
    grep -v -e DEPRECATION -e '^$' >&2 || true
  local check
  check=$("$venv/bin/pip" check 2>&1) ||
    die "the installed packages do not satisfy each other: $(echo "$check" | grep -v DEPRECATION)"
  [ -x "$venv/bin/wstest" ] || die "wstest was not installed"
  "$venv/bin/python" -c 'import autobahntestsuite.wstest' 2>/dev/null || die "wstest does not import"
  echo "$want" >"$venv/.stamp"
  log "wstest: installed"
}

# The suite's own image, pinned by digest: suite 25.10.1, as requirements.txt pins for the venv.
image="${AUTOBAHN_IMAGE:-crossbario/autobahn-testsuite@sha256:519915fb568b04c9383f70a1c405ae3ff44ab9e35835b085239c258b6fac3074}"
runner="${AUTOBAHN_RUNNER:-auto}"
if [ "$runner" = auto ]; then
  # find_python27 dies (ending its subshell) when there is none; a set AUTOBAHN_PYTHON always
  # means the venv, so a wrong one is reported rather than silently replaced by docker.
  if [ -n "${AUTOBAHN_PYTHON:-}" ] || (find_python27 >/dev/null 2>&1); then runner=venv
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then runner=docker
  else die "neither Python 2.7 nor a working docker: Autobahn|Testsuite runs only on Python 2.7.
    Install it with pyenv (\`pyenv install 2.7.18\`), point AUTOBAHN_PYTHON at a python2.7, or
    install docker to run the suite's image ($image)."
  fi
fi
case "$runner" in
  venv)
    py27=$(find_python27)
    install_wstest "$py27"
    hostpy="$venv/bin/python"
    ;;
  docker)
    log "wstest: from the image $image"
    docker pull --quiet "$image" >/dev/null || die "could not pull $image"
    hostpy=$(command -v python3 || true)
    [ -n "$hostpy" ] || die "the docker runner needs python3 on the host for its helpers"
    ;;
  *) die "AUTOBAHN_RUNNER=$runner: expected auto, venv or docker" ;;
esac

# How to run a command of the suite (wstest, or python with autobahntestsuite importable): a
# prefix that the command's name and arguments follow.
if [ "$runner" = venv ]; then
  suite=(env PATH="$venv/bin:$PATH")
else
  # Host networking reaches the server on loopback; the report directory and the checker are
  # mounted at the same paths, and the container runs as this user so the files stay ours.
  suite=(docker run --rm --network host --user "$(id -u):$(id -g)" -e HOME=/tmp
    -v "$out:$out" -v "$root/conformance/autobahn:$root/conformance/autobahn:ro" -w "$out" "$image")
fi

# ---------------------------------------------------------------------------------------------
# 2. Build
# ---------------------------------------------------------------------------------------------
log "building chatty (release)"
cargo build --release -p chatty
binary="${CARGO_TARGET_DIR:-$root/target}/release/chatty"
[ -x "$binary" ] || die "no binary at $binary after the build"

# ---------------------------------------------------------------------------------------------
# 3. Server
# ---------------------------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$out"
tmp=$(mktemp -d /tmp/chatty-autobahn.XXXXXX)
server_pid=""
wstest_pid=""
cleanup() {
  local rc=$?
  if [ -n "$wstest_pid" ] && kill -0 "$wstest_pid" 2>/dev/null; then
    log "stopping wstest (pid $wstest_pid)"
    kill "$wstest_pid" 2>/dev/null || true
    wait "$wstest_pid" 2>/dev/null || true
  fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    log "stopping the server (pid $server_pid)"
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
  log "done in $(($(date +%s) - started))s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$hostpy" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
metrics_port=$(free_port)
while [ "$metrics_port" = "$port" ]; do metrics_port=$(free_port); done

log "starting chatty on 127.0.0.1:$port (metrics $metrics_port), log in ${out#"$root"/}/server.log"
# Only what the run needs: no external database or Redis, the local config, the echo endpoint.
env -u CHATTY__DATABASE__URL -u CHATTY__REDIS__URL \
  CHATTY_ENVIRONMENT=local \
  CHATTY_CONFIG_DIR="$root/config" \
  CHATTY__DEBUG__ECHO_ENDPOINT=true \
  CHATTY__SERVER__HOST=127.0.0.1 \
  CHATTY__SERVER__PORT="$port" \
  CHATTY__SERVER__METRICS_PORT="$metrics_port" \
  CHATTY__DATABASE__SQLITE_PATH="$tmp/chatty.db" \
  CHATTY__LOG__FORMAT=json \
  "$binary" >"$out/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 300); do
  kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$out/server.log" >&2; die "the server exited during startup"; }
  if "$hostpy" -c 'import sys
try:
    from urllib.request import urlopen
except ImportError:
    from urllib2 import urlopen
try:
    sys.exit(urlopen("http://127.0.0.1:%s/readyz" % sys.argv[1], timeout=2).getcode() != 200)
except Exception:
    sys.exit(1)' "$port"; then
    ready=1
    break
  fi
  sleep 0.1
done
[ -n "$ready" ] || { tail -n 20 "$out/server.log" >&2; die "the server was not ready within 30s"; }
log "server ready"

# ---------------------------------------------------------------------------------------------
# 4. wstest
# ---------------------------------------------------------------------------------------------
spec="$out/fuzzingclient.json"
"$hostpy" - "$spec_template" "$spec" "$port" "$out" <<'EOF'
import json, sys
template, target, port, outdir = sys.argv[1:]
with open(template) as f:
    spec = json.load(f)
for server in spec["servers"]:
    server["url"] = server["url"].replace("PORT", port)
spec["outdir"] = outdir
with open(target, "w") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
EOF
log "running wstest -m fuzzingclient -s ${spec#"$root"/} (output in ${out#"$root"/}/wstest.log)"
wstest_started=$(date +%s)
wstest_rc=0
# In the background and waited for, so that a TERM or INT to this script is handled at once.
(cd "$out" && exec timeout "${AUTOBAHN_TIMEOUT:-900}" "${suite[@]}" wstest -m fuzzingclient -s "$spec") \
  >"$out/wstest.log" 2>&1 &
wstest_pid=$!
wait "$wstest_pid" || wstest_rc=$?
wstest_pid=""
log "wstest finished in $(($(date +%s) - wstest_started))s (exit $wstest_rc)"
if [ "$wstest_rc" != 0 ]; then
  tail -n 20 "$out/wstest.log" >&2
  [ "$wstest_rc" = 124 ] && log "wstest timed out after ${AUTOBAHN_TIMEOUT:-900}s"
fi
kill -0 "$server_pid" 2>/dev/null || log "warning: the server is no longer running (see server.log)"

# ---------------------------------------------------------------------------------------------
# 5. Check
# ---------------------------------------------------------------------------------------------
check_rc=0
"${suite[@]}" python "$root/conformance/autobahn/check_report.py" "$out" --spec "$spec" --agent chatty ||
  check_rc=$?
log "report: ${out#"$root"/}/index.html"
if [ "$check_rc" != 0 ] || [ "$wstest_rc" != 0 ]; then
  exit 1
fi
