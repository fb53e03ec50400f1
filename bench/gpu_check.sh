#!/usr/bin/env bash
# The one prepared GPU check (what it checks: bench/gpu_check.py's docstring): (a) CUDA against
# the CPU, (b) `harness run` on CUDA, (c) ViT-B/32 throughput, (d) the datacomp-small preset at
# scale on synthetic shards with projected run times, (e) DDP under torchrun on every GPU (two or
# more), (f) a Ray sweep with one run per GPU (when Ray is installed), (g) FSDP2 (budget.shard=fsdp):
# fully_shard on one GPU against the plain towers, and under torchrun on every GPU (two or more).
#
# On the lent GPU machine the device tool runs, in the repo root of a copy of the working tree:
#
#     bash bench/gpu_check.sh          # -> $OUT/gpu_check.txt, $OUT/gpu_check.json, $OUT/gpu_check_setup.log
#
# (device tool: command "bash bench/gpu_check.sh", timeout_s 420, carry [".whl"] when fetched).
# The whole script, setup included, stays under GPU_CHECK_SECONDS (default 290) of wall time.
#
# Setup. The device machine reaches no network. Its image has python3 with a CUDA torch, numpy,
# scipy, rich, pyyaml, matplotlib, ... but not open_clip_torch, ftfy, pydantic or mlflow
# (/work/.library/device/KINDS.md). When the harness is not importable with everything it needs,
# this script makes a venv in /tmp that sees the image's packages (--system-site-packages, plus a
# .pth file naming the image interpreter's own site-packages, since that interpreter is itself a
# venv: the CUDA torch stays), installs the wheels carried in .whl/ (if any), then
# `pip install -e ".[dev]"` when PyPI answers, else `pip install --no-deps -e .` (offline: this
# registers the objectives' entry points; if the image's setuptools is too old for pyproject.toml,
# the package metadata is written by hand instead), and runs whatever can run: a section whose
# packages are missing is reported as skipped, not failed. To carry the wheels, run once on a
# machine with PyPI access, in the repo root:
#
#     bash bench/gpu_check.sh --fetch-wheels        # open_clip + pydantic (~6 MB): sections (a), (c)
#     bash bench/gpu_check.sh --fetch-wheels full   # + mlflow and what it needs that the image lacks
#                                                   # (~37 MB, 30-odd wheels): section (b) too
#
# which fills .whl/ (cp312, manylinux x86-64) and adds /.whl/ to .git/info/exclude.
#
# Environment: PYTHON (the interpreter to try first), GPU_CHECK_SECONDS (total wall time),
# GPU_CHECK_ARGS (arguments for gpu_check.py, default "--device cuda"; e.g. on a CPU:
# GPU_CHECK_ARGS="--smoke --device cpu" bash bench/gpu_check.sh), GPU_CHECK_FORCE_SETUP=1 (make
# the venv and install even when nothing is missing: to test the setup path), GPU_CHECK_OFFLINE=1
# (never try PyPI).
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
START=$SECONDS
BUDGET=${GPU_CHECK_SECONDS:-290}
export PYTHONUNBUFFERED=1

# -- here, with PyPI: wheels for the device machine ------------------------------------------------
if [ "${1:-}" = "--fetch-wheels" ]; then
    DEST=${WHEEL_DIR:-$ROOT/.whl}
    PYF=${PYTHON:-python3}
    PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    # pinned to what this project's venv runs; --no-deps: everything else they need is in the image
    MIN=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 pydantic==2.14.4 pydantic-core==2.50.5
         annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0)
    mkdir -p "$DEST" || exit 2
    "$PYF" -m pip download -q --no-deps "${PLAT[@]}" -d "$DEST" "${MIN[@]}" || exit 1
    if [ "${2:-}" = "full" ]; then
        # resolve mlflow's closure for the device's Python without downloading it, keep what the
        # image lacks (its package list: /work/.library/device/KINDS.md), download those alone
        REPORT=$(mktemp)
        "$PYF" -m pip install -q --dry-run --ignore-installed --report "$REPORT" "${PLAT[@]}" \
            --target "$(mktemp -d)" mlflow==3.17.2 || exit 1
        mapfile -t EXTRA < <("$PYF" - "$REPORT" "${MIN[@]}" <<'EOF'
import json, re, sys
from pathlib import Path
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = set()
kinds = Path("/work/.library/device/KINDS.md")
if kinds.exists():
    m = re.search(r"Packages: (.*?)\.\s*$", kinds.read_text(), re.M)
    if m:
        have = {norm(p.strip()) for p in m.group(1).split(",")}
if not have:
    sys.exit("the device image's package list (/work/.library/device/KINDS.md) was not found")
pinned = {norm(a.split("==")[0]) for a in sys.argv[2:]}
for item in json.load(open(sys.argv[1]))["install"]:
    md = item["metadata"]
    name = norm(md["name"])
    cuda_stack = name.startswith(("nvidia-", "torch", "triton"))  # the image's own CUDA torch stays
    if name not in have and name not in pinned and not cuda_stack:
        print(f"{md['name']}=={md['version']}")
EOF
)
        if [ ${#EXTRA[@]} -gt 0 ]; then
            "$PYF" -m pip download -q --no-deps "${PLAT[@]}" -d "$DEST" "${EXTRA[@]}" || exit 1
        fi
        rm -f "$REPORT"
    fi
    if [ -z "${WHEEL_DIR:-}" ] && [ -d .git ] && ! grep -qx '/.whl/' .git/info/exclude 2>/dev/null; then
        echo '/.whl/' >> .git/info/exclude
    fi
    echo "wheels in $DEST: $(ls "$DEST" | wc -l) files, $(du -sh "$DEST" | cut -f1)"
    ls "$DEST"
    echo "call the device tool with carry [\".whl\"] (the working tree travels too: 64 MiB in all)"
    exit 0
fi

# -- on the device machine ------------------------------------------------------------------------
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}
mkdir -p "$OUT"
LOG=$OUT/gpu_check_setup.log
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

PY=
for c in "${PYTHON:-}" python3 /opt/torch/.venv/bin/python3 python; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1 && { PY=$(command -v "$c"); break; }
done
if [ -z "$PY" ]; then
    say "no Python with torch found (tried \$PYTHON, python3, /opt/torch/.venv/bin/python3, python)"
    printf 'gpu_check: FAIL: no Python with torch on this machine\n' > "$OUT/gpu_check.txt"
    exit 1
fi

# what is missing for the harness (packages, and the package's entry points)
missing() {
    "$PY" - <<'EOF' 2>>"$LOG"
import importlib.util
from importlib.metadata import entry_points
need = ["torch", "numpy", "yaml", "rich", "pydantic", "open_clip", "ftfy", "mlflow"]
out = [m for m in need if importlib.util.find_spec(m) is None]
if not any(e.name == "clip" for e in entry_points(group="harness.objectives")):
    out.append("entry-points")
print(" ".join(out))
EOF
}

SETUP="python $PY"
MISSING=$(missing)
say "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1))"
say "missing before setup: ${MISSING:-nothing}"
if [ -n "$MISSING" ] || [ -n "${GPU_CHECK_FORCE_SETUP:-}" ]; then
    VENV=/tmp/gpu-check-venv
    TARGET=()  # pip --target DIR when no working venv could be made
    # the image's python3 is itself a venv (/opt/torch/.venv): a venv made from it sees the base
    # interpreter's packages, not that venv's, so its site-packages are linked in with a .pth file
    PARENT_SITE=$("$PY" -c "import site; print('\n'.join(site.getsitepackages()))" 2>>"$LOG")
    if "$PY" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1 || \
       "$PY" -m venv --system-site-packages --without-pip "$VENV" >>"$LOG" 2>&1; then
        VSITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" 2>>"$LOG")
        [ -n "$VSITE" ] && printf '%s\n' "$PARENT_SITE" > "$VSITE/_gpu_check_parent.pth"
    fi
    if "$VENV/bin/python" -c "import torch" >>"$LOG" 2>&1 && "$VENV/bin/python" -m pip --version >>"$LOG" 2>&1; then
        PY=$VENV/bin/python
        SETUP="$SETUP; venv $VENV (also sees $(echo "$PARENT_SITE" | head -1))"
    else
        say "no working venv (see above); installing with pip --target /tmp/gpu-check-site"
        TARGET=(--target /tmp/gpu-check-site)
        export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
        SETUP="$SETUP; pip --target /tmp/gpu-check-site"
    fi
    PIP=("$PY" -m pip --disable-pip-version-check)
    if compgen -G ".whl/*.whl" >/dev/null; then
        if "${PIP[@]}" install -q --no-index --no-deps --no-compile ${TARGET[@]+"${TARGET[@]}"} .whl/*.whl >>"$LOG" 2>&1; then
            SETUP="$SETUP; $(ls .whl/*.whl | wc -l) carried wheels"
        else
            say "installing the carried wheels failed (see above)"
            SETUP="$SETUP; carried wheels FAILED"
        fi
    fi
    if [ ${#TARGET[@]} -eq 0 ] && [ -z "${GPU_CHECK_OFFLINE:-}" ] && "$PY" -c "import socket; socket.create_connection(('pypi.org', 443), timeout=3)" >/dev/null 2>&1; then
        say "PyPI answers: pip install -e .[dev]"
        if timeout 150 "${PIP[@]}" install -q -e ".[dev]" >>"$LOG" 2>&1; then
            SETUP="$SETUP; pip install -e .[dev]"
        else
            say "pip install -e .[dev] failed (see above)"
        fi
    else
        say "PyPI unreachable (or no venv): offline install"
    fi
    if [ -n "$(missing | grep -o entry-points)" ] || [ -n "${GPU_CHECK_FORCE_SETUP:-}" ]; then
        if [ ${#TARGET[@]} -eq 0 ] && "${PIP[@]}" install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG" 2>&1; then
            SETUP="$SETUP; pip install --no-deps -e ."
        else
            say "pip install --no-deps -e . failed (see above; an old setuptools cannot read pyproject's license)"
            # last resort: the package's metadata by hand, so its entry points (objectives, tasks) exist
            META=/tmp/gpu-check-meta
            if "$PY" - "$META" >>"$LOG" 2>&1 <<'EOF'
import sys, tomllib
from pathlib import Path
proj = tomllib.loads(Path("pyproject.toml").read_text())["project"]
d = Path(sys.argv[1]) / f"{proj['name'].replace('-', '_')}-{proj['version']}.dist-info"
d.mkdir(parents=True, exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {proj['name']}\nVersion: {proj['version']}\n")
groups = {"console_scripts": proj.get("scripts", {}), **proj.get("entry-points", {})}
(d / "entry_points.txt").write_text("".join(
    f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))
EOF
            then
                export PYTHONPATH="$ROOT:$META${PYTHONPATH:+:$PYTHONPATH}"
                SETUP="$SETUP; package metadata written by hand (pip -e failed)"
            fi
        fi
    fi
    MISSING=$(missing)
    say "missing after setup: ${MISSING:-nothing}"
fi
[ -n "$MISSING" ] && SETUP="$SETUP; still missing: $MISSING"
export GPU_CHECK_SETUP="$SETUP ($((SECONDS - START)) s)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

LEFT=$((BUDGET - (SECONDS - START) - 5))
if [ "$LEFT" -lt 60 ]; then
    say "only $LEFT s left after the setup: not enough for the checks"
    printf 'gpu_check: SKIPPED: setup took %s s of %s\n' "$((SECONDS - START))" "$BUDGET" > "$OUT/gpu_check.txt"
    exit 1
fi
say "setup done in $((SECONDS - START)) s; running gpu_check.py with ${LEFT} s"
# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of words
timeout -k 10 "$LEFT" "$PY" bench/gpu_check.py ${GPU_CHECK_ARGS:---device cuda} --out "$OUT" --time-budget "$((LEFT - 10))"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    printf '\nSTOPPED by the shell timeout after %s s (exit %s): the report above is partial\n' "$((SECONDS - START))" "$rc" | tee -a "$OUT/gpu_check.txt"
fi
say "gpu_check.py exit code $rc; $((SECONDS - START)) s in all"
exit "$rc"
