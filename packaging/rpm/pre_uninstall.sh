# %preun of the myhoard RPM ($1: 0 when the package is removed, 1 or more on an upgrade). On
# removal stop and disable the service, as %systemd_preun does.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now myhoard.service >/dev/null 2>&1 || :
fi
