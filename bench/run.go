package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/luarate/luarate"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// maxCallsPerGoroutine bounds every load loop by count as well as by time.
const maxCallsPerGoroutine = 10_000_000

// histogram counts latencies: 1us buckets below 10ms, 100us buckets up to
// 1s, and one bucket for everything slower.
type histogram [10_000 + 9_900 + 1]int64

func (h *histogram) add(d time.Duration) {
	us := d.Microseconds()
	if us >= 10_000 {
		us = min(10_000+(us-10_000)/100, int64(len(h))-1)
	}
	h[us]++
}

func (h *histogram) merge(o *histogram) {
	for i, n := range o {
		h[i] += n
	}
}

// quantile returns the latency under which a fraction q of calls finished
// (the upper bound of its bucket).
func (h *histogram) quantile(q float64) time.Duration {
	var total int64
	for _, n := range h {
		total += n
	}
	want := int64(q * float64(total))
	var seen int64
	for i, n := range h {
		seen += n
		if seen > want {
			us := int64(i + 1)
			if i >= 10_000 {
				us = 10_000 + int64(i-10_000+1)*100
			}
			return time.Duration(us) * time.Microsecond
		}
	}
	return 0
}

// measurement accumulates one contender's runs on one workload.
type measurement struct {
	contender, algo, workload string
	calls                     int64 // decisions made
	elapsed                   time.Duration
	hist                      *histogram
	redisCalls, redisUsec     int64
	// clientCPU and redisCPU are the CPU time the bench process and the
	// Redis process used while it ran (getrusage; INFO cpu).
	clientCPU, redisCPU time.Duration
	errors              int64
}

// cores is how many CPUs the client and Redis kept busy on average: with
// both below what the machine has, throughput is bound by round trips and
// wake-ups, not by either side's CPU.
func (m *measurement) cores() (client, redis float64) {
	return m.clientCPU.Seconds() / m.elapsed.Seconds(), m.redisCPU.Seconds() / m.elapsed.Seconds()
}

func (m *measurement) perSecond() float64 { return float64(m.calls) / m.elapsed.Seconds() }

// usecPerDecision is Redis's CPU per decision: with batching, one script call
// carries several.
func (m *measurement) usecPerDecision() float64 {
	if m.calls == 0 {
		return 0
	}
	return float64(m.redisUsec) / float64(m.calls)
}

// batchSize is the decisions per script call Redis saw.
func (m *measurement) batchSize() float64 {
	if m.redisCalls == 0 {
		return 0
	}
	return float64(m.calls) / float64(m.redisCalls)
}

// load runs allow from cfg.goroutines goroutines over keys for cfg.duration.
func load(ctx context.Context, cfg config, keys []string, allow func(context.Context, string) error, m *measurement) {
	hists := make([]histogram, cfg.goroutines)
	counts := make([]int64, cfg.goroutines)
	errs := make([]int64, cfg.goroutines)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(cfg.duration)
	for g := range cfg.goroutines {
		wg.Go(func() {
			i := g
			for n := 0; n < maxCallsPerGoroutine; n++ {
				t0 := time.Now()
				if t0.After(deadline) {
					return
				}
				if err := allow(ctx, keys[i%len(keys)]); err != nil {
					errs[g]++
				}
				hists[g].add(time.Since(t0))
				counts[g]++
				i += cfg.goroutines
			}
		})
	}
	wg.Wait()
	m.elapsed += time.Since(start)
	for g := range hists {
		m.hist.merge(&hists[g])
		m.calls += counts[g]
		m.errors += errs[g]
	}
}

// measure runs load and adds to m the script calls and Redis time it cost,
// from INFO commandstats reset before it, and the CPU both processes used.
func measure(ctx context.Context, cfg config, rc rueidis.Client, keys []string, allow func(context.Context, string) error, m *measurement) error {
	if err := resetStats(ctx, rc); err != nil {
		return err
	}
	redis0, err := redisCPU(ctx, rc)
	if err != nil {
		return err
	}
	client0 := clientCPU()
	load(ctx, cfg, keys, allow, m)
	m.clientCPU += clientCPU() - client0
	redis1, err := redisCPU(ctx, rc)
	if err != nil {
		return err
	}
	m.redisCPU += redis1 - redis0
	calls, usec, err := commandStats(ctx, rc)
	m.redisCalls += calls
	m.redisUsec += usec
	return err
}

// results is everything the report and the chart show.
type results struct {
	redisVersion string
	runs         []*measurement // by workload, then contender
	lone         []*measurement // one goroutine: gcra batched and unbatched
	memory       []memoryUse
	floods       []flood
}

type memoryUse struct {
	contender, algo string
	bytes           int64 // -1: writes nothing
}

// flood is the deny cache measurement for one algorithm, off and on.
type flood struct {
	algo    string
	off, on floodRun
}

type floodRun struct{ callsPerSecond, decisionsPerSecond float64 }

// callsPerDecision is Redis calls per second divided by requests per second.
func (r floodRun) callsPerDecision() float64 { return r.callsPerSecond / r.decisionsPerSecond }

// drop is how many fewer Redis calls the cache makes at the same request rate.
func (f flood) drop() float64 { return 1 - f.on.callsPerDecision()/f.off.callsPerDecision() }

func run(ctx context.Context, cfg config) (*results, error) {
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{cfg.addr}})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	gr := redis.NewClient(&redis.Options{Addr: cfg.addr})
	defer gr.Close()

	res := &results{}
	info, err := rc.Do(ctx, rc.B().Info().Section("server").Build()).ToString()
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			res.redisVersion = "Redis " + v
		}
	}

	cs := contenders(rc, gr, randomPrefix(), time.Second)
	wls := workloads(cfg.keys)
	for _, c := range cs { // load the scripts and connect before timing
		if err := c.allow(ctx, "warmup"); err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	byKey := map[string]*measurement{}
	for _, w := range wls {
		for _, c := range cs {
			m := &measurement{contender: c.name, algo: c.algo, workload: w.name, hist: new(histogram)}
			byKey[w.name+"|"+c.name] = m
			res.runs = append(res.runs, m)
		}
	}
	for round := range cfg.rounds {
		for _, w := range wls {
			for i := range cs {
				c := cs[(i+round)%len(cs)] // rotate the order every round
				m := byKey[w.name+"|"+c.name]
				if err := measure(ctx, cfg, rc, w.keys, c.allow, m); err != nil {
					return nil, err
				}
				if m.errors > 0 {
					return nil, fmt.Errorf("%s on %s: %d calls failed", c.name, w.name, m.errors)
				}
			}
		}
	}

	// A lone caller: batching must add no latency when nothing is in flight.
	lone := cfg
	lone.goroutines = 1
	lone.duration = cfg.duration / 5
	var lones []contender
	for _, c := range cs {
		if c.algo == "gcra" {
			lones = append(lones, c)
			res.lone = append(res.lone, &measurement{contender: c.name, algo: c.algo, workload: "1 goroutine, " + wls[1].name, hist: new(histogram)})
		}
	}
	for range 5 * cfg.rounds { // short turns, alternating, so both see the same machine
		for i, c := range lones {
			if err := measure(ctx, lone, rc, wls[1].keys, c.allow, res.lone[i]); err != nil {
				return nil, err
			}
		}
	}

	for _, c := range cs {
		if c.memKey == nil {
			continue
		}
		key, err := c.memKey(ctx, idleKey())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.name, err)
		}
		use := memoryUse{contender: c.name, algo: c.algo, bytes: -1}
		if key != "" {
			if use.bytes, err = rc.Do(ctx, rc.B().MemoryUsage().Key(key).Samples(0).Build()).AsInt64(); err != nil {
				return nil, err
			}
		}
		res.memory = append(res.memory, use)
	}

	for _, a := range luarate.Algorithms() {
		f, err := denyFlood(ctx, cfg, rc, a)
		if err != nil {
			return nil, err
		}
		res.floods = append(res.floods, f)
	}
	return res, nil
}

// idleKey is a fresh user key of the same length for every contender.
func idleKey() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "idle" + hex.EncodeToString(b)
}

// denyFlood sends a flood in which 9 of 10 requests come from 100 keys over
// their limit of 100 per minute and the rest from users never seen before
// (always admitted, so always a Redis call), with the deny cache off and then
// on. It counts the script calls Redis executes (INFO commandstats) per
// decision, which is the ratio of Redis calls per second at the same request
// rate.
func denyFlood(ctx context.Context, cfg config, rc rueidis.Client, a luarate.Algorithm) (flood, error) {
	f := flood{algo: a.String()}
	limit := luarate.PerMinute(a, 100)
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("abuser%d", i)
	}
	for _, size := range []int{0, 10_000} {
		l := luarate.New(rc, luarate.WithPrefix(randomPrefix()), luarate.WithDenyCache(size))
		// warm up: the abusers spend their limit, so the flood meets denied keys
		var wg sync.WaitGroup
		errs := make([]error, len(keys))
		for i, key := range keys {
			wg.Go(func() {
				for range 101 {
					if _, err := l.Allow(ctx, key, limit); err != nil {
						errs[i] = err
						return
					}
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return f, err
		}
		if err := resetStats(ctx, rc); err != nil {
			return f, err
		}
		var n, users atomic.Int64
		m := &measurement{hist: new(histogram)}
		load(ctx, cfg, keys, func(ctx context.Context, key string) error {
			if n.Add(1)%10 == 0 {
				key = "user" + strconv.FormatInt(users.Add(1), 10)
			}
			_, err := l.Allow(ctx, key, limit)
			return err
		}, m)
		calls, _, err := commandStats(ctx, rc)
		if err != nil {
			return f, err
		}
		r := floodRun{callsPerSecond: float64(calls) / m.elapsed.Seconds(), decisionsPerSecond: m.perSecond()}
		if size == 0 {
			f.off = r
		} else {
			f.on = r
		}
	}
	return f, nil
}
