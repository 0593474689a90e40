"""The Ansible peer of the benchmark: bench/peers/ansible/site.yml and its inventory."""
