#!/usr/bin/env bash
# Installs the packages from packaging/build-packages.sh for real on this (Debian) machine and
# checks what an operator would get. CI runs it; it needs root and changes the machine
# (installs, then purges, certfleet-agent and certfleet-controller).
#
#   packaging/test-packages.sh [PACKAGE_DIR]        (default target/packages)
#
# There is no systemd PID 1 here (nor in CI), so units cannot be started by systemd. Instead:
#  * the units are checked with `systemd-analyze verify` once installed, and against systemd
#    239's directive list (packaging/check-units.sh);
#  * every dpkg operation runs in a private mount namespace where /run/systemd/system exists
#    (the maintainer scripts' "is systemd running" test) and /usr/bin/systemctl is a stand-in
#    that records each call and carries out start/stop/try-restart by running the installed
#    unit's own ExecStart= the way the unit says: as its User=/Group= (setpriv), with its
#    UMask=, in /, with a clean environment, SIGTERM (KillSignal=) to the main process only
#    on stop (KillMode=process / the controller has no children). The stand-in knows only
#    these few verbs; it is not systemd, and what it cannot show (cgroup limits, sandboxing)
#    is covered by the directive checks only.
# Then: the controller is initialised as its service user, started from the installed unit,
# answers /healthz and an operator command over mTLS; the agent enrolls and connects; an
# upgrade restarts both daemons onto the new binaries and keeps a changed agent.toml; removal
# stops them and keeps state; a reinstall serves the same fleet CA; purge keeps state too.
# The .rpm packages are checked with rpm -qlp / --scripts / --requires / config flags, their
# scriptlets are run with rpm's arguments, and the README's rpm commands (-Uvh, an upgrade,
# -Uvh --oldpackage, -e) are run against a scratch root with `rpm --root` (--nodeps: the
# scratch root has no glibc package; --noscripts: it has no /bin/sh to run them in, so the
# scriptlets are run separately).
#
# Prints one line per check and "packages: N passed, M failed"; exits 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
src="$(pwd)"
pkgdir="$(cd "${1:-target/packages}" && pwd)" || { echo "test-packages: no package directory" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "test-packages: needs root (installs packages)" >&2; exit 2; }
for tool in dpkg dpkg-deb rpm systemd-analyze setpriv unshare curl objdump; do
    command -v "$tool" >/dev/null || { echo "test-packages: $tool not found (packaging/deps.sh installs it)" >&2; exit 2; }
done

version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)"
deb_agent="$pkgdir/certfleet-agent_${version}-1_amd64.deb"
deb_ctl="$pkgdir/certfleet-controller_${version}-1_amd64.deb"
rpm_agent="$pkgdir/certfleet-agent-${version}-1.x86_64.rpm"
rpm_ctl="$pkgdir/certfleet-controller-${version}-1.x86_64.rpm"
for f in "$deb_agent" "$deb_ctl" "$rpm_agent" "$rpm_ctl" "$pkgdir/SHA256SUMS"; do
    [ -f "$f" ] || { echo "test-packages: missing $f (run packaging/build-packages.sh)" >&2; exit 2; }
done

work="$(mktemp -d /tmp/certfleet-pkgtest.XXXXXX)"
chmod 0755 "$work"
marker=.certfleet-package-test
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "PASS $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
# check DESCRIPTION COMMAND...: one check, PASS when the command succeeds.
check() {
    local what="$1"
    shift
    if "$@" >"$work/check.out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     /' "$work/check.out" | tail -15; fi
}
has_line() { grep -qxF -- "$1" "$2"; }
contains() { grep -qF -- "$1" "$2"; }

# --- state this test may remove: only what it created itself ---------------------------------
for d in /var/lib/certfleet /var/lib/certfleet-agent; do
    if [ -e "$d" ] && [ ! -e "$d/$marker" ]; then
        echo "test-packages: $d exists and was not made by this test; not touching it" >&2
        exit 2
    fi
done
cleanup() {
    pkill_pidfile() { [ -f "$1" ] && kill -TERM "$(cat "$1")" 2>/dev/null; rm -f "$1"; }
    pkill_pidfile "$work/run/certfleet-controller.service.pid"
    pkill_pidfile "$work/run/certfleet-agent.service.pid"
    dpkg --purge certfleet-agent certfleet-controller >/dev/null 2>&1
    for d in /var/lib/certfleet /var/lib/certfleet-agent; do
        [ -e "$d/$marker" ] && rm -rf "$d"
    done
    getent passwd certfleet >/dev/null && userdel certfleet 2>/dev/null
    getent group certfleet >/dev/null && groupdel certfleet 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
dpkg --purge certfleet-agent certfleet-controller >/dev/null 2>&1 || true

# --- checksums -----------------------------------------------------------------------------
check "SHA256SUMS matches every artefact" sh -c "cd '$pkgdir' && sha256sum --quiet -c SHA256SUMS"
for f in "$deb_agent" "$deb_ctl" "$rpm_agent" "$rpm_ctl"; do
    check "SHA256SUMS lists $(basename "$f")" grep -q " $(basename "$f")\$" "$pkgdir/SHA256SUMS"
done

# --- the checks themselves can fail --------------------------------------------------------------
check "check-glibc.sh rejects a binary built against glibc 2.34+ (this machine's ls)" sh -c \
    "! packaging/check-glibc.sh /usr/bin/ls >'$work/glibc.out' 2>&1 && grep -q 'needs GLIBC_2.3[4-9]' '$work/glibc.out'"
printf '[Service]\nType=exec\nExecStart=/bin/true\nProtectClock=yes\n' >"$work/new.service"
check "check-units.sh rejects Type=exec and ProtectClock= (systemd 240+)" sh -c \
    "! packaging/check-units.sh '$work/new.service' >'$work/units.out' 2>&1 && grep -q 'Type=exec' '$work/units.out' && grep -q 'ProtectClock' '$work/units.out'"

# --- the systemctl stand-in and the unit runner -------------------------------------------------
mkdir -p "$work/run"
cat >"$work/unit-run" <<'EOF'
#!/usr/bin/env bash
# unit-run start|stop UNIT: what systemd would do for these two verbs, read from the installed
# unit file (ExecStart, User, Group, UMask, KillSignal); the main PID goes to RUN/UNIT.pid.
set -euo pipefail
verb="$1" unit="$2" run="$(dirname "$0")/run"
file="/usr/lib/systemd/system/$unit"
pidf="$run/$unit.pid"
key() { sed -n "s/^$1=//p" "$file" | tail -1; }
alive() { [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
case "$verb" in
start)
    alive && exit 0
    [ -f "$file" ] || { echo "unit-run: no $file" >&2; exit 5; }
    read -ra cmd <<<"$(key ExecStart)"
    if [ -n "${CERTFLEET_TEST_PORTS:-}" ]; then # listen ports swapped when 7443/9743 are taken
        read -r grpc http <<<"$CERTFLEET_TEST_PORTS"
        cmd=("${cmd[@]/#0.0.0.0:7443/127.0.0.1:$grpc}")
        cmd=("${cmd[@]/#127.0.0.1:9743/127.0.0.1:$http}")
    fi
    user="$(key User)" group="$(key Group)" umask="$(key UMask)"
    as=()
    if [ -n "$user" ]; then
        as=(setpriv --reuid="$user" --regid="${group:-$user}" --init-groups)
        home="$(getent passwd "$user" | cut -d: -f6)"
    else
        user=root home=/root
    fi
    # StateDirectory=NAME: systemd creates /var/lib/NAME owned by User= with StateDirectoryMode.
    sd="$(key StateDirectory)"
    if [ -n "$sd" ]; then
        install -d -m "$(key StateDirectoryMode)" -o "$user" -g "${group:-$user}" "/var/lib/$sd"
    fi
    cd /
    (umask "${umask:-0022}"; exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 RUST_LOG=info \
        "${as[@]}" "${cmd[@]}" </dev/null >>"$run/$unit.log" 2>&1) &
    echo $! >"$pidf"
    ;;
stop)
    alive || { rm -f "$pidf"; exit 0; }
    pid="$(cat "$pidf")"
    sig="$(key KillSignal)"
    kill -s "${sig:-SIGTERM}" "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "unit-run: $unit did not stop within 30 s of $sig" >&2
        kill -KILL "$pid"
        exit 1
    fi
    rm -f "$pidf"
    ;;
esac
EOF
cat >"$work/systemctl" <<EOF
#!/usr/bin/env bash
# systemctl stand-in for the package test: logs every call, carries out start/stop/try-restart.
echo "\$*" >>"$work/systemctl.log"
args=()
for a in "\$@"; do case "\$a" in --*) ;; *) args+=("\$a") ;; esac; done
verb="\${args[0]:-}" unit="\${args[1]:-}"
running() { [ -f "$work/run/\$unit.pid" ] && kill -0 "\$(cat "$work/run/\$unit.pid")" 2>/dev/null; }
case "\$verb" in
    start) exec "$work/unit-run" start "\$unit" ;;
    stop) exec "$work/unit-run" stop "\$unit" ;;
    try-restart) if running; then "$work/unit-run" stop "\$unit" && exec "$work/unit-run" start "\$unit"; fi ;;
    is-active) running ;;
esac
exit 0
EOF
chmod 0755 "$work/unit-run" "$work/systemctl"

# in_ns CMD...: run CMD where the maintainer scripts see a running systemd (see the header).
in_ns() {
    unshare --mount --propagation private bash -c '
        set -e
        mkdir -p /run/systemd
        mount -t tmpfs certfleet-test /run/systemd
        mkdir /run/systemd/system
        mount --bind "$0" /usr/bin/systemctl
        exec "$@"' "$work/systemctl" "$@"
}
sysctl_log() { cat "$work/systemctl.log" 2>/dev/null; }
: >"$work/systemctl.log"

# Ports: the unit's own when free, else two free ones (the runner swaps them in).
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
grpc_port=7443 http_port=9743
if ! port_free 7443 || ! port_free 9743; then
    grpc_port=27443 http_port=29743
    export CERTFLEET_TEST_PORTS="$grpc_port $http_port"
    echo "note: 7443/9743 are taken here; the controller listens on $grpc_port/$http_port instead"
fi
ctl="127.0.0.1:$grpc_port"
healthz() { curl -fsS --max-time 2 "http://127.0.0.1:$http_port/healthz"; }
wait_healthz() {
    for _ in $(seq 1 100); do healthz >/dev/null 2>&1 && return 0; sleep 0.1; done
    healthz
}
pid_of() { cat "$work/run/$1.pid" 2>/dev/null; }

# --- .deb: contents and metadata ----------------------------------------------------------------
dpkg-deb -c "$deb_agent" | awk '{ print $6 }' | sed 's#^\./#/#' >"$work/agent.list"
dpkg-deb -c "$deb_ctl" | awk '{ print $6 }' | sed 's#^\./#/#' >"$work/ctl.list"
for f in /usr/bin/certfleet-agent /usr/lib/systemd/system/certfleet-agent.service /etc/certfleet/agent.toml \
    /var/lib/certfleet-agent/ /usr/share/man/man1/certfleet-agent.1.gz /usr/share/man/man1/certfleet-agent-run.1.gz \
    /usr/share/bash-completion/completions/certfleet-agent /usr/share/zsh/site-functions/_certfleet-agent \
    /usr/share/fish/vendor_completions.d/certfleet-agent.fish /usr/share/doc/certfleet-agent/LICENSE; do
    check "agent .deb ships $f" has_line "$f" "$work/agent.list"
done
for f in /usr/bin/certfleet /usr/lib/systemd/system/certfleet-controller.service /usr/lib/sysusers.d/certfleet.conf \
    /var/lib/certfleet/ /usr/share/man/man1/certfleet.1.gz /usr/share/man/man1/certfleet-plan-create.1.gz \
    /usr/share/bash-completion/completions/certfleet /usr/share/zsh/site-functions/_certfleet \
    /usr/share/fish/vendor_completions.d/certfleet.fish /usr/share/doc/certfleet-controller/LICENSE; do
    check "controller .deb ships $f" has_line "$f" "$work/ctl.list"
done
dpkg-deb -I "$deb_agent" conffiles >"$work/conffiles" 2>&1
check "agent.toml is a conffile (kept on upgrade)" has_line /etc/certfleet/agent.toml "$work/conffiles"
check "controller .deb depends on libc6 (>= 2.28)" sh -c "dpkg-deb -f '$deb_ctl' Depends | grep -qF 'libc6 (>= 2.28)'"
check "LICENSE is the Apache-2.0 text" sh -c "dpkg-deb --fsys-tarfile '$deb_agent' | tar -xO ./usr/share/doc/certfleet-agent/LICENSE | grep -q 'Apache License' "

# --- install ------------------------------------------------------------------------------------
check "dpkg -i installs both packages" in_ns dpkg -i "$deb_agent" "$deb_ctl"
for d in /var/lib/certfleet /var/lib/certfleet-agent; do [ -d "$d" ] && touch "$d/$marker"; done
check "both packages are installed" sh -c "dpkg-query -W -f='\${Status}\n' certfleet-agent certfleet-controller | grep -c 'install ok installed' | grep -qx 2"
check "install enabled and started nothing" sh -c "! grep -Eq '^(enable|start|restart|try-restart|reenable|preset)' '$work/systemctl.log' && [ -z \"\$(ls /etc/systemd/system/multi-user.target.wants/certfleet-* 2>/dev/null)\" ]"
check "install reloaded systemd" has_line daemon-reload "$work/systemctl.log"
check "service user certfleet exists, system, no login shell" sh -c \
    "getent passwd certfleet | awk -F: '\$3 < 1000 && \$6 == \"/var/lib/certfleet\" && \$7 ~ /nologin|false/ { f = 1 } END { exit !f }'"
check "/var/lib/certfleet is certfleet:certfleet 0700" sh -c '[ "$(stat -c "%U:%G %a" /var/lib/certfleet)" = "certfleet:certfleet 700" ]'
check "/var/lib/certfleet-agent is root:root 0700" sh -c '[ "$(stat -c "%U:%G %a" /var/lib/certfleet-agent)" = "root:root 700" ]'
check "installed units use only systemd 239 directives and pass systemd-analyze verify" \
    packaging/check-units.sh --verify /usr/lib/systemd/system/certfleet-agent.service /usr/lib/systemd/system/certfleet-controller.service
check "installed binaries need glibc <= 2.28 and nothing the hosts lack" packaging/check-glibc.sh /usr/bin/certfleet /usr/bin/certfleet-agent
# --version: "NAME VERSION (commit C)" where C is a commit of this repository (HEAD when built
# from a clean checkout, as in CI; an earlier one if commits were made after the build).
version_ok() { # BINARY NAME
    local line c
    line="$("$1" --version)" || return 1
    echo "$line"
    c="$(sed -n "s/^$2 $version (commit \([0-9a-f]\{12\}\))\$/\1/p" <<<"$line")"
    [ -n "$c" ] && git cat-file -e "$c^{commit}"
}
check "certfleet --version names version and commit" version_ok /usr/bin/certfleet certfleet
check "certfleet-agent --version names version and commit" version_ok /usr/bin/certfleet-agent certfleet-agent
check "man page certfleet(1) installed and readable" sh -c "zcat /usr/share/man/man1/certfleet.1.gz | grep -q '^.TH certfleet 1'"
check "bash completion loads and completes subcommands" bash -c \
    "source /usr/share/bash-completion/completions/certfleet-agent && complete -p certfleet-agent >/dev/null && grep -q enroll /usr/share/bash-completion/completions/certfleet-agent"

# --- the controller from the installed files, as its service user -------------------------------
# The README's command, as written.
check "runuser -u certfleet -- certfleet init (README)" sh -c \
    'cd / && runuser -u certfleet -- certfleet init --data-dir /var/lib/certfleet --san localhost'
check "fleet CA key is certfleet-owned 0600" sh -c '[ "$(stat -c "%U %a" /var/lib/certfleet/ca/ca.key)" = "certfleet 600" ]'
ca_before="$(sha256sum /var/lib/certfleet/ca/ca.pem | cut -d' ' -f1)"
check "systemctl start certfleet-controller (ExecStart as User=certfleet)" in_ns systemctl start certfleet-controller.service
check "controller answers /healthz" wait_healthz
check "controller runs as certfleet" sh -c "[ \"\$(ps -o user= -p $(pid_of certfleet-controller.service))\" = certfleet ]"
export CERTFLEET_IDENTITY=/var/lib/certfleet/admin CERTFLEET_CONTROLLER="$ctl"
token="$(/usr/bin/certfleet token create --ttl 10m --label site=pkgtest 2>"$work/token.err")"
check "operator CLI (installed) creates a join token over mTLS" test -n "$token"
check "agent enrolls with the installed binary" /usr/bin/certfleet-agent enroll --controller "$ctl" --token "$token" \
    --state-dir /var/lib/certfleet-agent --name pkgtest-agent
check "systemctl start certfleet-agent (ExecStart with /etc/certfleet/agent.toml)" in_ns systemctl start certfleet-agent.service
connected() {
    for _ in $(seq 1 100); do
        /usr/bin/certfleet agents list -o json 2>/dev/null | grep -q '"pkgtest-agent"' &&
            healthz 2>/dev/null | grep -q "ok: 1 agents connected" && return 0
        sleep 0.2
    done
    /usr/bin/certfleet agents list
    healthz
    tail -5 "$work/run/certfleet-agent.service.log"
    return 1
}
check "agent connects to the controller" connected

# --- upgrade: release 2 of both packages ---------------------------------------------------------
echo "# changed by the operator" >>/etc/certfleet/agent.toml
old_ctl="$(pid_of certfleet-controller.service)" old_agent="$(pid_of certfleet-agent.service)"
CERTFLEET_PKG_SKIP_BUILD=1 CERTFLEET_PKG_RELEASE=2 CERTFLEET_PKG_OUT="$work/upgrade" \
    packaging/build-packages.sh >"$work/build2.log" 2>&1 || { cat "$work/build2.log"; bad "build release 2 packages"; }
: >"$work/systemctl.log"
check "dpkg -i upgrades to release 2" in_ns dpkg -i "$work/upgrade/certfleet-agent_${version}-2_amd64.deb" \
    "$work/upgrade/certfleet-controller_${version}-2_amd64.deb"
check "upgrade try-restarted both daemons" sh -c "grep -qx 'try-restart certfleet-controller.service' '$work/systemctl.log' && grep -qx 'try-restart certfleet-agent.service' '$work/systemctl.log'"
check "upgrade enabled nothing" sh -c "! grep -Eq '^(enable|reenable|preset)' '$work/systemctl.log'"
new_ctl="$(pid_of certfleet-controller.service)" new_agent="$(pid_of certfleet-agent.service)"
check "controller is a new process running the new binary" sh -c \
    "[ -n '$new_ctl' ] && [ '$new_ctl' != '$old_ctl' ] && [ \"\$(readlink /proc/$new_ctl/exe)\" = /usr/bin/certfleet ]"
check "agent is a new process running the new binary" sh -c \
    "[ -n '$new_agent' ] && [ '$new_agent' != '$old_agent' ] && [ \"\$(readlink /proc/$new_agent/exe)\" = /usr/bin/certfleet-agent ]"
check "controller answers /healthz after the upgrade" wait_healthz
check "agent reconnects after the upgrade" connected
check "upgrade kept the operator's agent.toml" grep -qx "# changed by the operator" /etc/certfleet/agent.toml
check "dpkg reports release 2" sh -c "dpkg-query -W -f='\${Version}' certfleet-controller | grep -qx '${version}-2'"

# --- rollback: the previous release installed over the running one --------------------------------
: >"$work/systemctl.log"
check "dpkg -i of release 1 rolls back (downgrade)" in_ns dpkg -i "$deb_agent" "$deb_ctl"
check "rollback try-restarted the controller" has_line "try-restart certfleet-controller.service" "$work/systemctl.log"
check "dpkg reports release 1 after the rollback" sh -c "dpkg-query -W -f='\${Version}' certfleet-controller | grep -qx '${version}-1'"
check "controller answers /healthz after the rollback" wait_healthz
new_ctl="$(pid_of certfleet-controller.service)" new_agent="$(pid_of certfleet-agent.service)"

# --- remove: daemons stopped, state kept ----------------------------------------------------------
: >"$work/systemctl.log"
check "dpkg -r removes both packages" in_ns dpkg -r certfleet-agent certfleet-controller
check "removal stopped and disabled both units" sh -c "grep -qx 'stop certfleet-controller.service' '$work/systemctl.log' && grep -qx 'stop certfleet-agent.service' '$work/systemctl.log' && grep -q '^--no-reload disable certfleet-agent.service' '$work/systemctl.log'"
check "no daemon left running" sh -c "! kill -0 $new_ctl 2>/dev/null && ! kill -0 $new_agent 2>/dev/null"
check "binaries are gone" sh -c '[ ! -e /usr/bin/certfleet ] && [ ! -e /usr/bin/certfleet-agent ]'
check "controller state kept (fleet CA, store)" sh -c '[ -f /var/lib/certfleet/ca/ca.pem ] && [ -n "$(ls /var/lib/certfleet)" ]'
check "agent state kept (identity)" sh -c '[ -n "$(ls -A /var/lib/certfleet-agent | grep -v '"$marker"')" ]'
check "agent.toml kept after remove (conffile, not purged)" test -f /etc/certfleet/agent.toml

# --- reinstall: the same fleet comes back ---------------------------------------------------------
: >"$work/systemctl.log"
check "dpkg -i reinstalls release 1" in_ns dpkg -i "$deb_agent" "$deb_ctl"
# dpkg hands postinst the last configured version here (conffiles were kept), so it may
# try-restart, which leaves a stopped unit stopped.
check "reinstall enabled and started nothing" sh -c \
    "! grep -Eq '^(enable|start|restart|reenable|preset)' '$work/systemctl.log' && [ ! -e '$work/run/certfleet-controller.service.pid' ] && [ ! -e '$work/run/certfleet-agent.service.pid' ]"
check "systemctl start certfleet-controller after reinstall" in_ns systemctl start certfleet-controller.service
check "controller answers /healthz after reinstall" wait_healthz
check "same fleet CA after reinstall" sh -c "[ -n '$ca_before' ] && [ \"\$(sha256sum /var/lib/certfleet/ca/ca.pem | cut -d' ' -f1)\" = '$ca_before' ]"
check "the enrolled agent is still known" sh -c "/usr/bin/certfleet agents list -o json | grep -q '\"pkgtest-agent\"'"
in_ns systemctl stop certfleet-controller.service

# --- purge: still keeps state ---------------------------------------------------------------------
check "dpkg -P purges both packages" in_ns dpkg -P certfleet-agent certfleet-controller
check "purge keeps /var/lib/certfleet (the fleet CA)" test -f /var/lib/certfleet/ca/ca.pem
check "purge removes /etc/certfleet/agent.toml" test ! -e /etc/certfleet/agent.toml

# --- rpm ----------------------------------------------------------------------------------------
rpm -qlp "$rpm_agent" >"$work/rpm-agent.list" 2>&1
rpm -qlp "$rpm_ctl" >"$work/rpm-ctl.list" 2>&1
for f in /usr/bin/certfleet-agent /usr/lib/systemd/system/certfleet-agent.service /etc/certfleet/agent.toml \
    /var/lib/certfleet-agent /usr/share/man/man1/certfleet-agent.1.gz /usr/share/doc/certfleet-agent/LICENSE \
    /usr/share/bash-completion/completions/certfleet-agent; do
    check "agent .rpm ships $f (rpm -qlp)" has_line "$f" "$work/rpm-agent.list"
done
for f in /usr/bin/certfleet /usr/lib/systemd/system/certfleet-controller.service /usr/lib/sysusers.d/certfleet.conf \
    /var/lib/certfleet /usr/share/man/man1/certfleet.1.gz /usr/share/doc/certfleet-controller/LICENSE; do
    check "controller .rpm ships $f (rpm -qlp)" has_line "$f" "$work/rpm-ctl.list"
done
check "agent.toml is %config(noreplace) in the rpm (flags c, n)" sh -c \
    "rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' '$rpm_agent' | grep -qx '/etc/certfleet/agent.toml cn'"
check "rpm requires glibc >= 2.28 (rpm -qp --requires)" sh -c "rpm -qp --requires '$rpm_agent' | grep -qx 'glibc >= 2.28'"
check "controller rpm requires useradd for its %pre" sh -c "rpm -qp --requires '$rpm_ctl' | grep -qx '/usr/sbin/useradd'"
check "/var/lib/certfleet is certfleet-owned 0700 in the rpm" sh -c \
    "rpm -qp --qf '[%{FILENAMES} %{FILEUSERNAME} %{FILEMODES:perms}\n]' '$rpm_ctl' | grep -qx '/var/lib/certfleet certfleet drwx------'"
rpm -qp --scripts "$rpm_ctl" >"$work/rpm-scripts" 2>&1
check "rpm scriptlets: %pre, %post, %preun, %postun present (rpm -qp --scripts)" sh -c \
    "for s in preinstall postinstall preuninstall postuninstall; do grep -q \"^\$s scriptlet\" '$work/rpm-scripts' || exit 1; done"

# The scriptlets with rpm's arguments: $1 = 1 install, 2 upgrade; %preun/%postun 0 erase, 1 upgrade.
scriptlet() { rpm -qp --qf "%{$1}" "$rpm_ctl" >"$work/$1.sh"; in_ns sh "$work/$1.sh" "$2"; }
: >"$work/systemctl.log"
scriptlet POSTIN 1 >/dev/null 2>&1
check "rpm %post 1 (install) restarts nothing" sh -c "! grep -q restart '$work/systemctl.log'"
: >"$work/systemctl.log"
scriptlet POSTIN 2 >/dev/null 2>&1
check "rpm %post 2 (upgrade) try-restarts the controller" has_line "try-restart certfleet-controller.service" "$work/systemctl.log"
: >"$work/systemctl.log"
scriptlet PREUN 1 >/dev/null 2>&1
check "rpm %preun 1 (old version during upgrade) stops nothing" sh -c "! grep -Eq '^(stop|--no-reload disable)' '$work/systemctl.log'"
: >"$work/systemctl.log"
scriptlet PREUN 0 >/dev/null 2>&1
check "rpm %preun 0 (erase) stops and disables the controller" sh -c \
    "grep -qx 'stop certfleet-controller.service' '$work/systemctl.log' && grep -qx -- '--no-reload disable certfleet-controller.service' '$work/systemctl.log'"

# The README's rpm commands (rpm -Uvh, rpm -Uvh --oldpackage) in a scratch root.
scratch="$work/rpmroot"
mkdir -p "$scratch"
rpm_agent2="$work/upgrade/certfleet-agent-${version}-2.x86_64.rpm"
rpm_ctl2="$work/upgrade/certfleet-controller-${version}-2.x86_64.rpm"
rootrpm() { rpm --root "$scratch" --nodeps --noscripts "$@"; }
check "rpm --root: rpm -Uvh installs both rpms into a scratch root" sh -c \
    "rpm --root '$scratch' --initdb && rpm --root '$scratch' --nodeps --noscripts -Uvh '$rpm_agent' '$rpm_ctl'"
check "rpm --root: both packages registered" sh -c "[ \"\$(rpm --root '$scratch' -qa | grep -c '^certfleet-')\" = 2 ]"
check "rpm --root: payload in place and binary runs" sh -c "'$scratch/usr/bin/certfleet-agent' --version | grep -q '$version'"
check "rpm --root: /var/lib/certfleet-agent 0700" sh -c "[ \"\$(stat -c %a '$scratch/var/lib/certfleet-agent')\" = 700 ]"
echo "# changed by the operator" >>"$scratch/etc/certfleet/agent.toml"
check "rpm --root: rpm -Uvh upgrades to release 2" rootrpm -Uvh "$rpm_agent2" "$rpm_ctl2"
check "rpm --root: upgrade kept the operator's agent.toml" grep -qx "# changed by the operator" "$scratch/etc/certfleet/agent.toml"
check "rpm --root: rpm -Uvh --oldpackage rolls back to release 1" sh -c \
    "rpm --root '$scratch' --nodeps --noscripts -Uvh --oldpackage '$rpm_agent' '$rpm_ctl' && rpm --root '$scratch' -q certfleet-controller | grep -qx 'certfleet-controller-${version}-1.x86_64'"
check "rpm --root: erase removes the payload" sh -c \
    "rpm --root '$scratch' -e --nodeps --noscripts certfleet-agent certfleet-controller && [ ! -e '$scratch/usr/bin/certfleet' ]"
check "README: sha256sum -c --ignore-missing SHA256SUMS" sh -c "cd '$pkgdir' && sha256sum -c --ignore-missing SHA256SUMS"

echo "packages: $pass passed, $fail failed"
[ "$fail" = 0 ]
