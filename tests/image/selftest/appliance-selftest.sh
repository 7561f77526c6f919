#!/bin/sh
# TEST ONLY (see appliance-selftest.service): one "SELFTEST key=value" line per fact, on ttyS0.
# Waits for the agent to be active (it sent READY=1); if the agent or first boot fails instead,
# prints "SELFTEST failed=<unit>" and their journals so the host test fails with the reason.
say() { printf 'SELFTEST %s=%s\n' "$1" "$2"; }
st() { stat -c '%a:%U:%s' "$1" 2>/dev/null || echo missing; }
secs() { systemctl show -P "$2" "$1" | awk '{printf "%.1f", $1 / 1000000}'; }
diagnose() {
  say failed "$1"
  systemctl --no-pager --failed
  journalctl -b --no-pager -o short-monotonic -n 150 -u appliance-firstboot.service \
    -u appliance-agent.service -u appliance-admin.service -u systemd-repart.service -u 'systemd-cryptsetup@*' -u var.mount
}
while :; do
  agent="$(systemctl is-active appliance-agent.service)"
  [ "$agent" = active ] && break
  for unit in appliance-firstboot.service appliance-agent.service; do
    if [ "$(systemctl is-failed "$unit")" = failed ]; then
      diagnose "$unit"
      say done yes
      exit 1
    fi
  done
  # A service that crashed and was restarted fails the test at once, with its journal.
  for unit in appliance-agent.service appliance-admin.service; do
    if [ "$(systemctl show -P NRestarts "$unit")" -gt 0 ] 2>/dev/null; then
      diagnose "$unit restarted"
      say done yes
      exit 1
    fi
  done
  sleep 1
done
say agent "$agent"
say agent_active_s "$(secs appliance-agent.service ActiveEnterTimestampMonotonic)"
say firstboot "$(systemctl is-active appliance-firstboot.service)"
say admin "$(systemctl is-active appliance-admin.service)"
say admin_user "$(systemctl show -P User appliance-admin.service)"
say firstboot_done_s "$(secs appliance-firstboot.service ActiveEnterTimestampMonotonic)"
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
say var_crypt "$(cryptsetup status appliance-data 2>/dev/null | sed -n 's/^ *type: *//p')"
say var_tpm2_token "$(cryptsetup luksDump /dev/disk/by-partlabel/appliance-data 2>/dev/null |
  sed -n 's/^ *[0-9]*: *\(systemd-tpm2\)$/\1/p' | head -n 1)"
say etc_appliance "$(findmnt -no FSTYPE /etc/appliance)"
say efi_mount "$(findmnt -no FSTYPE /efi)"
say tpm "$(test -e /dev/tpmrm0 && echo yes || echo no)"
say kek_source "$(journalctl -b -u appliance-firstboot.service -o cat | sed -n 's/.*audit KEK from \([^;]*\).*/\1/p' | tail -n 1)"
say release "$(readlink /opt/appliance/current)"
# The ESP's trunk file applied on this first boot; the agent put that on the audit log at its
# start and removed first boot's pending record file.
say trunk_decision "$(journalctl -b -u appliance-firstboot.service -o cat |
  sed -n 's/.*; trunk file .* \(applied\|REFUSED\)[:,].*/\1/p' | tail -n 1)"
say firstboot_records "$(st /var/lib/appliance/audit/firstboot-records.jsonl)"
# The box's own integrity: the root is the dm-verity device for the root hash on the kernel
# command line; the data partition's TPM2 policy covers the boot chain; a recovery key slot.
say root_source "$(findmnt -no SOURCE /)"
say root_verity "$(veritysetup status root 2>/dev/null | sed -n 's/^ *status: *//p' | head -n 1)"
say roothash_active "$(veritysetup status root 2>/dev/null | sed -n 's/^ *root hash: *//p')"
say roothash_cmdline "$(tr ' ' '\n' </proc/cmdline | sed -n 's/^roothash=//p')"
luks_json="$(cryptsetup luksDump --dump-json-metadata /dev/disk/by-partlabel/appliance-data 2>/dev/null)"
say var_tpm2_pcrs "$(printf '%s' "$luks_json" | python3 -c 'import json, sys
t = [v for v in json.load(sys.stdin)["tokens"].values() if v["type"] == "systemd-tpm2"]
print("+".join(str(p) for p in t[0]["tpm2-pcrs"]) if t else "none")' 2>/dev/null)"
say var_keyslots "$(printf '%s' "$luks_json" | python3 -c 'import json, sys
print(len(json.load(sys.stdin)["keyslots"]))' 2>/dev/null)"
for pcr in 4 7 9 12; do
  say "pcr$pcr" "$(cut -c1-16 "/sys/class/tpm/tpm0/pcr-sha256/$pcr" 2>/dev/null || echo unreadable)"
done
say recovery_key_file "$(st /run/appliance-recovery/key)"
# Crash artefacts and file modes (issue 14): no core from any process, owner-only PHI files.
say core_pattern "$(cat /proc/sys/kernel/core_pattern)"
say suid_dumpable "$(cat /proc/sys/fs/suid_dumpable)"
agent_pid="$(systemctl show -P MainPID appliance-agent.service)"
say agent_core_limit "$(awk '/^Max core file size/ {print $5 ":" $6}' "/proc/$agent_pid/limits")"
say agent_umask "$(awk '/^Umask:/ {print $2}' "/proc/$agent_pid/status")"
say agent_hf_offline "$(tr '\0' '\n' <"/proc/$agent_pid/environ" | sed -n 's/^HF_HUB_OFFLINE=//p')"
say audit_db "$(st /var/lib/appliance/audit/audit.sqlite)"
say calls_db "$(st /var/lib/appliance/calls.sqlite)"
failed="$(systemctl list-units --failed --plain --no-legend | awk '{printf "%s,", $1}')"
say failed_units "${failed:-none}"
[ -z "$failed" ] || systemctl --no-pager status $(echo "$failed" | tr ',' ' ') 2>&1 | tail -n 60
# The agent's own start-up log (model loading, warm-up, fixed phrases: where boot time goes).
journalctl -b --no-pager -o short-monotonic -u appliance-agent.service | tail -n 40
say done yes

# On the host's word on the second serial port (after its SIP and HTTPS checks): SIGSEGV to the
# agent, then look for a core file anywhere the box can write (the root is read-only).
stty -F /dev/ttyS1 clocal -echo 2>/dev/null || true
read -r word </dev/ttyS1 || word=""
[ "$word" = segv ] || { say segv "not asked ($word)"; exit 0; }
: >/run/selftest-segv-stamp
pid="$(systemctl show -P MainPID appliance-agent.service)"
kill -SEGV "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
sleep 3
say agent_segv_result "$(systemctl show -P Result appliance-agent.service)"
say agent_segv_dumped "$(journalctl -b -u appliance-agent.service -o cat | grep -c 'code=dumped')"
cores="$(find /var /tmp /run /etc/appliance -xdev -type f -newer /run/selftest-segv-stamp \
  \( -name 'core' -o -name 'core.*' -o -path '*/coredump/*' \) 2>/dev/null | tr '\n' ',')"
say core_files "${cores:-none}"
say segv_done yes
