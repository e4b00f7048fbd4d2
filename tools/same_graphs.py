"""Same graphs: does the current compiler emit, node for node, what commit 4af2b14 emitted?

What it proves. For every source graph and plan in the manifest, the compiled graph of the
current (installed, editable) vskip has the same graph inputs and outputs (names, element
types, dims, in order), the same nodes in the same order (op_type, domain, input and
output names, attributes byte for byte), the same initializers (name, dims, data type;
inline bytes equal, external offset/length equal), the same opset imports and the same
``vskip.plan`` / ``vskip.row_inputs`` metadata (as parsed JSON) as the compiled graph of
the compiler at commit 4af2b14, the state before the refactor. Node *names* are compared
too, but a name-only difference is reported on its own and is not a failure. Other
metadata, value_info, doc strings and the graph name are not compared.

The two sides never share code: ``baseline`` runs only the 4af2b14 tree (extracted with
``git archive``, laid out as its installed package under OUT/pkg, imported through
PYTHONPATH from a directory outside the repository; each step checks that every
``vskip_compile`` module it loaded came from OUT/pkg), and ``compare`` runs the ``vskip``
command of the current environment from /tmp.

    python tools/same_graphs.py baseline --out /tmp/equiv      # old side: sources, plans, old graphs
    python tools/same_graphs.py compare  --out /tmp/equiv      # new side + node-for-node comparison

    # quick runs / subsets (both subcommands):
    python tools/same_graphs.py baseline --out /tmp/equiv --families llava,gemma3 --opsets 23
    python tools/same_graphs.py compare  --out /tmp/equiv --families qwen2_vl --plans empty,every_visual

``baseline`` exports the tiny preset of every family (``tiny:<family>``) at opsets 20 and
23 with the old exporter, writes six plans per family and layer count under OUT/plans
(every action once by layer index mod 4, with freeze scope visual and
prefix_through_visual; layer 0 full and every later layer frozen, both scopes;
skip_visual_ffn everywhere; the empty plan) and compiles each pair with the old compiler
into OUT/old/<source>/<plan>.onnx. The pseudo-family ``bench24`` is the benchmark decoder
(tools/make_checkpoint.py, Qwen2-0.5B-sized, opset 23 only) with the four shipped
``bench24_*.json`` plans; it is built last, and skipped with a note when OUT has under
15 GB free. OUT/manifest.json lists every (source graph, plan, old graph); a later
baseline run with a filter replaces only the entries it rebuilt.

``compare`` compiles every manifest entry (filtered by --families/--opsets/--plans) with
``vskip compile SRC --plan P -o OUT/new/<source>/<plan>.onnx --force``, prints one line
per pair (SAME, SAME* for a name-only difference, DIFF with the first difference, FAIL
when the new compile failed) and a summary, and exits 1 if any pair differs or failed.
Compiled graphs written outside their source's directory carry a weight copy, so the
bench24 pairs need a few GB on each side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMIT = "4af2b14"
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "smolvlm", "internvl", "gemma3")
BIG = "bench24"                      # pseudo-family: the benchmark decoder
OPSETS = (20, 23)
BIG_OPSET = 23
BIG_PLANS = ("bench24_empty", "bench24_freeze_after2", "bench24_opskip_like", "bench24_vskip_like")
BIG_FREE_BYTES = 15 * 10**9
ACTIONS = ("full", "skip_visual_attention", "skip_visual_ffn", "freeze")
META_KEYS = ("vskip.plan", "vskip.row_inputs")

# Runs one old-tree step (a module with -m semantics, a script, or a line of code) and checks,
# before and after it, that every vskip_compile module loaded came from the old package.
_OLD_LAUNCHER = r"""
import os, runpy, sys
pkg, kind, target = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3]
def check():
    bad = [f"{n} from {getattr(m, '__file__', None)}" for n, m in list(sys.modules.items())
           if n.split('.')[0] == 'vskip_compile'
           and not os.path.realpath(getattr(m, '__file__', None) or '/').startswith(pkg + os.sep)]
    if bad:
        print('same_graphs: OLD-TREE STEP DID NOT USE', pkg, *bad, sep='\n  ', file=sys.stderr, flush=True)
        os._exit(3)
import vskip_compile
check()
sys.argv = [target, *sys.argv[4:]]
try:
    if kind == 'module':
        runpy.run_module(target, run_name='__main__', alter_sys=True)
    elif kind == 'path':
        runpy.run_path(target, run_name='__main__')
    else:
        exec(target, {'__name__': '__main__'})
finally:
    check()
"""


def log(message: str) -> None:
    print(message, flush=True)


class StepError(Exception):
    """A subprocess step failed; the message holds the command and the end of its log."""

    def __init__(self, message: str, rc: int = 1, last_line: str = "", log_path: Path | None = None):
        super().__init__(message)
        self.rc, self.last_line, self.log_path = rc, last_line, log_path


def run_step(cmd: list[str], log_path: Path, env: dict, cwd: Path) -> float:
    """Run ``cmd``, its stdout and stderr into ``log_path``; return seconds, raise StepError."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        text = log_path.read_text(errors="replace")
        if rc == 3 and "OLD-TREE STEP DID NOT USE" in text:
            sys.exit("same_graphs: FATAL: an old-tree step imported vskip_compile from outside the old "
                     f"package:\n{text[text.index('same_graphs: OLD-TREE'):]}")
        tail = text.strip().splitlines()[-8:]
        shown = " ".join("<old-tree launcher>" if arg == _OLD_LAUNCHER else str(arg) for arg in cmd)
        raise StepError(f"exit {rc} after {seconds:.0f} s: {shown}\n    " + "\n    ".join(tail)
                        + f"\n    (log: {log_path})", rc, tail[-1] if tail else "", log_path)
    return seconds


def check_out_dir(out: Path) -> Path:
    out = out.resolve()
    if out == REPO or REPO in out.parents:
        sys.exit(f"same_graphs: --out {out} is inside {REPO}; the old tree must run outside the repository")
    out.mkdir(parents=True, exist_ok=True)
    return out


def wipe(path: Path, out: Path) -> None:
    """Remove a file or directory, only ever below OUT."""
    assert out in path.resolve().parents, path
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


# --- baseline: the 4af2b14 side -------------------------------------------------------

def build_old_package(out: Path) -> Path:
    """Extract 4af2b14 to OUT/tree and lay it out as its installed package under OUT/pkg."""
    tree, pkg = out / "tree", out / "pkg"
    for path in (tree, pkg):
        if path.exists():
            wipe(path, out)
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", COMMIT], check=True, capture_output=True).stdout
    tar = tree / "tree.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as t:
        t.extractall(tree, filter="data")
    tar.unlink()
    # pyproject.toml at 4af2b14: vskip_compile.passes -> passes/, vskip_compile.models -> models/
    # (models/families/ comes with models/).
    shutil.copytree(tree / "vskip_compile", pkg / "vskip_compile")
    shutil.copytree(tree / "passes", pkg / "vskip_compile" / "passes")
    shutil.copytree(tree / "models", pkg / "vskip_compile" / "models")
    return pkg


class OldTree:
    """Runs old-tree steps: PYTHONPATH=OUT/pkg, cwd OUT, this interpreter, checked imports."""

    def __init__(self, out: Path, pkg: Path):
        self.out, self.pkg = out, pkg
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(pkg)}

    def _cmd(self, kind: str, target: str, args: list) -> list[str]:
        return [sys.executable, "-c", _OLD_LAUNCHER, str(self.pkg), kind, target, *map(str, args)]

    def cli(self, args: list, log_path: Path) -> float:
        return run_step(self._cmd("module", "vskip_compile.cli", args), log_path, self.env, self.out)

    def script(self, script: Path, args: list, log_path: Path) -> float:
        return run_step(self._cmd("path", str(script), args), log_path, self.env, self.out)

    def where(self) -> str:
        """Where the old package's vskip_compile.models.families comes from (checked)."""
        code = "import vskip_compile.cli, vskip_compile.passes, vskip_compile.models.families as f; print(f.__file__)"
        done = subprocess.run(self._cmd("code", code, []), env=self.env, cwd=self.out, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"same_graphs: FATAL: the old package does not import from {self.pkg}:\n{done.stderr}")
        return done.stdout.strip()


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def tiny_plans(example: dict, family: str, n: int) -> dict[str, dict]:
    """The six plans for an n-layer ``family`` decoder, by plan name."""
    def plan(scope: str, layers: dict, description: str) -> dict:
        return {"format": "vskip-plan", "version": 1, "model": {"family": family, "num_layers": n},
                "description": description, "freeze_scope": scope, "layers": layers}

    every = {str(i): ACTIONS[i % 4] for i in range(n)}
    frozen = {"0": "full", **({_span(1, n - 1): "freeze"} if n > 1 else {})}
    every_doc = f"example_tiny.json adapted: layer i takes action i mod 4 of {', '.join(ACTIONS)}."
    assert example["layers"] == {str(i): a for i, a in enumerate(ACTIONS)}, "example_tiny.json changed"
    return {
        "every_visual": plan("visual", every, every_doc),
        "every_prefix": plan("prefix_through_visual", every, every_doc),
        "frozen_visual": plan("visual", frozen, "Layer 0 full, every later layer frozen."),
        "frozen_prefix": plan("prefix_through_visual", frozen, "Layer 0 full, every later layer frozen."),
        "ffn_all": plan("visual", {_span(0, n - 1): "skip_visual_ffn"}, "skip_visual_ffn on every layer."),
        "empty": plan("visual", {}, "Every layer full."),
    }


def export_source(old: OldTree, out: Path, spec: str, name: str, opset: int) -> tuple[Path, dict, float]:
    directory = out / "sources" / name
    if directory.exists():
        wipe(directory, out)
    directory.parent.mkdir(parents=True, exist_ok=True)
    seconds = old.cli(["export", spec, "-o", directory, "--opset", opset, "--prefill-only"],
                      out / "logs" / "export" / f"{name}.log")
    sidecar = json.loads((directory / "vskip.json").read_text())
    return directory / sidecar["prefill"]["file"], sidecar, seconds


def compile_old(old: OldTree, out: Path, source: Path, source_name: str, plan_name: str, plan: Path) -> Path:
    target = out / "old" / source_name / f"{plan_name}.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    # --force: the plans of one source share OUT/old/<source>/, so the weight copy the first
    # compile wrote is there already (the old compiler replaces it only under --force).
    old.cli(["compile", source, "--plan", plan, "-o", target, "--force"],
            out / "logs" / "old" / source_name / f"{plan_name}.log")
    return target


def entry(group, family, opset, source_name, source, plan_name, plan, compiled) -> dict:
    """One manifest entry: a source graph, a plan file and the old compiler's graph."""
    return {"group": group, "family": family, "opset": opset, "source_name": source_name,
            "source": str(source), "plan_name": plan_name, "plan": str(plan), "old": str(compiled)}


def baseline(args) -> int:
    out = check_out_dir(Path(args.out))
    start = time.perf_counter()
    pkg = build_old_package(out)
    old = OldTree(out, pkg)
    log(f"old tree {COMMIT} -> {out / 'tree'}; package {pkg}; families from {old.where()}")
    example = json.loads((pkg / "vskip_compile" / "plans" / "example_tiny.json").read_text())
    entries, failures = [], []

    def build_tiny(family_opset):
        family, opset = family_opset
        name = f"{family}-o{opset}"
        try:
            source, sidecar, seconds = export_source(old, out, f"tiny:{family}", name, opset)
            n = sidecar["num_layers"]
            if sidecar["family"] != family:
                raise StepError(f"{name}: vskip.json says family {sidecar['family']!r}")
            log(f"exported {name}: {sidecar['family']}, {n} layers ({seconds:.0f} s)")
        except StepError as exc:
            return [], [f"export {name}: {exc}"]
        done, failed = [], []
        for plan_name, plan in tiny_plans(example, family, n).items():
            plan_path = out / "plans" / f"{family}-{n}L" / f"{plan_name}.json"
            write_json(plan_path, plan)
            try:
                compiled = compile_old(old, out, source, name, plan_name, plan_path)
                done.append(entry(family, family, opset, name, source, plan_name, plan_path, compiled))
            except StepError as exc:
                failed.append(f"old compile {name}/{plan_name}: {exc}")
        log(f"compiled {name}: {len(done)} of {len(done) + len(failed)} plans with the old compiler")
        return done, failed

    work = [(f, o) for f in args.families if f != BIG for o in args.opsets]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done, failed in pool.map(build_tiny, work):
            entries += done
            failures += failed
    for message in failures:
        log(f"FAILED {message}")

    if BIG in args.families and BIG_OPSET in args.opsets:
        free = shutil.disk_usage(out).free
        if free < BIG_FREE_BYTES:
            log(f"note: skipping {BIG}: {free / 1e9:.1f} GB free under {out}, it needs 15 GB")
        else:
            try:
                entries += build_big(old, out, pkg)
            except StepError as exc:
                failures.append(f"{BIG}: {exc}")
                log(f"FAILED {BIG}: {exc}")

    manifest_path = out / "manifest.json"
    rebuilt = {e["source_name"] for e in entries} | {f"{f}-o{o}" for f, o in work}
    kept = []
    if manifest_path.is_file():
        kept = [e for e in json.loads(manifest_path.read_text())["entries"] if e["source_name"] not in rebuilt
                and all(Path(e[k]).is_file() for k in ("source", "plan", "old"))]
    write_json(manifest_path, {"format": "same-graphs-manifest", "commit": COMMIT,
                               "entries": sorted(kept + entries, key=_entry_order)})
    log(f"baseline: {len(entries)} pairs built ({len(kept)} kept from the previous manifest), "
        f"{len(failures)} failures, {time.perf_counter() - start:.0f} s -> {manifest_path}")
    return 1 if failures else 0


def build_big(old: OldTree, out: Path, pkg: Path) -> list[dict]:
    ckpt = out / "big" / "ckpt"
    if ckpt.exists():
        wipe(ckpt, out)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    seconds = old.script(out / "tree" / "tools" / "make_checkpoint.py", ["-o", ckpt],
                         out / "logs" / "big" / "make_checkpoint.log")
    log(f"{BIG}: checkpoint {ckpt} ({seconds:.0f} s)")
    name = f"{BIG}-o{BIG_OPSET}"
    source, sidecar, seconds = export_source(old, out, str(ckpt), name, BIG_OPSET)
    log(f"exported {name}: {sidecar['family']}, {sidecar['num_layers']} layers ({seconds:.0f} s)")
    entries = []
    for plan_name in BIG_PLANS:
        plan_path = out / "plans" / BIG / f"{plan_name}.json"
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pkg / "vskip_compile" / "plans" / f"{plan_name}.json", plan_path)
        compiled = compile_old(old, out, source, name, plan_name, plan_path)
        log(f"compiled {name}/{plan_name} with the old compiler")
        entries.append(entry(BIG, sidecar["family"], BIG_OPSET, name, source, plan_name, plan_path, compiled))
    return entries


def _entry_order(e: dict):
    group = (FAMILIES + (BIG,)).index(e["group"]) if e["group"] in FAMILIES + (BIG,) else 99
    return group, e["opset"], e["source_name"], e["plan_name"]


# --- the comparison -------------------------------------------------------------------

def _value_infos(values) -> list[tuple]:
    """(name, elem type, dims) per graph input or output; a dim is an int, a param or None."""
    rows = []
    for v in values:
        t = v.type.tensor_type
        dims = None
        if t.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param")
                         else None for d in t.shape.dim)
        rows.append((v.name, t.elem_type, dims))
    return rows


def _attribute_bytes(attr) -> bytes:
    """An attribute's serialization; an external tensor's data file name is left out."""
    import onnx

    if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
        attr = _copy(attr)
        kept = [e for e in attr.t.external_data if e.key != "location"]
        del attr.t.external_data[:]
        attr.t.external_data.extend(kept)
    return attr.SerializeToString(deterministic=True)


def _copy(message):
    twin = type(message)()
    twin.CopyFrom(message)
    return twin


def _initializer_key(tensor):
    """What must match for an initializer: dims, type and its bytes or its external span."""
    import onnx
    from onnx import numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = {e.key: e.value for e in tensor.external_data}
        return (tuple(tensor.dims), tensor.data_type, "external", info.get("offset", "0"), info.get("length"))
    return (tuple(tensor.dims), tensor.data_type, "inline", numpy_helper.to_array(tensor).tobytes())


def _describe_init(key) -> str:
    dims, dtype, where, *rest = key
    span = f" offset {rest[0]} length {rest[1]}" if where == "external" else f" {len(rest[0])} bytes"
    return f"dims {list(dims)} type {dtype} {where}{span}"


def _metadata(model) -> dict:
    props = {p.key: p.value for p in model.metadata_props}
    parsed = {}
    for key in META_KEYS:
        try:
            parsed[key] = json.loads(props[key]) if key in props else None
        except json.JSONDecodeError:
            parsed[key] = ("not JSON", props[key])
    return parsed


def first_difference(old, new) -> tuple[str | None, str | None, int]:
    """(first difference or None, first node-name difference or None, name differences)."""
    import onnx

    def listed(what, a, b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"{what} {i}: old {x} vs new {y}"
        if len(a) != len(b):
            return f"{what}s: old has {len(a)}, new has {len(b)}"
        return None

    g, h = old.graph, new.graph
    for problem in (
        listed("graph input", _value_infos(g.input), _value_infos(h.input)),
        listed("graph output", _value_infos(g.output), _value_infos(h.output)),
    ):
        if problem:
            return problem, None, 0
    opsets = ({o.domain: o.version for o in old.opset_import}, {o.domain: o.version for o in new.opset_import})
    if opsets[0] != opsets[1]:
        return f"opset imports: old {opsets[0]} vs new {opsets[1]}", None, 0
    if len(g.node) != len(h.node):
        return f"node count: old {len(g.node)} vs new {len(h.node)}", None, 0

    first_name, name_diffs = None, 0
    for i, (a, b) in enumerate(zip(g.node, h.node)):
        where = f"node {i} ({a.op_type} {a.name!r})"
        for field in ("op_type", "domain"):
            if getattr(a, field) != getattr(b, field):
                return f"{where} {field}: old {getattr(a, field)!r} vs new {getattr(b, field)!r}", None, 0
        for field in ("input", "output"):
            x, y = list(getattr(a, field)), list(getattr(b, field))
            if x != y:
                return f"{where} {field}s: old {x} vs new {y}", None, 0
        attrs = ({t.name: _attribute_bytes(t) for t in a.attribute}, {t.name: _attribute_bytes(t) for t in b.attribute})
        if attrs[0] != attrs[1]:
            if attrs[0].keys() != attrs[1].keys():
                return f"{where} attribute names: old {sorted(attrs[0])} vs new {sorted(attrs[1])}", None, 0
            differing = sorted(k for k in attrs[0] if attrs[0][k] != attrs[1][k])
            x, y = (next(t for t in n.attribute if t.name == differing[0]) for n in (a, b))
            return (f"{where} attribute {differing[0]!r}: old {_short(onnx.helper.get_attribute_value(x))} "
                    f"vs new {_short(onnx.helper.get_attribute_value(y))}"), None, 0
        if a.name != b.name:
            name_diffs += 1
            first_name = first_name or f"node {i} ({a.op_type}) name: old {a.name!r} vs new {b.name!r}"

    inits = ({t.name: t for t in g.initializer}, {t.name: t for t in h.initializer})
    if inits[0].keys() != inits[1].keys():
        only_old, only_new = sorted(inits[0].keys() - inits[1].keys()), sorted(inits[1].keys() - inits[0].keys())
        return (f"initializer names: {len(only_old)} only in old {only_old[:3]}, "
                f"{len(only_new)} only in new {only_new[:3]}"), None, 0
    for name in inits[0]:
        x, y = _initializer_key(inits[0][name]), _initializer_key(inits[1][name])
        if x != y and x[:3] == y[:3] == x[:2] + ("inline",):
            at = next(k for k, (u, v) in enumerate(zip(x[3], y[3])) if u != v) if len(x[3]) == len(y[3]) else None
            return f"initializer {name!r}: {_describe_init(x)}, bytes differ (first at byte {at})", None, 0
        if x != y:
            return f"initializer {name!r}: old {_describe_init(x)} vs new {_describe_init(y)}", None, 0

    meta = (_metadata(old), _metadata(new))
    for key in META_KEYS:
        if meta[0][key] != meta[1][key]:
            return f"metadata {key}: old {_short(meta[0][key])} vs new {_short(meta[1][key])}", None, 0
    return None, first_name, name_diffs


def _short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def compare_files(old_path: Path, new_path: Path) -> tuple[str | None, str | None, int, int]:
    """first_difference for two files, plus the old graph's node count."""
    import onnx

    old, new = onnx.load(str(old_path), load_external_data=False), onnx.load(str(new_path), load_external_data=False)
    problem, first_name, name_diffs = first_difference(old, new)
    return problem, first_name, name_diffs, len(old.graph.node)


def compare(args) -> int:
    out = check_out_dir(Path(args.out))
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        sys.exit(f"same_graphs: {manifest_path}: no manifest; run `same_graphs.py baseline --out {out}` first")
    entries = [e for e in json.loads(manifest_path.read_text())["entries"]
               if e["group"] in args.families and e["opset"] in args.opsets
               and (not args.plans or e["plan_name"] in args.plans)]
    if not entries:
        sys.exit("same_graphs: no manifest entry matches the filters")

    vskip = Path(sys.executable).with_name("vskip")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import vskip_compile.cli as c; print(c.__file__)"],
                           env=env, cwd="/tmp", capture_output=True, text=True)
    if probe.returncode != 0:
        tail = "\n  ".join(probe.stderr.strip().splitlines()[-6:])
        log(f"current vskip does not import (from /tmp):\n  {tail}")
        return 1
    log(f"current vskip: {vskip} -> {probe.stdout.strip()}; {len(entries)} pairs")

    def one(e: dict) -> tuple[str, str]:
        label = f"{e['source_name']} / {e['plan_name']}"
        target = out / "new" / e["source_name"] / f"{e['plan_name']}.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            wipe(target, out)           # never compare a graph left by an earlier run
        try:
            run_step([str(vskip), "compile", e["source"], "--plan", e["plan"], "-o", str(target), "--force"],
                     out / "logs" / "new" / e["source_name"] / f"{e['plan_name']}.log", env, Path("/tmp"))
        except StepError as exc:
            line = f"FAIL  {label}: new compile failed (exit {exc.rc}): {exc.last_line}\n    (log: {exc.log_path})"
            if target.is_file():        # it failed after writing its graph: say how that graph compares
                problem, _, name_diffs, _ = compare_files(Path(e["old"]), target)
                line += ("\n    (it wrote its graph anyway; that graph "
                         + (f"differs: {problem})" if problem else
                            f"is the same{f', {name_diffs} node names differ' if name_diffs else ''})"))
            return "FAIL", line
        problem, first_name, name_diffs, nodes = compare_files(Path(e["old"]), target)
        if problem:
            return "DIFF", f"DIFF  {label}: {problem}"
        if name_diffs:
            return "NAMES", f"SAME* {label}: {nodes} nodes equal; {name_diffs} node names differ, first {first_name}"
        return "SAME", f"SAME  {label}: {nodes} nodes"

    start, counts = time.perf_counter(), {"SAME": 0, "NAMES": 0, "DIFF": 0, "FAIL": 0}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for status, line in pool.map(one, entries):
            counts[status] += 1
            log(line)
    log(f"summary: {len(entries)} pairs: {counts['SAME'] + counts['NAMES']} same "
        f"({counts['NAMES']} of them with node-name differences only), {counts['DIFF']} differ, "
        f"{counts['FAIL']} new compiles failed; {time.perf_counter() - start:.0f} s")
    return 1 if counts["DIFF"] or counts["FAIL"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("baseline", baseline), ("compare", compare)):
        p = sub.add_parser(name, help=f"{name} (see the module docstring)")
        p.add_argument("--out", required=True, help="work directory outside the repository, e.g. /tmp/equiv")
        p.add_argument("--families", default=",".join(FAMILIES + (BIG,)),
                       help=f"comma-separated; default all: {','.join(FAMILIES + (BIG,))}")
        p.add_argument("--opsets", default=",".join(map(str, OPSETS)), help="comma-separated; default 20,23")
        p.add_argument("--jobs", type=int, default=2, help="subprocesses at once (default 2)")
        if name == "compare":
            p.add_argument("--plans", default="", help="comma-separated plan names (default: every plan)")
        p.set_defaults(handler=handler)
    args = parser.parse_args(argv)
    args.families = [f for f in args.families.split(",") if f]
    unknown = set(args.families) - set(FAMILIES + (BIG,))
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}")
    args.opsets = [int(o) for o in args.opsets.split(",") if o]
    if set(args.opsets) - set(OPSETS):
        parser.error(f"opsets are {OPSETS}")
    if args.command == "compare":
        args.plans = [p for p in args.plans.split(",") if p]
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
