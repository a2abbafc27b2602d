"""The node agent: what join-domain.sh hands to Python (signing, JSON answers, sssd/krb5 files, IMDS addresses).

Standard library only, and Python 3.6's grammar (the oldest python3 of a ParallelCluster 3 AMI: docs/design.md, "The
node agent's interpreter"; tests/test_node_agent.py parses every module with it). Secrets come in on stdin only.
The script runs it as `python3 -I -c BOOT <dir or zip> COMMAND ARGS...` (join-domain.sh pyhelper): from the zipapp
that components/bootstrap_scripts.py bakes into the uploaded script, or from this folder beside a checkout's copy.
"""
