"""pyinfra deploy file run by ``provision apply``: the whole stack, as the fleet's lock says
(``provisioner.lock``) when it has one."""

from pyinfra import host

from provisioner import lock
from provisioner.deploys.site import site

lock.honour_driver(host)
site()
