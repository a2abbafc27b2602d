"""The instance metadata service's addresses, for the --restrict-imds lock-down."""

from .common import fail


def imds_address(endpoint):
    # stdout: one line "<4|6> <address> [port]" per address to lock down. The default endpoint is
    # EC2's IMDS on both families, whole address (as ParallelCluster does); any other endpoint from
    # AWS_EC2_METADATA_SERVICE_ENDPOINT (a lab's stand-in) on its TCP port only (80 by default).
    import ipaddress
    from urllib.parse import urlsplit
    u = urlsplit(endpoint)
    try:
        port = u.port
        addr = ipaddress.ip_address(u.hostname or "")
    except ValueError:
        fail(f"the IMDS endpoint {endpoint!r} is not http://<IP address>[:port]: cannot lock it down")
    if u.scheme != "http":
        fail(f"the IMDS endpoint {endpoint!r} is not http://<IP address>[:port]: cannot lock it down")
    if str(addr) == "169.254.169.254" and port in (None, 80):
        print("4 169.254.169.254")
        print("6 fd00:ec2::254")
        return
    if str(addr) == "fd00:ec2::254" and port in (None, 80):
        print("4 169.254.169.254")
        print("6 fd00:ec2::254")
        return
    print(f"{addr.version} {addr} {port or 80}")
