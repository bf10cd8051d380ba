"""Operations tooling, not the audit itself: the capacity model, the synthetic workload
generator, the KEDA/HPA scaling simulator and the Kubernetes readers behind `condo-audit ops`.

Its third-party needs (kubernetes, matplotlib, PyYAML) are the `ops` extra, which the
container image leaves out; the CLI imports these modules only when a command needs them.
"""


class OpsError(Exception):
    """A user-facing operations error (bad cluster config, no access): printed in one line."""
