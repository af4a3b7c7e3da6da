# shellcheck shell=bash
# Sourced by ./run-mgpu and ./run-tests: make sure .venv exists and holds mgpu installed
# in editable mode with its dev extras, at the exact versions of .ci/constraints.txt, and
# that src/'s bytecode is up to date. Reinstalls only when pyproject.toml or the constraints
# (or the Python or the checkout's path) changed since the last install, so reruns cost
# ~nothing.
#   PYTHON=python3.12 ./run-tests     picks the interpreter used to create the venv.

# The stamp's first line says what was installed from (pyproject.toml, the constraints, the
# Python, the checkout's path); its second line, which extras ("dev", "dev,torch").
_mgpu_stamp_ok() {  # STAMP WANT EXTRAS: whether STAMP covers WANT with at least EXTRAS
    local have have_extras e
    have="$(sed -n 1p "$1" 2>/dev/null || true)"
    have_extras=",$(sed -n 2p "$1" 2>/dev/null || true),"
    [ "$have" = "$2" ] || return 1
    for e in ${3//,/ }; do
        case "$have_extras" in *",$e,"*) ;; *) return 1 ;; esac
    done
}

# mgpu_ensure_venv [EXTRAS]: EXTRAS of pyproject.toml to install besides mgpu (default
# "dev"; ./run-tests asks for "dev,torch", the torch tier's CPU build of PyTorch).
mgpu_ensure_venv() {
    local root venv python stamp want extras="${1:-dev}"
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    python="${PYTHON:-python3}"
    stamp="$venv/.mgpu-installed"

    if ! command -v "$python" >/dev/null 2>&1; then
        echo "error: $python not found: install Python 3.11 or newer (or set PYTHON=...)" >&2
        return 1
    fi
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
        if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: mgpu needs Python >= 3.11, $python is $("$python" -V 2>&1):" \
                 "set PYTHON=python3.11 (or newer)" >&2
            return 1
        fi
        echo "creating virtual environment in $venv" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv" || {
            echo "error: '$python -m venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2
            return 1
        }
    fi

    want="$(cat "$root/pyproject.toml" "$root/.ci/constraints.txt" | cksum)"
    want="$want $("$venv/bin/python" -V 2>&1) $root"
    if ! _mgpu_stamp_ok "$stamp" "$want" "$extras"; then
        if [ "$(sed -n 1p "$stamp" 2>/dev/null || true)" = "$want" ]; then
            extras="$extras,$(sed -n 2p "$stamp")"  # keep what is there
        fi
        mgpu_install "$root" "$venv" "$stamp" "$want" "$extras" || return 1
    fi
    # Bytecode for src/: with an editable install nothing writes it but Python's first
    # import, which writes nothing when PYTHONDONTWRITEBYTECODE is set, and then every
    # `mgpu` command compiles mgpu again (about as long as the interpreter takes to start,
    # bench/cli.py). compileall writes it regardless, and skips what is up to date.
    "$venv/bin/python" -m compileall -q "$root/src" >/dev/null || true
}

mgpu_install() {
    local root="$1" venv="$2" stamp="$3" want="$4" extras="$5"
    (
        # Two scripts starting at once must not install over each other.
        if command -v flock >/dev/null 2>&1; then
            exec 9>"$venv/.mgpu-install.lock"
            flock 9
        fi
        if _mgpu_stamp_ok "$stamp" "$want" "$extras"; then
            exit 0
        fi
        extras="$(printf '%s' "$extras" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -)"
        echo "installing mgpu and its extras [$extras] into $venv (pyproject.toml or" \
             ".ci/constraints.txt changed, or an extra is new)" >&2
        rm -f "$stamp"
        local pins="$root/.ci/constraints.txt"
        "$venv/bin/python" -m pip install --quiet -c "$pins" pip >&2 || true
        "$venv/bin/python" -m pip install --quiet -c "$pins" -e "$root[$extras]" >&2 || {
            echo "error: pip install -c .ci/constraints.txt -e '.[$extras]' failed (see" \
                 "above)" >&2
            exit 1
        }
        printf '%s\n%s\n' "$want" "$extras" >"$stamp"
    )
}
