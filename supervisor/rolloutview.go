//go:build linux

package supervisor

import (
	"fmt"
	"strconv"
	"time"

	"github.com/baton-sh/baton/supervisor/control"
	"github.com/baton-sh/baton/supervisor/internal/logevent"
	"go.uber.org/zap"
)

// This file makes a blue-green or canary rollout watchable: what baton
// status shows of it (the candidate, its stage, its checks, the bake time
// left, the commands that apply), one progress line per failed health
// probe, and the timings the old master passes to the new one with its
// promote order, so that the new master's handover timings separate the
// app's start-up from the checks and the bake. bluegreen.go runs the
// rollout; this file only observes it.

// rolloutStage is the stage baton status and the metrics report, or ""
// when no blue-green or canary upgrade is under way. Loop only.
func (m *master) rolloutStage() string {
	if !m.cfg.Rollout.Strategy.steered() || !m.up.running || m.hook != nil {
		return ""
	}
	c := m.rollout.cand
	if c == nil {
		return control.StageStarting
	}
	switch c.stage {
	case stageHealth:
		return control.StageHealthCheck
	case stageSmoke:
		return control.StageSmokeTest
	case stageBake:
		return control.StageBaking
	case stagePromoted:
		return control.StagePromoting
	}
	return control.StageRollingBack
}

// rolloutStatus is the rollout under way for baton status, or nil.
func (m *master) rolloutStatus(now time.Time) *control.RolloutStatus {
	stage := m.rolloutStage()
	if stage == "" {
		return nil
	}
	rs := &control.RolloutStatus{Strategy: string(m.cfg.Rollout.Strategy), Generation: m.gen + 1,
		MasterPID: m.rollout.startingPID, Stage: stage, ElapsedMS: ms(now.Sub(m.up.at))}
	if c := m.rollout.cand; c != nil {
		rs.MasterPID = c.pid
		rs.Checks = append(rs.Checks, c.checks...)
		if c.switched && c.stage != stageRolledBack {
			rs.CanaryPercent = c.weight
		}
		if c.stage == stageBake && m.cfg.Rollout.Bake > 0 {
			rs.BakeLeftMS = max(0, ms(c.switchAt.Add(m.cfg.Rollout.Bake).Sub(now)))
		}
	}
	switch stage {
	case control.StageBaking:
		rs.Commands = []string{"baton promote", "baton rollback"}
	case control.StageHealthCheck, control.StageSmokeTest:
		rs.Commands = []string{"baton rollback"}
	}
	return rs
}

// checkStarted records a check of c beginning (health-check, smoke-test,
// bake-health). A bake's health checks share one record.
func (m *master) checkStarted(c *candidate, name string) {
	if n := len(c.checks); n > 0 && c.checks[n-1].Name == name {
		c.checks[n-1].State = "running"
		return
	}
	c.checks = append(c.checks, control.CheckStatus{Name: name, State: "running"})
}

// checkFor is c's latest record of the check run at stage st.
func (c *candidate) checkFor(st stage) *control.CheckStatus {
	name := map[stage]string{stageHealth: "health-check", stageSmoke: "smoke-test", stageBake: "bake-health"}[st]
	for i := len(c.checks) - 1; i >= 0; i-- {
		if c.checks[i].Name == name {
			return &c.checks[i]
		}
	}
	return nil
}

// checkDone records a check's outcome.
func (m *master) checkDone(c *candidate, ev evCheckDone) {
	ck := c.checkFor(ev.stage)
	if ck == nil {
		return
	}
	ck.State = "passed"
	if ev.err != nil {
		ck.State = "failed"
		if ev.stage == stageSmoke {
			ck.LastAnswer = ev.err.Error()
		}
	} else if ev.stage == stageSmoke {
		ck.LastAnswer = "exit 0"
	}
}

// recordProbe records one health probe of the candidate under way, and
// tells the reload requesters about a failed one with its answer: a check
// that keeps failing is visible as it happens, not only at its deadline.
func (m *master) recordProbe(ev evProbe) {
	c := ev.c
	ck := c.checkFor(ev.stage)
	if ck == nil {
		return
	}
	ck.Probes++
	ck.LastAnswer = ev.answer
	if ev.err == nil {
		return
	}
	ck.Failed++
	ck.LastAnswer = ev.err.Error()
	what := "health check"
	if ev.stage == stageBake {
		what = "health check during the bake"
	}
	msg := fmt.Sprintf("%s %s of generation %d failed (probe %d): %s", what, m.cfg.Rollout.HealthCheck, c.gen, ck.Probes, ev.err)
	if ev.stage == stageHealth {
		left := m.cfg.Rollout.HealthTimeout - m.sys.now().Sub(c.readyAt)
		msg += fmt.Sprintf("; retrying for up to %s (--health-timeout)", max(left, 0).Round(100*time.Millisecond))
	}
	m.log.Warn("health probe failed", logevent.RolloutProbeFailed, zap.Int("new_generation", c.gen), zap.Int("probe", ck.Probes),
		zap.String("stage", ev.stage.String()), zap.String("answer", ev.err.Error()))
	m.progress(control.Progress{Event: control.EvHealthProbe, Generation: c.gen, Count: ck.Probes, Message: msg})
}

// promoteTimings is the part of a promote order that carries how long the
// checks before the switch and the bake took.
func (m *master) promoteTimings(c *candidate) string {
	now := m.sys.now()
	checks, bake := now.Sub(c.readyAt), time.Duration(0)
	if c.switched {
		checks, bake = c.switchAt.Sub(c.readyAt), now.Sub(c.switchAt)
	}
	return orderChecksMS + "=" + strconv.FormatFloat(ms(checks), 'f', 3, 64) + "\n" +
		orderBakeMS + "=" + strconv.FormatFloat(ms(bake), 'f', 3, 64)
}

// msField reads a duration in milliseconds from an order; 0 if absent.
func msField(s string) time.Duration {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0
	}
	return time.Duration(f * float64(time.Millisecond))
}
