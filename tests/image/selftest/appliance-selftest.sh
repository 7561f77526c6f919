#!/bin/sh
# TEST ONLY (see appliance-selftest.service): one "SELFTEST key=value" line per fact.
i=0
while [ "$(systemctl is-active appliance-agent.service)" != active ] && [ $i -lt 600 ]; do
  sleep 1; i=$((i + 1))
done
say() { printf 'SELFTEST %s=%s\n' "$1" "$2"; }
st() { stat -c '%a:%U:%s' "$1" 2>/dev/null || echo missing; }
say agent "$(systemctl is-active appliance-agent.service)"
say firstboot "$(systemctl is-active appliance-firstboot.service)"
say kek_cred "$(st /etc/appliance/credentials/audit-kek.cred)"
say kek_file "$(st /var/lib/appliance/keys/audit-kek)"
say signing_key "$(st /var/lib/appliance/keys/audit-signing.key)"
say tls_ca_key "$(st /etc/appliance/tls/ca.key)"
say tls_server_crt "$(st /etc/appliance/tls/server.crt)"
say enrolment_hash "$(cut -c1-10 /etc/appliance/enrolment.argon2 2>/dev/null)"
say enrolment_notice "$(st /etc/appliance/firstboot/enrolment-code.txt)"
say usable_passwords "$(awk -F: '$2 == "" || $2 !~ /^[!*]/ {printf "%s,", $1}' /etc/shadow)none"
say sshd "$(test -e /usr/sbin/sshd && echo present || echo absent)"
say root_mount "$(findmnt -no OPTIONS / | cut -d, -f1)"
say var_mount "$(findmnt -no SOURCE,FSTYPE /var | tr ' ' '/')"
say etc_appliance "$(findmnt -no FSTYPE /etc/appliance)"
say tpm "$(test -e /dev/tpmrm0 && echo yes || echo no)"
say kek_source "$(journalctl -b -u appliance-firstboot.service -o cat | sed -n 's/.*audit KEK from //p' | tail -n 1)"
say release "$(readlink /opt/appliance/current)"
say done yes
