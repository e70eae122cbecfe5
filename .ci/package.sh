#!/usr/bin/env bash
# .ci/package.sh: what an operator does with stapler's Debian package, for real, on this
# machine (a fresh CI machine: it installs and removes packages and edits /etc/haproxy). Run by
# .ci/run as root. It builds the package, lints it, installs it, uses the installed stapler,
# removes it (an edited conffile stays), purges it (everything goes); and it checks the Icinga 2
# CheckCommand with `icinga2 daemon -C` and the Prometheus rules with promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

need=()
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v icinga2 >/dev/null 2>&1 || need+=(icinga2-bin icinga2-common)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v man >/dev/null 2>&1 || need+=(man-db)
if ((${#need[@]})); then
  echo "--- installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # prometheus would start its server: policy-rc.d keeps package scripts from starting services.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if trap -p EXIT | grep -q policy-rc.d; then rm -f /usr/sbin/policy-rc.d && trap - EXIT; fi
fi

fail() {
  echo "package check failed: $*"
  exit 1
}

echo "--- packaging/deb.sh"
rm -rf dist
bash packaging/deb.sh
deb=$(ls dist/stapler_*.deb)

echo "--- lintian"
# Errors fail CI; warnings are printed (the project has no licence yet: see packaging/copyright).
lintian --fail-on error --tag-display-limit 0 "$deb"

echo "--- dpkg -i"
dpkg -i "$deb" >/dev/null
/usr/bin/stapler version | grep -q '^stapler [^ ]* go' || fail "stapler version: $(/usr/bin/stapler version)"
for f in /usr/bin/stapler /etc/stapler/stapler.toml /usr/lib/systemd/system/stapler.service \
  /usr/lib/systemd/system/stapler.timer /usr/share/man/man8/stapler.8.gz \
  /usr/share/bash-completion/completions/stapler /usr/share/doc/stapler/README.md \
  /usr/share/doc/stapler/stapler.example.toml /usr/share/doc/stapler/copyright; do
  [ -f "$f" ] || fail "$f is not installed"
done
[ "$(stat -c %a /var/lib/stapler)" = 700 ] || fail "/var/lib/stapler is not mode 0700"
grep -q '^ExecStart=/usr/bin/stapler run$' /usr/lib/systemd/system/stapler.service || fail "the service does not run /usr/bin/stapler"
man -w stapler >/dev/null || fail "man cannot find stapler(8)"
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /usr/lib/systemd/system/stapler.service /usr/lib/systemd/system/stapler.timer
fi

echo "--- the installed stapler, with the installed configuration"
# It reads /etc/haproxy/haproxy.cfg: give it a TLS frontend with a certificate (without an OCSP
# responder, as Let's Encrypt's are now), and put the file back afterwards.
cp /etc/haproxy/haproxy.cfg /tmp/haproxy.cfg.ci
trap 'cp /tmp/haproxy.cfg.ci /etc/haproxy/haproxy.cfg; rm -rf /etc/haproxy/certs-ci' EXIT
mkdir -p /etc/haproxy/certs-ci
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=ci.stapler.test \
  -keyout /etc/haproxy/certs-ci/ci.pem.key -out /etc/haproxy/certs-ci/ci.pem 2>/dev/null
cat /etc/haproxy/certs-ci/ci.pem.key >>/etc/haproxy/certs-ci/ci.pem && rm /etc/haproxy/certs-ci/ci.pem.key
printf '\nfrontend ci-tls\n    bind 127.0.0.1:18443 ssl crt /etc/haproxy/certs-ci/\n    mode http\n' >>/etc/haproxy/haproxy.cfg
(cd / && /usr/bin/stapler run --dry-run -v) || fail "stapler run --dry-run with the installed configuration"
(cd / && /usr/bin/stapler check) || fail "stapler check with the installed configuration"
bash -c 'source /usr/share/bash-completion/completions/stapler; COMP_WORDS=(stapler sta); COMP_CWORD=1; _stapler; [ "${COMPREPLY[*]}" = status ]' ||
  fail "bash completion"

echo "--- dpkg -r keeps an edited conffile, dpkg --purge removes it"
echo '# edited by CI' >>/etc/stapler/stapler.toml
dpkg -r stapler >/dev/null
[ ! -e /usr/bin/stapler ] || fail "dpkg -r left /usr/bin/stapler"
grep -q '^# edited by CI$' /etc/stapler/stapler.toml || fail "dpkg -r did not keep the edited conffile"
dpkg --purge stapler >/dev/null
[ ! -e /etc/stapler/stapler.toml ] || fail "dpkg --purge left /etc/stapler/stapler.toml"
[ ! -e /var/lib/stapler ] || fail "dpkg --purge left /var/lib/stapler"

echo "--- icinga2 daemon -C"
# icinga2 reads the configuration as the user it runs as (nagios): readable by all.
icinga=$(mktemp -d)
chmod 0755 "$icinga"
cat >"$icinga/icinga2.conf" <<CONF
include <itl>
include "$PWD/contrib/icinga2/stapler.conf"
object Host "lb1" {
  check_command = "dummy"
}
object Service "ocsp-staples" {
  host_name = "lb1"
  check_command = "stapler"
  vars.stapler_warning = "25%"
  vars.stapler_certs = [ "/etc/haproxy/certs/a.pem", "/etc/haproxy/certs/b.pem" ]
}
object Service "ocsp-staples-sudo" {
  host_name = "lb1"
  check_command = "stapler-sudo"
  vars.stapler_dirs = [ "/etc/haproxy/certs" ]
}
CONF
chmod 0644 "$icinga/icinga2.conf"
icinga2 daemon -C -c "$icinga/icinga2.conf" >"$icinga/out" 2>&1 || {
  cat "$icinga/out"
  fail "icinga2 daemon -C refuses contrib/icinga2/stapler.conf"
}
grep -E 'critical|warning' "$icinga/out" && fail "icinga2 daemon -C warns about contrib/icinga2/stapler.conf"
rm -rf "$icinga"

echo "--- promtool check rules, promtool test rules"
promtool check rules contrib/prometheus/stapler-rules.yml
(cd contrib/prometheus && promtool test rules stapler-rules.test.yml)
