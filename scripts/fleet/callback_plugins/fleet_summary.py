# Prints the per-host table that ends every scripts/fleet playbook run, also
# when the rollout stopped at a failing batch (a play aborted by
# max_fail_percentage runs no later play, but callbacks still see the end).
#
# The playbooks keep one dict per host in the fact fleet_report (before,
# after, outcome, reload, handover_ms, drain_s, error); this plugin keeps the
# last value each host set and prints them sorted by name (h2 before h10).
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = """
name: fleet_summary
type: aggregate
short_description: per-host summary table for scripts/fleet/deploy.yml and rollback.yml
description:
  - Prints, after the play recap, one line per app host with its release before
    and after, the outcome, baton reload's outcome and handover time, and the
    time the host took to drain in HAProxy.
  - Loaded from the callback_plugins directory beside the playbooks; needs no
    configuration.
"""

import re

from ansible.plugins.callback import CallbackBase

COLUMNS = [
    ("HOST", "host"),
    ("BEFORE", "before"),
    ("AFTER", "after"),
    ("OUTCOME", "outcome"),
    ("RELOAD", "reload"),
    ("HANDOVER", "handover_ms"),
    ("DRAIN", "drain_s"),
]


def natural(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_summary"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self):
        super(CallbackModule, self).__init__()
        self.reports = {}  # host name -> fleet_report

    def v2_runner_on_ok(self, result):
        facts = result._result.get("ansible_facts") or {}
        report = facts.get("fleet_report")
        if isinstance(report, dict):
            self.reports[result._host.get_name()] = dict(report)

    def v2_playbook_on_stats(self, stats):
        if not self.reports:
            return
        rows = []
        for host, rep in sorted(self.reports.items(), key=lambda kv: natural(kv[0])):
            row = dict(rep, host=host)
            if rep.get("handover_ms") not in (None, ""):
                row["handover_ms"] = "%.0f ms" % float(rep["handover_ms"])
            if rep.get("drain_s") not in (None, ""):
                row["drain_s"] = "%.1f s" % float(rep["drain_s"])
            rows.append([str(row.get(key, "-")) for _, key in COLUMNS])
        header = [title for title, _ in COLUMNS]
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

        def line(cells):
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        failed = [h for h, r in self.reports.items() if r.get("outcome", "").startswith("failed")]
        waiting = [h for h, r in self.reports.items() if r.get("outcome") == "not started"]
        if failed or waiting or stats.failures or stats.dark:
            state = "stopped"
            if failed:
                state += ": %s failed" % ", ".join(failed)
            if waiting:
                state += "; not started: %s" % ", ".join(waiting)
        else:
            state = "complete"
        self._display.display("")
        self._display.display("FLEET SUMMARY (%s)" % state)
        self._display.display(line(header))
        for r in rows:
            self._display.display(line(r))
        for host in failed:
            err = self.reports[host].get("error")
            if err:
                self._display.display("%s: %s" % (host, err))
