"""Connection data for every host of pyinfra's ``@vagrant`` connector (the group ``@vagrant``).

A Vagrant VM gets new SSH host keys each time it is created, often at an address or port an
earlier VM used (192.168.121.x with libvirt, 127.0.0.1:2222 with VirtualBox), so a recorded host
key is wrong after every ``vagrant destroy``/``vagrant up``. ``vagrant ssh-config`` says so
(``UserKnownHostsFile /dev/null``, ``StrictHostKeyChecking no``), but the connector keeps only
HostName, Port, User and IdentityFile from it: the two host-key settings are restored here.
These VMs are disposable and reached over a host-only network; never copy these two lines into
an inventory of real servers.
"""

ssh_known_hosts_file = "/dev/null"
ssh_strict_host_key_checking = "no"

# Vagrant boxes log in as the unprivileged user `vagrant`, with password-less sudo.
_sudo = True
