# shellcheck shell=bash
# Sourced by hack/kcp, hack/test and hack/bench: makes a fresh clone runnable.
#
#   * creates .venv (python3 -m venv) when missing;
#   * installs the project editable with the [test] extras when it is not installed yet or when
#     setup.cfg / pyproject.toml changed since the last install (stamp file in .venv);
#   * kcp_ensure_debian BINARY:PACKAGE ... installs Debian packages whose binary is missing.
#
# Environment: PYTHON (default python3) picks the interpreter for a new venv;
# KCP_NO_BOOTSTRAP=1 skips the install check (the venv must then exist).

set -euo pipefail

KCP_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KCP_VENV="${KCP_REPO_ROOT}/.venv"
KCP_STAMP="${KCP_VENV}/.kcp-install-stamp"

_kcp_log() { printf '[bootstrap] %s\n' "$*" >&2; }

# Debian packages that hack/test needs, as BINARY:PACKAGE. Add entries here when a test suite
# starts needing a system binary.
KCP_TEST_DEBIAN_DEPS=(
    "etcd:etcd-server"   # the etcd storage backend: the tests start their own etcd processes
)

_kcp_apt_updated=0
# kcp_ensure_debian BINARY:PACKAGE... -- apt-get install the packages whose binary is not on PATH.
kcp_ensure_debian() {
    local missing=() spec bin pkg
    for spec in "$@"; do
        bin="${spec%%:*}"; pkg="${spec#*:}"
        if ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$bin" ]]; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    _kcp_apt_install "${missing[@]}"
}

_kcp_apt_install() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
            _kcp_log "missing Debian packages: $* (not root and no sudo; install them yourself)"
            return 1
        fi
    fi
    _kcp_log "installing Debian packages: $*"
    if ((_kcp_apt_updated == 0)); then
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        _kcp_apt_updated=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$@" >&2
}

_kcp_install_hash() {
    cat "${KCP_REPO_ROOT}/setup.cfg" "${KCP_REPO_ROOT}/pyproject.toml" 2>/dev/null | sha256sum | cut -d' ' -f1
}

_kcp_bootstrap_locked() {
    if [[ ! -x "${KCP_VENV}/bin/python" ]]; then
        local py="${PYTHON:-python3}"
        _kcp_log "creating ${KCP_VENV} with $($py --version 2>&1)"
        if ! "$py" -m venv "${KCP_VENV}" >&2; then
            # Debian's own python3 needs python3-venv for ensurepip.
            rm -rf "${KCP_VENV}"
            _kcp_apt_install python3-venv
            "$py" -m venv "${KCP_VENV}" >&2
        fi
    fi
    local want have=""
    want="$(_kcp_install_hash)"
    [[ -f "${KCP_STAMP}" ]] && have="$(cat "${KCP_STAMP}")"
    if [[ "$want" != "$have" || ! -x "${KCP_VENV}/bin/kcp" ]]; then
        _kcp_log "installing kcp-virtual (editable, [test] extras) into .venv ..."
        "${KCP_VENV}/bin/python" -m pip install --disable-pip-version-check -q \
            -e "${KCP_REPO_ROOT}[test]" >&2
        echo "$want" >"${KCP_STAMP}"
        _kcp_log "done"
    fi
}

kcp_bootstrap() {
    if [[ "${KCP_NO_BOOTSTRAP:-}" == 1 && -x "${KCP_VENV}/bin/python" ]]; then
        return 0
    fi
    mkdir -p "${KCP_VENV}"
    # Serialize concurrent bootstraps (e.g. hack/test and hack/kcp started together).
    if command -v flock >/dev/null 2>&1; then
        (
            flock 9
            _kcp_bootstrap_locked
        ) 9>"${KCP_VENV}/.bootstrap.lock"
    else
        _kcp_bootstrap_locked
    fi
}
