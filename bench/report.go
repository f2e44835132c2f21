package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// core are the algorithms the tightest targets apply to.
var core = map[string]bool{"fixed_window": true, "token_bucket": true, "gcra": true}

// check is one target: a ratio measured in this run against its bound.
type check struct {
	what       string
	got, bound float64
	atLeast    bool // the ratio must be >= bound; else <= bound
	info       bool // reported only, not a target
}

func (c check) ok() bool {
	if c.atLeast {
		return c.got >= c.bound
	}
	return c.got <= c.bound
}

// measured is the ratio to two decimals, or three where two would round it
// onto its bound and hide which side it is on.
func (c check) measured() string {
	if got := fmt.Sprintf("%.2f", c.got); got != fmt.Sprintf("%.2f", c.bound) || c.got == c.bound {
		return got
	}
	return fmt.Sprintf("%.3f", c.got)
}

func (c check) needed() string {
	if c.atLeast {
		return fmt.Sprintf(">= %.2f", c.bound)
	}
	return fmt.Sprintf("<= %.2f", c.bound)
}

// report prints the tables and the targets, and returns how many failed.
func report(w io.Writer, r *results) int {
	fmt.Fprintln(w, "| workload | contender | decisions/s | p50 | p99 | Redis usec/decision | decisions per script call | CPUs busy: client + Redis |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|")
	for _, m := range append(r.runs, r.lone...) {
		client, redis := m.cores()
		fmt.Fprintf(w, "| %s | %s | %.0f | %v | %v | %.2f | %.1f | %.2f + %.2f |\n", m.workload, m.contender, m.perSecond(),
			m.hist.quantile(0.50), m.hist.quantile(0.99), m.usecPerDecision(), m.batchSize(), client, redis)
	}

	fmt.Fprintln(w, "\n| contender | bytes per idle key (MEMORY USAGE) |")
	fmt.Fprintln(w, "|---|---:|")
	for _, u := range r.memory {
		if u.bytes >= 0 {
			fmt.Fprintf(w, "| %s | %d |\n", u.contender, u.bytes)
		}
	}

	fmt.Fprintln(w, "\n| deny cache flood: 90% of requests from 100 over-limit keys | cache off: decisions/s | Redis calls/s | cache on: decisions/s | Redis calls/s | Redis calls per request, off -> on | drop at the same request rate |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, f := range r.floods {
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.0f | %.0f | %.3f -> %.3f | %.1f%% |\n", f.algo,
			f.off.decisionsPerSecond, f.off.callsPerSecond, f.on.decisionsPerSecond, f.on.callsPerSecond,
			f.off.callsPerDecision(), f.on.callsPerDecision(), 100*f.drop())
	}

	return printChecks(w, targets(r), "targets")
}

// printChecks prints checks as a table with a verdict each, then how many
// of what failed, and returns that number.
func printChecks(w io.Writer, checks []check, what string) int {
	failed, counted := 0, 0
	fmt.Fprintln(w, "\n| target | measured | needed | |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	for _, c := range checks {
		verdict := "PASS"
		switch {
		case c.info:
			verdict = "(reported)"
		case !c.ok():
			verdict = "FAIL"
			failed++
		}
		if !c.info {
			counted++
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", c.what, c.measured(), c.needed(), verdict)
	}
	fmt.Fprintf(w, "\n%d of %d %s failed\n", failed, counted, what)
	return failed
}

// targets evaluates the targets, each as a ratio within this run.
func targets(r *results) []check {
	var out []check
	find := func(workload, contender string) *measurement {
		for _, m := range r.runs {
			if m.workload == workload && m.contender == contender {
				return m
			}
		}
		return nil
	}
	for _, m := range r.runs {
		if m.algo == "" || strings.HasSuffix(m.contender, unbatched) {
			continue // the unbatched rows are there to compare with
		}
		rr, nop := find(m.workload, redisRate), find(m.workload, noop)
		cpu := m.usecPerDecision() / rr.usecPerDecision()
		out = append(out, check{what: fmt.Sprintf("%s, %s: Redis CPU per decision / redis_rate's", m.algo, m.workload), got: cpu, bound: 0.4, info: !core[m.algo]})
		tr := m.perSecond() / rr.perSecond()
		out = append(out, check{what: fmt.Sprintf("%s, %s: decisions/s / redis_rate's", m.algo, m.workload), got: tr, bound: 2.5, atLeast: true, info: !core[m.algo]})
		tn := m.perSecond() / nop.perSecond()
		out = append(out, check{what: fmt.Sprintf("%s, %s: decisions/s / no-op's", m.algo, m.workload), got: tn, bound: 0.8, atLeast: true, info: !core[m.algo]})
		p99 := float64(m.hist.quantile(0.99)) / float64(nop.hist.quantile(0.99))
		out = append(out, check{what: fmt.Sprintf("%s, %s: p99 / no-op's p99", m.algo, m.workload), got: p99, bound: 1.5, info: !core[m.algo]})
	}
	if len(r.lone) == 2 {
		batched, single := r.lone[0], r.lone[1]
		if strings.HasSuffix(batched.contender, unbatched) {
			batched, single = single, batched
		}
		p50 := float64(batched.hist.quantile(0.5)) / float64(single.hist.quantile(0.5))
		out = append(out, check{what: "gcra, 1 goroutine: p50 batched / unbatched", got: p50, bound: 1.1})
	}
	var rrBytes int64
	for _, u := range r.memory {
		if u.contender == redisRate {
			rrBytes = u.bytes
		}
	}
	for _, u := range r.memory {
		if u.algo == "" {
			continue
		}
		ratio := float64(u.bytes) / float64(rrBytes)
		out = append(out, check{what: fmt.Sprintf("%s: bytes per idle key / redis_rate's", u.algo), got: ratio, bound: 1, info: !core[u.algo]})
	}
	for _, f := range r.floods {
		out = append(out, check{what: fmt.Sprintf("%s: deny cache drop in Redis calls/s at the same request rate", f.algo), got: f.drop(), bound: 0.8, atLeast: true})
	}
	return out
}

func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// reportInstructions prints the instruction counts and the Redis CPU target
// judged on them, and returns how many targets failed.
func reportInstructions(w io.Writer, counts []instrResult) int {
	fmt.Fprintln(w, "\nRedis instructions per decision (callgrind). Calls one at a time, so every contender pays the same")
	fmt.Fprintln(w, "network work; then the same with concurrent callers, where luarate batches (redis_rate and the")
	fmt.Fprintln(w, "floor measured the same way):")
	fmt.Fprintln(w, "\n| workload | contender | instructions/decision | / redis_rate's | / floor's | decisions per script call |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	find := func(workload, contender string) float64 {
		for _, c := range counts {
			if c.workload == workload && c.contender == contender {
				return c.perCall
			}
		}
		return 0
	}
	var checks []check
	for _, c := range counts {
		rr, fl := find(c.workload, redisRate), find(c.workload, floor)
		fmt.Fprintf(w, "| %s | %s | %.0f | %.2f | %.2f | %.1f |\n", c.workload, c.contender, c.perCall, c.perCall/rr, c.perCall/fl, c.perScript)
		if c.algo == "" {
			continue
		}
		bound := map[bool]float64{true: 0.9, false: 1.0}[core[c.algo]]
		if c.algo == "sliding_window_log" {
			bound = 1.5
		}
		if c.concurrent {
			bound = 0.4 // batched: per decision
		}
		checks = append(checks, check{what: fmt.Sprintf("%s, %s: Redis instructions / redis_rate's", c.contender, c.workload),
			got: c.perCall / rr, bound: bound, info: c.concurrent && !core[c.algo] || c.filled})
	}
	return printChecks(w, checks, "instruction targets")
}
