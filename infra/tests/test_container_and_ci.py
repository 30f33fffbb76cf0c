"""Static invariants of the Dockerfile and the GitHub workflows (the parts hadolint and
actionlint do not know about: the contract with the server and with the deploy pipeline)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

APP_PORT = 8080
METRICS_PORT = 9090


# ----------------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        lines.append(buf)
        buf = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(instructions):
    """List of stages, each a list of instructions starting with its FROM."""
    result = []
    for ins in instructions:
        if ins[0] == "FROM":
            result.append([ins])
        elif result:
            result[-1].append(ins)
    return result


def check_dockerfile(root: Path) -> None:
    ins = dockerfile_instructions(root / "Dockerfile")
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
        if word == "FROM":
            break
    st = stages(ins)
    assert len(st) >= 2, "multi-stage build expected"

    def image_of(from_args: str) -> str:
        image = [a for a in from_args.split() if not a.startswith("--")][0]
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)

    for stage in st:
        image = image_of(stage[0][1])
        if ":" not in image and "@" not in image:
            # a reference to an earlier stage is fine
            names = [s[0][1].split()[-1] for s in st if " AS " in s[0][1].upper()]
            assert image in names, f"base image {image} must be pinned to a tag"
            continue
        tag = image.split("@")[0].rsplit(":", 1)[-1]
        assert tag != "latest" and "${" not in tag, f"base image {image} must be pinned (not latest)"

    all_text = " ".join(r for _, r in ins)
    assert "cargo chef cook" in all_text and "cargo chef prepare" in all_text, "dependency caching with cargo-chef"
    assert re.search(r"cargo build --release --locked -p chatty\b", all_text), "build with cargo build --release --locked -p chatty"
    assert re.search(r"\bSQLX_OFFLINE=true\b", " ".join(r for w, r in ins if w in ("ENV", "ARG"))), "SQLX_OFFLINE=true must be set"

    runtime = st[-1]
    base = image_of(runtime[0][1])
    assert base.startswith("debian:bookworm") and "slim" in base, f"runtime must be debian bookworm-slim, got {base}"

    def last(word):
        found = [r for w, r in runtime if w == word]
        return found[-1] if found else None

    user = last("USER")
    assert user, "runtime stage must switch to a non-root USER"
    assert user.split(":")[0] not in ("root", "0"), "runtime USER must not be root"

    exposed = set()
    for w, r in runtime:
        if w == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in r.split()}
    assert exposed == {APP_PORT, METRICS_PORT}, f"EXPOSE exactly {APP_PORT} and {METRICS_PORT}, got {sorted(exposed)}"

    entry = last("ENTRYPOINT")
    assert entry, "ENTRYPOINT missing"
    parsed = json.loads(entry)  # exec form is a JSON array; shell form raises here
    assert parsed == ["chatty"] or parsed[-1].endswith("chatty"), f"ENTRYPOINT must exec chatty, got {parsed}"

    hc = last("HEALTHCHECK")
    assert hc and "CMD" in hc, "HEALTHCHECK missing"
    cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert cmd == ["chatty", "healthcheck"], f"HEALTHCHECK must run chatty healthcheck, got {cmd}"

    assert last("WORKDIR") == "/app", "runtime WORKDIR must be /app"
    copies = [r for w, r in runtime if w == "COPY"]
    assert any(re.search(r"(^|\s)config/?\s+/app/config/?$", c) for c in copies), "config/ must be copied to /app/config"
    signal = last("STOPSIGNAL")
    assert signal in (None, "SIGTERM", "15"), "the drain is triggered by SIGTERM"


def check_dockerignore(root: Path) -> None:
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("target/", ".git/", ".env"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    for kept in ("src", "actors", "migrations", "config", "Cargo.toml", "Cargo.lock", "loadtests"):
        assert not any(p.rstrip("/") == kept for p in patterns), f".dockerignore must not exclude {kept}"


# ----------------------------------------------------------------------------------------------
# Workflows
# ----------------------------------------------------------------------------------------------


def _workflow(root: Path, name: str) -> dict:
    data = yaml.safe_load((root / ".github/workflows" / name).read_text(encoding="utf-8"))
    # PyYAML reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(wf: dict):
    for job_name, job in wf["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, job, step


# Third-party code runs with the workflow's token: pin every action to a full commit SHA (a
# tag can be moved to other code); the version stays in a comment for Dependabot and readers.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def check_workflows_pinned_and_scoped(root: Path) -> None:
    names = sorted(p.name for p in (root / ".github/workflows").glob("*.yml"))
    assert {"ci.yml", "deploy.yml"} <= set(names)
    for name in names:
        wf = _workflow(root, name)
        assert "permissions" in wf, f"{name}: set top-level permissions"
        top = wf["permissions"]
        assert top != "write-all" and isinstance(top, dict), f"{name}: permissions must be an explicit map"
        assert all(v in ("read", "none") for v in top.values()), f"{name}: top-level permissions must be read-only"
        for job_name, job, step in _steps(wf):
            uses = step.get("uses")
            if not uses:
                continue
            if uses.startswith("docker://"):
                assert re.search(r":[\w.-]+$", uses) and not uses.endswith(":latest"), f"{name}/{job_name}: pin {uses}"
            else:
                assert PINNED.match(uses), f"{name}/{job_name}: action {uses} must be pinned to a commit SHA"


def check_ci(root: Path) -> None:
    wf = _workflow(root, "ci.yml")
    runs = " \n".join(str(s.get("run", "")) for _, _, s in _steps(wf))
    uses = [s.get("uses", "") for _, _, s in _steps(wf)]
    assert "cargo fmt --all -- --check" in runs
    assert re.search(r"cargo clippy .*-- -D warnings", runs), "clippy with -D warnings"
    assert "./scripts/test.sh" in runs, "the test job runs ./scripts/test.sh"
    assert any("cargo-deny" in u for u in uses) or "cargo audit" in runs or "cargo deny" in runs
    # cargo-deny reads deny.toml, for both lockfiles, in CI and on a daily schedule.
    assert (root / "deny.toml").exists(), "deny.toml (cargo-deny's policy) is missing"
    for wf_name in ("ci.yml", "dependencies.yml"):
        deny_wf = _workflow(root, wf_name)
        deny_jobs = [j for j in deny_wf["jobs"].values() if "cargo-deny" in str(j.get("steps"))]
        assert deny_jobs, f"{wf_name}: no cargo-deny job"
        text = str(deny_jobs[0])
        assert "deny.toml" in text, f"{wf_name}: cargo-deny must use deny.toml"
        assert "loadtests/Cargo.toml" in text, f"{wf_name}: cargo-deny must check loadtests/Cargo.lock too"
    assert "schedule" in _workflow(root, "dependencies.yml")["on"], "dependencies.yml must run on a schedule"
    assert "scripts/lint-deploy.sh" in runs, "CI runs the deployment lint"
    assert any(u.startswith("hashicorp/setup-terraform") for u in uses)
    assert any(u.startswith("docker/build-push-action") for u in uses), "CI builds the image"

    test_jobs = [j for j in wf["jobs"].values() if "./scripts/test.sh" in str(j.get("steps"))]
    assert len(test_jobs) == 1
    services = test_jobs[0].get("services", {})
    images = {str(s.get("image")) for s in services.values()}
    assert any(i.startswith("postgres:15") for i in images), "tests need a postgres:15 service container"
    assert any(i.startswith("redis:7") for i in images), "tests need a redis:7 service container"
    for s in services.values():
        assert "--health-cmd" in str(s.get("options", "")), "service containers must be health-gated"


def check_deploy(root: Path) -> None:
    wf = _workflow(root, "deploy.yml")
    steps = list(_steps(wf))
    by_action = {s["uses"].split("@")[0]: (job, s) for _, job, s in steps if "uses" in s}

    creds = by_action.get("aws-actions/configure-aws-credentials")
    assert creds, "deploy must use aws-actions/configure-aws-credentials"
    job, step = creds
    assert step.get("with", {}).get("role-to-assume"), "OIDC: role-to-assume, no access keys"
    assert "aws-access-key-id" not in step.get("with", {}), "no long-lived AWS keys"
    assert job.get("permissions", {}).get("id-token") == "write", "the deploy job needs id-token: write"

    assert "aws-actions/amazon-ecr-login" in by_action
    assert "aws-actions/amazon-ecs-render-task-definition" in by_action
    _, deploy_step = by_action.get("aws-actions/amazon-ecs-deploy-task-definition", (None, None))
    assert deploy_step, "deploy with aws-actions/amazon-ecs-deploy-task-definition"
    assert deploy_step["with"].get("wait-for-service-stability") is True, "wait-for-service-stability: true"
    build = by_action.get("docker/build-push-action")
    assert build and build[1]["with"].get("push") is True, "the image is pushed"

    runs = [str(s.get("run", "")) for _, _, s in steps]
    smoke = [r for r in runs if "chatty-loadtest" in r]
    assert smoke and re.search(r"cargo run --release( --locked)? -p chatty-loadtest -- smoke --url", smoke[0]), \
        "smoke test: cargo run --release -p chatty-loadtest -- smoke --url ..."

    # Steps run in order: the smoke test comes after the deploy (same job later, or a job that needs it).
    order = [s.get("uses", s.get("run", "")) for _, _, s in steps]
    deploy_idx = next(i for i, u in enumerate(order) if "amazon-ecs-deploy-task-definition" in u)
    smoke_idx = next(i for i, u in enumerate(order) if "chatty-loadtest" in u)
    assert smoke_idx > deploy_idx

    # The migrations run as a one-off task before the service rolls, and their failure stops it.
    # It runs a revision of the migration family (command `migrate`, the only task definition
    # carrying the schema owner's URL), rendered with the new image.
    migrate_idx = next((i for i, u in enumerate(order) if "aws ecs run-task" in u), None)
    assert migrate_idx is not None, "deploy must run `chatty migrate` as a one-off ECS task"
    run_step = steps[migrate_idx][2]
    arn_src = str(run_step.get("env", {}).get("TASK_DEFINITION_ARN", ""))
    reg = re.search(r"steps\.([\w-]+)\.outputs", arn_src)
    assert reg, "the migration task must run a revision registered by an earlier step"
    reg_step = next(s for _, _, s in steps if s.get("id") == reg.group(1))
    render = re.search(r"steps\.([\w-]+)\.outputs", str(reg_step.get("env", {}).get("TASK_DEFINITION", "")))
    assert render, "the registered migration revision must come from a rendered task definition"
    render_step = next(s for _, _, s in steps if s.get("id") == render.group(1))
    rendered_file = render_step["with"]["task-definition"]
    download = next((r for r in runs if rendered_file in r), "")
    fam = re.search(r'--task-definition "\$(\w+)"\s*\\?\s*\n?\s*--query taskDefinition > ' + re.escape(rendered_file), download)
    assert fam, f"{rendered_file} must be downloaded with describe-task-definition"
    family_vars = [str(s.get("env", {}).get(fam.group(1), "")) for _, _, s in steps if fam.group(1) in s.get("env", {})]
    assert any("vars.ECS_MIGRATE_TASK_FAMILY" in v for v in family_vars), \
        "the migration task must be a revision of the migration family (ECS_MIGRATE_TASK_FAMILY)"
    assert migrate_idx < deploy_idx, "the migrations must run before the service rolls"
    assert "aws ecs wait tasks-stopped" in order[migrate_idx] and "exitCode" in order[migrate_idx], \
        "the deploy must wait for the migration task and check its exit code"

    # Only a push to this repository's main deploys (a fork's PR from a branch named main also
    # completes a CI run "on main").
    trigger = wf["on"].get("workflow_run")
    if trigger is not None:
        cond = re.sub(r"\s+", " ", str(wf["jobs"]["deploy"].get("if", "")))
        for needed in (
            "github.event.workflow_run.conclusion == 'success'",
            "github.event.workflow_run.event == 'push'",
            "github.event.workflow_run.head_branch == 'main'",
            "github.event.workflow_run.head_repository.full_name == github.repository",
        ):
            assert needed in cond, f"deploy job must require {needed}"
    if "workflow_dispatch" in wf["on"]:
        cond = str(wf["jobs"]["deploy"].get("if", ""))
        assert "github.ref == 'refs/heads/main'" in cond, "a manual deploy must be of main only"


def check_supply_chain(root: Path) -> None:
    """Dependencies are watched (Dependabot for every ecosystem here), the code is scanned
    (CodeQL), and the image is scanned (failing on fixable criticals) with an SBOM kept."""
    dep = yaml.safe_load((root / ".github/dependabot.yml").read_text(encoding="utf-8"))
    ecosystems = {u["package-ecosystem"] for u in dep.get("updates", [])}
    missing = {"cargo", "npm", "github-actions", "docker", "terraform"} - ecosystems
    assert not missing, f"dependabot.yml lacks {sorted(missing)}"
    cargo_dirs = {d for u in dep["updates"] if u["package-ecosystem"] == "cargo" for d in u.get("directories", [u.get("directory")])}
    assert {"/", "/loadtests"} <= cargo_dirs, "dependabot must watch both Cargo lockfiles"

    codeql = _workflow(root, "codeql.yml")
    uses = [s.get("uses", "") for _, _, s in _steps(codeql)]
    assert any(u.startswith("github/codeql-action/analyze@") for u in uses), "codeql.yml must analyze"
    jobs = list(codeql["jobs"].values())
    assert all(j.get("permissions", {}).get("security-events") == "write" for j in jobs)

    ci = _workflow(root, "ci.yml")
    steps = [s for _, _, s in _steps(ci)]
    scans = [s for s in steps if s.get("uses", "").startswith(("anchore/scan-action@", "aquasecurity/trivy-action@"))]
    assert scans, "CI must scan the image"
    w = scans[0].get("with", {})
    fails = w.get("fail-build") is True or str(w.get("exit-code")) == "1"
    assert fails, "the image scan must fail the build"
    assert str(w.get("severity-cutoff", w.get("severity", ""))).lower().startswith("critical"), "fail on criticals"
    assert any(s.get("uses", "").startswith("anchore/sbom-action@") for s in steps), "CI must produce an SBOM of the image"


CHECKS = [check_dockerfile, check_dockerignore, check_workflows_pinned_and_scoped, check_ci, check_deploy, check_supply_chain]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_invariant(check, root):
    check(root)


MUTATIONS = {
    "root_user": (check_dockerfile, "Dockerfile", r"^USER 10001:10001$", "USER root"),
    "shell_entrypoint": (check_dockerfile, "Dockerfile", r'^ENTRYPOINT \["chatty"\]$', "ENTRYPOINT chatty serve"),
    "extra_port": (check_dockerfile, "Dockerfile", r"^EXPOSE 8080 9090$", "EXPOSE 8080 9090 22"),
    "no_sqlx_offline": (check_dockerfile, "Dockerfile", r"SQLX_OFFLINE=true", "SQLX_OFFLINE=false"),
    "latest_base": (check_dockerfile, "Dockerfile", r"^FROM debian:bookworm-slim", "FROM debian:latest"),
    "curl_healthcheck": (check_dockerfile, "Dockerfile", r'CMD \["chatty", "healthcheck"\]', 'CMD ["curl", "-f", "localhost:8080/readyz"]'),
    "unpinned_action": (check_workflows_pinned_and_scoped, ".github/workflows/ci.yml", r"actions/checkout@[0-9a-f]{40}", "actions/checkout@v5"),
    "no_stability_wait": (check_deploy, ".github/workflows/deploy.yml", r"wait-for-service-stability: true", "wait-for-service-stability: false"),
    "redis_6": (check_ci, ".github/workflows/ci.yml", r"image: redis:7", "image: redis:6"),
    "dependabot_no_docker": (check_supply_chain, ".github/dependabot.yml", r"^  - package-ecosystem: docker\n    directory: /\n    schedule:\n      interval: weekly\n", ""),
    "image_scan_never_fails": (check_supply_chain, ".github/workflows/ci.yml", r"fail-build: true", "fail-build: false"),
    "no_sbom": (check_supply_chain, ".github/workflows/ci.yml", r"anchore/sbom-action@[0-9a-f]{40}", "actions/upload-artifact@v4"),
    "deny_one_lockfile": (check_ci, ".github/workflows/dependencies.yml", r", loadtests/Cargo\.toml\]", "]"),
    "deny_unscheduled": (check_ci, ".github/workflows/dependencies.yml", r"^  schedule:\n    - cron: .*\n", ""),
    "deploy_from_forks": (check_deploy, ".github/workflows/deploy.yml", r"^\s*&& github\.event\.workflow_run\.head_repository\.full_name == github\.repository\)", "          )"),
    "deploy_any_event": (check_deploy, ".github/workflows/deploy.yml", r"^\s*&& github\.event\.workflow_run\.event == 'push'\n", ""),
    "dispatch_any_ref": (check_deploy, ".github/workflows/deploy.yml", r" && github\.ref == 'refs/heads/main'", ""),
    "no_migration_task": (check_deploy, ".github/workflows/deploy.yml", r"MIGRATE_TASK_FAMILY: \$\{\{ vars\.ECS_MIGRATE_TASK_FAMILY \}\}", "MIGRATE_TASK_FAMILY: ${{ vars.ECS_TASK_FAMILY }}"),
    "migration_exit_ignored": (check_deploy, ".github/workflows/deploy.yml", r"exitCode", "stopCode"),
}


@pytest.fixture
def repo_copy(root, tmp_path):
    dst = tmp_path / "repo"
    (dst / ".github").mkdir(parents=True)
    shutil.copytree(root / ".github/workflows", dst / ".github/workflows")
    shutil.copy2(root / ".github/dependabot.yml", dst / ".github/dependabot.yml")
    for f in ("Dockerfile", ".dockerignore", "deny.toml"):
        shutil.copy2(root / f, dst / f)
    return dst


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_check_fails_on_mutation(mutation, repo_copy):
    check, rel, pattern, repl = MUTATIONS[mutation]
    check(repo_copy)
    path = repo_copy / rel
    text, n = re.subn(pattern, repl, path.read_text(encoding="utf-8"), flags=re.M)
    assert n, f"mutation {mutation} matched nothing"
    path.write_text(text, encoding="utf-8")
    with pytest.raises((AssertionError, ValueError)):
        check(repo_copy)
