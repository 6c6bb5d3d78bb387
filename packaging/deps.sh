#!/usr/bin/env bash
# Installs what certfleet's demo and tests need beyond Rust, on Debian/Ubuntu:
#   openssl     the real `openssl ca` / `openssl x509` the platforms use
#   slapd       real OpenLDAP serving the simulated vCenter's vmdir (STS certificate)
#   ldap-utils  ldapsearch / ldapmodify, as vCert and fixsts.sh use them
#   keytool     (default-jre-headless) the oVirt engine's JKS truststore
#   postgresql  real PostgreSQL + psql serving the simulated vCenter's VCDB (vpx_ext thumbprints)
#   ssh-keygen  (openssh-client) the oVirt serial console's OpenSSH certificates
#   promtool    (prometheus) checks and unit-tests the alert rules in packaging/monitoring/
#   sqlite3     the real sqlite3 for the simulated vCenter's Auto Deploy database (as vCert uses it)
#   packaging   rpm (rpm -qlp, rpm --root), systemd (systemd-analyze verify), binutils
#               (objdump: the glibc check), curl (/healthz), python3-venv (the packaging tools'
#               virtualenv; see packaging/pkgtools.sh) for build-packages.sh and test-packages.sh
#   vcsim       golang-go + golang-github-vmware-govmomi-dev: VMware's vCenter simulator, built
#               offline by packaging/build-vcsim.sh (ESXi host certificates, issue 13)
# protoc is not needed: the build uses the protoc shipped in the protoc-bin-vendored crate.
# Sourced by demo.sh and test.sh; safe to run again (installs only what is missing).
set -euo pipefail

certfleet_install_deps() {
    local need=()
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    [ -x /usr/sbin/slapd ] || need+=(slapd)
    command -v ldapsearch >/dev/null 2>&1 || need+=(ldap-utils)
    command -v pkill >/dev/null 2>&1 || need+=(procps)
    # keytool: oVirt engines keep a JKS truststore; the simulated engine builds it the same way.
    command -v keytool >/dev/null 2>&1 || need+=(default-jre-headless)
    # VCDB: the simulated vCenter runs Debian's postgres (as the postgres user) and real psql.
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
    command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
    # ssh-keygen: oVirt signs the vmconsole proxy and host OpenSSH certificates with it.
    command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
    # sqlite3: Auto Deploy keeps the vCenter thumbprint in a SQLite file (vCert updateAutoDeployDB).
    [ -x /usr/bin/sqlite3 ] || need+=(sqlite3)
    # Packaging (issue 9): build-packages.sh and test-packages.sh.
    command -v rpm >/dev/null 2>&1 || need+=(rpm)
    command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
    command -v objdump >/dev/null 2>&1 || need+=(binutils)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    # Monitoring kit (issue 12): promtool check/test rules (packaging/check-monitoring.sh).
    command -v promtool >/dev/null 2>&1 || need+=(prometheus)
    # vcsim (issue 13): Go and govmomi's source, simulator/ included.
    command -v go >/dev/null 2>&1 || need+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || need+=(golang-github-vmware-govmomi-dev)
    if [ ${#need[@]} -eq 0 ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${need[*]}" >&2; return 1; }
        sudo="sudo"
    fi
    echo "installing: ${need[*]}" >&2
    $sudo apt-get update -qq
    # slapd's postinst asks questions; take the defaults. The simulators run their own slapd.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The fuzz step (packaging/fuzz.sh) also needs cargo-fuzz and a C++ compiler (libFuzzer is
# built from source by the libfuzzer-sys crate). Called by fuzz.sh only.
certfleet_install_fuzz_deps() {
    if ! command -v c++ >/dev/null 2>&1; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends g++ >/dev/null
    fi
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing: cargo-fuzz" >&2
        cargo install cargo-fuzz --version 0.13.2 --locked
    fi
}

certfleet_install_deps
