package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/luarate/luarate"
	"github.com/redis/rueidis"
)

// The worst calls the contract allows, each timed by Redis itself (SLOWLOG
// with a threshold of 0 records every command's execution time), so the caps
// in the scripts' headers can be checked against the 1 ms budget on the
// machine at hand. Each is run worstRuns times on state prepared to make it
// as expensive as it can be; the median is reported.

const worstRuns = 9

// worstCase is one call: fill (below) prepares the state it will meet, then
// the script runs with keys and args.
type worstCase struct {
	name       string
	script     string
	keys, args []string
}

func worstCases(prefix string) []worstCase {
	var out []worstCase
	sixteen := func(tag string) []string {
		keys := make([]string, 16)
		for i := range keys {
			keys[i] = prefix + "{" + tag + "}:" + strconv.Itoa(i)
		}
		return keys
	}
	for _, a := range luarate.Algorithms() {
		name := a.String()
		rate := "1000000"
		if a == luarate.SlidingWindowLog {
			rate = "4000"
		}
		// 16 limits with lockouts, atmost: the general path at its widest
		keys := sixteen(name + ":multi")
		args := make([]string, 0, 19)
		for i := range keys {
			args = append(args, rate+" "+strconv.Itoa(1000*(i+1))+" 0 60000")
		}
		cost := "1000"
		if a == luarate.SlidingWindowLog {
			cost = "8" // 8 x 16 limits = the log's 128 units per call
		}
		args = append(args, cost, "", "atmost")
		out = append(out, worstCase{name: name + ": 16 limits, atmost, lockouts", script: name, keys: keys, args: args})

		// a full batch with every request on the general path (atmost, a
		// lockout): 32 requests of one key each, the costliest shape the caps
		// allow (the log: 16 requests, 128 units)
		n, bcost := 32, "1000"
		if a == luarate.SlidingWindowLog {
			n, bcost = 16, "8"
		}
		bkeys := []string{}
		bargs := []string{"batch", ""}
		for r := range n {
			bkeys = append(bkeys, prefix+"{"+name+":batch"+strconv.Itoa(r)+"}")
			bargs = append(bargs, "1 "+bcost+" atmost", rate+" 1000 0 60000")
		}
		out = append(out, worstCase{name: fmt.Sprintf("%s: a batch of %d requests, %d keys, atmost, lockouts", name, n, len(bkeys)), script: name, keys: bkeys, args: bargs})
	}
	// the log pruning as it adds: a full log of 4000 entries, all expired
	out = append(out, worstCase{name: "sliding_window_log: cost 128 on a full log of 4000, all expired", script: "sliding_window_log",
		keys: []string{prefix + "{swl:full}"}, args: []string{"4000 600000 0", "128", strconv.FormatInt(fillAt+600_001, 10)}})
	// concurrency: acquire on a set of maxLeases leases, all expired
	out = append(out, worstCase{name: fmt.Sprintf("concurrency: acquire over %d expired leases", maxLeases), script: "concurrency",
		keys: []string{prefix + "{c:full}"}, args: []string{"acquire", strconv.Itoa(maxLeases), "60000", strings.Repeat("x", 64), strconv.FormatInt(fillAt+600_001, 10)}})
	return out
}

// fillAt is the now_ms the full sets are filled at.
const fillAt = 1_700_000_000_000

// maxLeases is the concurrency script's cap on max, the leases one key holds.
const maxLeases = 1000

// fill makes the state a case meets as large as the caps allow: maxLeases leases
// of 64 characters and a log of 4000 entries, at fillAt, which the call meets
// 600 s later, all expired (their TTLs on the real clock are that long, so
// nothing expires before the call).
func fill(ctx context.Context, rc rueidis.Client, c worstCase, lua *rueidis.Lua) error {
	var calls [][]string
	switch {
	case c.script == "concurrency":
		for i := range maxLeases {
			id := fmt.Sprintf("%064d", i)
			calls = append(calls, []string{"acquire", strconv.Itoa(maxLeases), "600000", id, strconv.FormatInt(fillAt, 10)})
		}
	case strings.HasPrefix(c.name, "sliding_window_log: cost 128"):
		for range 4000 / 125 {
			calls = append(calls, []string{"4000 600000 0", "125", strconv.FormatInt(fillAt, 10)})
		}
	}
	for _, args := range calls {
		if err := lua.Exec(ctx, rc, c.keys, args).Error(); err != nil {
			return err
		}
	}
	return nil
}

// worst times every worst case, returning how many went over the budget.
func worst(ctx context.Context, w io.Writer, addr string) (int, error) {
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	scriptsByName := map[string]string{}
	for _, s := range luarate.Scripts() {
		scriptsByName[s.Name] = s.Source
	}
	fmt.Fprintln(w, "\nThe worst calls the contract allows, timed by Redis (SLOWLOG, median of", worstRuns, "runs):")
	fmt.Fprintln(w, "\n| call | Redis usec | budget | |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	over := 0
	prefix := randomPrefix()
	for _, c := range worstCases(prefix) {
		lua := rueidis.NewLuaScript(scriptsByName[c.script])
		var times []int64
		for range worstRuns {
			if err := rc.Do(ctx, rc.B().Del().Key(c.keys...).Build()).Error(); err != nil {
				return 0, err
			}
			if err := fill(ctx, rc, c, lua); err != nil {
				return 0, fmt.Errorf("%s: fill: %w", c.name, err)
			}
			if err := rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("slowlog-log-slower-than", "0").Build()).Error(); err != nil {
				return 0, err
			}
			if err := rc.Do(ctx, rc.B().SlowlogReset().Build()).Error(); err != nil {
				return 0, err
			}
			if err := lua.Exec(ctx, rc, c.keys, c.args).Error(); err != nil {
				return 0, fmt.Errorf("%s: %w", c.name, err)
			}
			entries, err := rc.Do(ctx, rc.B().SlowlogGet().Count(10).Build()).ToArray()
			if err != nil {
				return 0, err
			}
			us := int64(-1)
			for _, e := range entries {
				fields, err := e.ToArray()
				if err != nil || len(fields) < 4 {
					continue
				}
				cmd, _ := fields[3].AsStrSlice()
				if len(cmd) > 0 && strings.HasPrefix(strings.ToUpper(cmd[0]), "EVAL") {
					us, _ = fields[2].AsInt64()
				}
			}
			if us < 0 {
				return 0, fmt.Errorf("%s: no SLOWLOG entry for the script call", c.name)
			}
			times = append(times, us)
		}
		_ = rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("slowlog-log-slower-than", "10000").Build()).Error()
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		median := times[len(times)/2]
		verdict := "PASS"
		if median > 1000 {
			verdict = "FAIL"
			over++
		}
		fmt.Fprintf(w, "| %s | %d | 1000 | %s |\n", c.name, median, verdict)
	}
	return over, nil
}
