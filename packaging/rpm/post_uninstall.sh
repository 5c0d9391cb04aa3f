# %postun of the myhoard RPM ($1: 0 when the package is removed, 1 or more on an upgrade). After
# an upgrade a running daemon is restarted on the new binary (it stops at a safe point and
# resumes from its state files), as %systemd_postun_with_restart does.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart myhoard.service >/dev/null 2>&1 || :
    fi
fi
