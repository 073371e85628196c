"""OpenVINO's converter and NNCF send usage telemetry unless a consent file says no: with no file
at all (~/intel/openvino_telemetry: a user never asked) they send. Each send forks a process that,
on an offline machine, sits in getaddrinfo; a killed export left it orphaned, holding the
command's stderr open for 13+ minutes. mmdeploy takes no answer as no; a user who opted in
(`opt_in_out --opt_in`, file content "1") still sends, one who opted out still does not."""

from __future__ import annotations

from typing import Any

from ..errors import require

_declined = False


def decline_unanswered_telemetry() -> None:
    """Make an absent consent file read as declined, in this process, before the first OpenVINO
    converter or NNCF import decides (NNCF decides when imported)."""
    global _declined
    if _declined:
        return
    _declined = True
    try:
        from openvino_telemetry.utils import opt_in_checker as oc
    except ImportError:  # not installed: nothing sends
        return
    check = oc.OptInChecker.check

    def check_unanswered_as_declined(self, *args, **kwargs):
        result = check(self, *args, **kwargs)
        return oc.ConsentCheckResult.DECLINED if result == oc.ConsentCheckResult.NO_FILE else result

    oc.OptInChecker.check = check_unanswered_as_declined


def require_openvino(module: str = "openvino") -> Any:
    """openvino or nncf (the `openvino` extra), with unanswered telemetry declined first."""
    decline_unanswered_telemetry()
    return require(module, "openvino")
