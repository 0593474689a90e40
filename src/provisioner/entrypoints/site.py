"""pyinfra deploy file run by ``provision apply``: the whole stack."""

from provisioner.deploys.site import site

site()
