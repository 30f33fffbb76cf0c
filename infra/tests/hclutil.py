"""Small helpers over python-hcl2 (>= 7) output for the static invariant tests.

python-hcl2 keeps HCL syntax in its values: a string literal comes back as '"text"', an
expression as '${expr}', block labels as '"label"', and blocks carry '__is_block__' markers.
The helpers below turn that into plain Python values and resolve the simple references the
invariants need (var.X through the example environment's module calls and tfvars, local.X).
Anything they cannot resolve raises Unresolvable, so a test fails instead of guessing.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

META_KEYS = {"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"}

_VAR_RE = re.compile(r"^\$\{var\.([A-Za-z0-9_-]+)\}$")
_LOCAL_RE = re.compile(r"^\$\{local\.([A-Za-z0-9_-]+)\}$")
_REF_RE = re.compile(r"\b(var|local|module)\.([A-Za-z0-9_-]+)(?:\.([A-Za-z0-9_-]+))?")


class Unresolvable(Exception):
    """A value is an expression the helpers do not evaluate."""


def label(s: str) -> str:
    """'"aws_lb"' -> 'aws_lb'."""
    if isinstance(s, str) and len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        return s[1:-1]
    return s


def is_string_literal(v: Any) -> bool:
    return (
        isinstance(v, str)
        and len(v) >= 2
        and v[0] == '"'
        and v[-1] == '"'
        and "${" not in v
    )


def literal(v: Any) -> Any:
    """Plain Python value of an HCL literal (number, bool, string, list/map of literals)."""
    if isinstance(v, bool) or isinstance(v, (int, float)) or v is None:
        return v
    if is_string_literal(v):
        return v[1:-1].replace('\\"', '"')
    if isinstance(v, str) and v in ("${true}", "${false}"):
        return v == "${true}"
    if isinstance(v, str) and v == "${null}":
        return None
    if isinstance(v, list):
        return [literal(x) for x in v]
    if isinstance(v, dict):
        return {label(k): literal(x) for k, x in v.items() if k not in META_KEYS}
    raise Unresolvable(f"not a literal: {v!r}")


def clean(v: Any) -> Any:
    """Strip python-hcl2 metadata keys recursively (keeps HCL-syntax strings as they are)."""
    if isinstance(v, dict):
        return {label(k): clean(x) for k, x in v.items() if k not in META_KEYS}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v


@functools.lru_cache(maxsize=512)
def _parse(text: str) -> dict:
    return hcl2.loads(text)


def load_file(path: Path) -> dict:
    """Parsed HCL of a file; parses of identical content are cached (lark is slow)."""
    return copy.deepcopy(_parse(Path(path).read_text(encoding="utf-8")))


@dataclass
class Dir:
    """All .tf files of one directory (a module or an environment), merged."""

    path: Path
    resources: dict = field(default_factory=dict)  # (type, name) -> body
    data: dict = field(default_factory=dict)  # (type, name) -> body
    variables: dict = field(default_factory=dict)  # name -> body
    outputs: dict = field(default_factory=dict)  # name -> body
    locals: dict = field(default_factory=dict)  # name -> raw value
    modules: dict = field(default_factory=dict)  # name -> body
    text: str = ""

    @classmethod
    def load(cls, path: Path) -> "Dir":
        d = cls(path=path)
        files = sorted(path.glob("*.tf"))
        if not files:
            raise FileNotFoundError(f"no .tf files in {path}")
        for f in files:
            d.text += f.read_text(encoding="utf-8") + "\n"
            parsed = load_file(f)
            for block in parsed.get("resource", []):
                for rtype, by_name in block.items():
                    for rname, body in by_name.items():
                        d.resources[(label(rtype), label(rname))] = body
            for block in parsed.get("data", []):
                for rtype, by_name in block.items():
                    for rname, body in by_name.items():
                        d.data[(label(rtype), label(rname))] = body
            for block in parsed.get("variable", []):
                for vname, body in block.items():
                    d.variables[label(vname)] = body
            for block in parsed.get("output", []):
                for oname, body in block.items():
                    d.outputs[label(oname)] = body
            for block in parsed.get("locals", []):
                for lname, value in block.items():
                    if lname not in META_KEYS:
                        d.locals[lname] = value
            for block in parsed.get("module", []):
                for mname, body in block.items():
                    d.modules[label(mname)] = body
        return d

    def resource(self, rtype: str, rname: str) -> dict:
        try:
            return self.resources[(rtype, rname)]
        except KeyError:
            raise AssertionError(f"{self.path}: resource {rtype}.{rname} not found") from None

    def resources_of(self, rtype: str) -> dict:
        return {n: b for (t, n), b in self.resources.items() if t == rtype}


def first_block(body: dict, key: str) -> dict:
    blocks = body.get(key)
    if not blocks:
        raise AssertionError(f"block {key!r} missing")
    return blocks[0] if isinstance(blocks, list) else blocks


class Scope:
    """Resolves var.X / local.X / literals inside one module, given the inputs of its call."""

    def __init__(self, module: Dir, inputs: dict[str, Any] | None = None):
        self.module = module
        self.inputs = inputs or {}

    def var(self, name: str) -> Any:
        if name in self.inputs:
            return self.inputs[name]
        if name not in self.module.variables:
            raise AssertionError(f"{self.module.path}: var.{name} is not declared")
        body = self.module.variables[name]
        if "default" not in body:
            raise Unresolvable(f"var.{name} has no default and no input")
        return literal(body["default"])

    def value(self, v: Any) -> Any:
        if isinstance(v, str):
            m = _VAR_RE.match(v)
            if m:
                return self.var(m.group(1))
            m = _LOCAL_RE.match(v)
            if m:
                if m.group(1) not in self.module.locals:
                    raise AssertionError(f"{self.module.path}: local.{m.group(1)} is not declared")
                return self.value(self.module.locals[m.group(1)])
        if isinstance(v, dict):
            return {label(k): self.value(x) for k, x in v.items() if k not in META_KEYS}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        return literal(v)


class Environment:
    """An environment root (main.tf + variables.tf + terraform.tfvars.example) and the
    modules it calls. Module inputs are resolved as Terraform would for an apply with the
    example tfvars: tfvars value, else the environment variable's default."""

    def __init__(self, env_path: Path):
        self.env = Dir.load(env_path)
        tfvars = env_path / "terraform.tfvars.example"
        self.tfvars = (
            {k: literal(v) for k, v in load_file(tfvars).items() if k not in META_KEYS}
            if tfvars.exists()
            else {}
        )
        self.env_scope = Scope(self.env, self.tfvars)
        self._modules: dict[str, Dir] = {}

    def module_dir(self, name: str) -> Dir:
        if name not in self._modules:
            body = self.env.modules.get(name)
            if body is None:
                raise AssertionError(f"{self.env.path}: module {name!r} not called")
            source = literal(body["source"])
            self._modules[name] = Dir.load((self.env.path / source).resolve())
        return self._modules[name]

    def module_inputs(self, name: str) -> dict[str, Any]:
        """Arguments of `module "name"` that resolve to literal values."""
        body = self.env.modules[name]
        out = {}
        for k, v in body.items():
            if k in META_KEYS or k in ("source", "depends_on", "providers", "count", "for_each"):
                continue
            try:
                out[k] = self.env_scope.value(v)
            except Unresolvable:
                out[k] = _UNRESOLVED
        return out

    def scope(self, name: str) -> Scope:
        inputs = {k: v for k, v in self.module_inputs(name).items() if v is not _UNRESOLVED}
        unresolved = {k for k, v in self.module_inputs(name).items() if v is _UNRESOLVED}
        return _StrictScope(self.module_dir(name), inputs, unresolved)


class _Unresolved:
    def __repr__(self) -> str:
        return "<unresolved>"


_UNRESOLVED = _Unresolved()


class _StrictScope(Scope):
    def __init__(self, module: Dir, inputs: dict, unresolved: set):
        super().__init__(module, inputs)
        self.unresolved = unresolved

    def var(self, name: str) -> Any:
        if name in self.unresolved:
            raise Unresolvable(f"var.{name} is passed an expression the tests do not evaluate")
        return super().var(name)


def references(text: str) -> set[tuple[str, str, str | None]]:
    """All var.X, local.X, module.M.O references in HCL source text (comments stripped)."""
    no_comments = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    no_comments = re.sub(r"(?m)^\s*(#|//).*$", "", no_comments)
    return {(m.group(1), m.group(2), m.group(3)) for m in _REF_RE.finditer(no_comments)}
