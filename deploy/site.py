"""The whole stack with plain pyinfra: ``pyinfra inventories/prod.py deploy/site.py``.

Same as ``provision apply inventories/prod.py``; compose your own deploy file from the
``@deploy`` functions in ``provisioner.deploys`` to run only some components.
"""

from provisioner.deploys.site import site

site()
