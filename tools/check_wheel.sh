#!/usr/bin/env bash
# Build mmcoa's wheel (python -m build) and check that it installs into a fresh venv and runs.
#
#   tools/check_wheel.sh                    # fresh venv, the wheel with its dependencies at the
#                                           # tested versions (pip install -c constraints.txt):
#                                           # several GB (torch with CUDA), from the local disk or PyPI
#   tools/check_wheel.sh --reuse-deps .venv # fresh venv that sees the dependencies of an existing
#                                           # venv (a .pth line), the wheel installed --no-deps: seconds
#
# Checks: every data file tracked under src/mmcoa (model configs, filter_words.txt) is in the
# wheel; in the fresh venv `mmcoa --help` runs, mmcoa is imported from the wheel (not from
# src/), `mmcoa models` lists the tiny models (their JSON configs are package data) and a
# tiny-clip encodes an image. Needs python3 (3.11) with venv; KEEP=1 keeps the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
REUSE=""
if [ "${1:-}" = "--reuse-deps" ]; then
  REUSE=$(cd "${2:?--reuse-deps needs a venv folder}" && pwd)
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcoa-wheel.XXXXXX")
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi
step() { printf '== %s\n' "$*"; }

step "build the wheel ($WORK/dist)"
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/pip" install --quiet build
"$WORK/build-env/bin/python" -m build --wheel --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
  || { tail -20 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/mmcoa-*.whl)
echo "$WHEEL"

step "package data in the wheel"
git ls-files src/mmcoa | grep -v '\.py$' | sed 's|^src/||' >"$WORK/data-files"
"$PYTHON" - "$WHEEL" "$WORK/data-files" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
wanted = [line.strip() for line in open(sys.argv[2]) if line.strip()]
missing = [w for w in wanted if w not in names]
print(f"{len(wanted) - len(missing)}/{len(wanted)} data files:", ", ".join(wanted))
sys.exit(f"missing from the wheel: {', '.join(missing)}" if missing else 0)
EOF

step "install into a fresh venv ($WORK/venv)"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
if [ -n "$REUSE" ]; then
  # The existing venv's packages on sys.path (after the fresh venv's own), not its .pth files:
  # an editable mmcoa there is not activated, so mmcoa can only come from the wheel.
  "$REUSE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
    >"$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_reused_deps.pth"
  "$VPY" -m pip install --quiet --no-deps "$WHEEL"
else
  "$VPY" -m pip install --quiet -c "$ROOT/constraints.txt" "$WHEEL"
fi

step "run it"
cd "$WORK"  # away from src/
"$WORK/venv/bin/mmcoa" --help | head -3
"$WORK/venv/bin/mmcoa" models
HF_HUB_OFFLINE=1 "$VPY" - "$ROOT/tools" <<'EOF'
import sys, torch, mmcoa, mmcoa.cli
from importlib import metadata
assert sys.prefix in mmcoa.__file__, f"mmcoa imported from {mmcoa.__file__}, not the wheel"
# every distribution imported by `import mmcoa.cli` is a declared dependency of the wheel (no
# extras): with --reuse-deps the fresh venv sees more than a real install would have
sys.path.insert(0, sys.argv[1])
from freeze_constraints import closure
declared = {name.lower().replace("_", "-") for name in closure("mmcoa", ())}
from packaging.requirements import Requirement
optional = {Requirement(r).name.lower().replace("_", "-") for r in metadata.requires("mmcoa")
            if "extra ==" in r}  # the extras' own packages: imports guarded by try/except
owners = metadata.packages_distributions()
imported = {d.lower().replace("_", "-") for m in list(sys.modules) if "." not in m for d in owners.get(m, ())}
undeclared = sorted(imported - declared - optional - {"mmcoa", "pip", "setuptools"})
assert not undeclared, f"imported but not declared in the wheel's dependencies: {undeclared}"
model = mmcoa.load_model("tiny-clip")
print("mmcoa", mmcoa.__file__, "| tiny-clip image features", tuple(model.encode_image(torch.rand(1, 3, 32, 32)).shape))
EOF
step "wheel OK: $(basename "$WHEEL")"
