"""Build jaxlab's API reference with pdoc, and check that every public name has a docstring.

  python tools/docs.py                 # the check, then the HTML into docs/api/
  python tools/docs.py --out DIR       # ... into DIR
  python tools/docs.py --check-only    # the check only, no HTML

The check walks every public module of jaxlab (no component starting with "_", so no
`__main__`) and, in each, the public names the module defines itself; where a module has
`__all__`, exactly the names in `__all__` (a re-export is checked where it is defined). It
looks at functions, classes and the public methods (and properties) of those classes, and
only at what is defined in jaxlab's source files: constants, submodules and names from other
packages are not checked, nor what dataclasses or Flax generate. A method without a docstring
of its own that overrides a documented method of a base class (e.g. a Flax module's `setup`)
inherits that docstring and counts as documented; a class's docstring is never inherited
(nor is the signature dataclasses puts in `__doc__` a docstring).

Each undocumented name is printed as `module.name` (`module.Class.method`), one per line on
stdout, with counts per module on stderr; the exit status is then 1 (0 when there are none).
The HTML is written even when names are missing.
"""
from __future__ import annotations

import os

os.environ["JAX_PLATFORMS"] = "cpu"  # before anything can import jax: never touch an accelerator

import argparse
import ast
import collections
import functools
import importlib
import inspect
import pkgutil
import re
import sys
import traceback
import types
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the source tree this script is in

import pdoc  # noqa: E402
import pdoc.extract  # noqa: E402
import pdoc.render  # noqa: E402

PACKAGE = "jaxlab"
PACKAGE_DIR = (ROOT / PACKAGE).resolve()


def public_modules() -> tuple[list[types.ModuleType], dict[str, str]]:
  """Imports every public module of jaxlab; returns them, sorted, and name -> error of those
  that failed to import."""
  root = importlib.import_module(PACKAGE)
  names = [PACKAGE]
  errors: dict[str, str] = {}
  walk_errors: list[str] = []
  for info in pkgutil.walk_packages(root.__path__, PACKAGE + ".", onerror=walk_errors.append):
    if any(part.startswith("_") for part in info.name.split(".")[1:]):
      continue  # private modules and __main__ (importing which would run a command line)
    names.append(info.name)
  names += walk_errors  # packages that failed to import: their import below reports why
  modules = []
  for name in sorted(set(names)):
    try:
      modules.append(importlib.import_module(name))
    except Exception:  # noqa: BLE001 - report every module that fails, not only the first
      errors[name] = traceback.format_exc()
  return modules, errors


def in_package(func) -> bool:
  """Whether a function's code lives in one of jaxlab's source files."""
  code = getattr(func, "__code__", None)
  if code is None:
    return False
  try:
    return Path(code.co_filename).resolve().is_relative_to(PACKAGE_DIR)
  except (OSError, ValueError):
    return False


def unwrap(obj):
  """The plain function behind a decorated one (jax.jit, functools.wraps, Flax's method wrappers)."""
  try:
    return inspect.unwrap(obj)
  except ValueError:  # a cycle of __wrapped__
    return obj


def as_function(obj):
  """The jaxlab function a class attribute or module global stands for, or None."""
  if isinstance(obj, (staticmethod, classmethod)):
    obj = obj.__func__
  elif isinstance(obj, property):
    obj = obj.fget
  elif isinstance(obj, functools.cached_property):
    obj = obj.func
  if obj is None or isinstance(obj, type) or not callable(obj):
    return None
  func = unwrap(obj)
  return func if inspect.isfunction(func) and in_package(func) else None


def class_is_jaxlab(cls: type) -> bool:
  module = sys.modules.get(cls.__module__)
  source = getattr(module, "__file__", None)
  return source is not None and Path(source).resolve().is_relative_to(PACKAGE_DIR)


@functools.cache
def class_docstrings(path: str) -> dict[str, bool]:
  """Qualified name -> whether the class definition has a docstring, for one source file."""
  tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
  found: dict[str, bool] = {}

  def visit(node: ast.AST, prefix: str) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.ClassDef):
        found[prefix + child.name] = bool(ast.get_docstring(child))
        visit(child, f"{prefix}{child.name}.")
      elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        visit(child, f"{prefix}{child.name}.<locals>.")
      else:
        visit(child, prefix)

  visit(tree, "")
  return found


def class_has_docstring(cls: type) -> bool:
  """Whether the class statement has a docstring (read from the source: dataclasses and Flax
  write a signature into a bare class's `__doc__`, and inspect.getdoc inherits a base's)."""
  try:
    path = inspect.getsourcefile(cls)
  except TypeError:
    path = None
  if path:
    has = class_docstrings(str(Path(path).resolve())).get(cls.__qualname__)
    if has is not None:
      return has
  return bool((cls.__dict__.get("__doc__") or "").strip())


def own_docstring(attr) -> str:
  """The docstring a class attribute (function, static/class method, property) carries."""
  if isinstance(attr, (staticmethod, classmethod)):
    attr = attr.__func__
  elif isinstance(attr, functools.cached_property):
    attr = attr.func
  if not (isinstance(attr, property) or callable(attr)) or isinstance(attr, type):
    return ""  # a plain value's __doc__ would be its type's
  return (getattr(attr, "__doc__", None) or "").strip()


def method_has_docstring(cls: type, name: str) -> bool:
  """Its own docstring, or that of the base-class method it overrides (Flax's `setup`, say)."""
  return any(own_docstring(base.__dict__[name]) for base in cls.__mro__
             if base is not object and name in base.__dict__)


def module_members(module: types.ModuleType) -> list[tuple[str, object]]:
  """The public names of a module to check: `__all__`, else the public names it defines."""
  if "__all__" in vars(module):
    return [(name, getattr(module, name)) for name in module.__all__ if hasattr(module, name)]
  members = []
  for name, obj in vars(module).items():
    if name.startswith("_") or isinstance(obj, types.ModuleType):
      continue
    if isinstance(obj, type):
      if obj.__module__ == module.__name__:
        members.append((name, obj))
    else:
      func = as_function(obj)
      if func is not None and func.__module__ == module.__name__:
        members.append((name, obj))
  return members


def check(modules: list[types.ModuleType]) -> list[tuple[str, str]]:
  """(module, name) for every undocumented public function, class and method."""
  missing: list[tuple[str, str]] = []
  seen: set[int] = set()

  def report(module_name: str, qualname: str) -> None:
    missing.append((module_name, qualname))

  def check_class(cls: type, module_name: str, display: str) -> None:
    if id(cls) in seen:
      return
    seen.add(id(cls))
    if not class_has_docstring(cls):
      report(module_name, display)
    fields = getattr(cls, "__dataclass_fields__", {})
    for attr_name, attr in vars(cls).items():
      if attr_name.startswith("_") or attr_name in fields:
        continue  # a dataclass field's default (a lambda, say) is no method
      if isinstance(attr, type):
        if class_is_jaxlab(attr) and attr.__qualname__ == f"{cls.__qualname__}.{attr_name}":
          check_class(attr, module_name, f"{display}.{attr_name}")
        continue
      func = as_function(attr)
      if func is None or id(func) in seen:
        continue
      seen.add(id(func))
      if not method_has_docstring(cls, attr_name):
        report(module_name, f"{display}.{attr_name}")

  for module in modules:
    for name, obj in module_members(module):
      if isinstance(obj, types.ModuleType):
        continue  # a submodule: checked as a module of its own
      if isinstance(obj, type):
        if not class_is_jaxlab(obj):
          continue
        defined_here = obj.__module__ == module.__name__ and obj.__qualname__ == name
        where = module.__name__ if defined_here else obj.__module__
        check_class(obj, where, name if defined_here else obj.__qualname__)
        continue
      func = as_function(obj)
      if func is None or id(func) in seen:
        continue  # a constant, an instance, or not defined in jaxlab
      seen.add(id(func))
      if not (func.__doc__ or "").strip():
        if func.__module__ == module.__name__ or "<locals>" in func.__qualname__:
          report(module.__name__, name)
        else:  # a re-export: name it where it is defined
          report(func.__module__, func.__qualname__)
  return missing


def build(modules: list[types.ModuleType], failed: list[str], out: Path) -> None:
  """The HTML reference of every public module. pdoc walks the package itself but skips the
  submodules a package's `__all__` leaves out (jaxlab.learngene.expansion, say): those are
  named explicitly; private modules and those that failed to import are left out (a "!" spec
  is a regex of module names to leave out)."""
  pdoc.render.configure(docformat="markdown", footer_text=f"{PACKAGE} API reference")
  # pdoc cannot evaluate some annotations (TYPE_CHECKING imports, tfds' own): it prints them as written
  warnings.filterwarnings("ignore", message="Error parsing type annotation", category=UserWarning)
  walked = set(pdoc.extract.walk_specs([PACKAGE]))
  extra = [m.__name__ for m in modules if m.__name__ not in walked]
  out.mkdir(parents=True, exist_ok=True)
  leave_out = [r"!.*\._"] + [f"!{re.escape(name)}$" for name in failed]
  pdoc.pdoc(PACKAGE, *extra, *leave_out, output_directory=out)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=ROOT / "docs" / "api",
                      help="where the HTML goes (default: docs/api/ in the repository)")
  parser.add_argument("--check-only", action="store_true", help="only check docstrings; write no HTML")
  args = parser.parse_args(argv)

  modules, errors = public_modules()
  for name, error in errors.items():
    print(f"{name}: import failed (not checked, not documented)\n{error}", file=sys.stderr)
  missing = check(modules)
  if not args.check_only:
    build(modules, list(errors), args.out)
    print(f"API reference of {len(modules)} modules in {args.out}", file=sys.stderr)
  for module_name, name in missing:
    print(f"{module_name}.{name}")
  if missing:
    counts = collections.Counter(module_name for module_name, _ in missing)
    print(f"{len(missing)} public names without a docstring:", file=sys.stderr)
    for module_name, count in sorted(counts.items()):
      print(f"  {count:4d}  {module_name}", file=sys.stderr)
  if errors:
    print(f"{len(errors)} modules failed to import: {', '.join(errors)}", file=sys.stderr)
  return 1 if missing or errors else 0


if __name__ == "__main__":
  sys.exit(main())
