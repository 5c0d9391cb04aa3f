# %post of the myhoard RPM ($1: 1 on a first install, 2 or more on an upgrade). The unit is not
# enabled or started: the service needs a real /etc/myhoard/myhoard.json first.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
