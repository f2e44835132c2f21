// Command bench compares luarate with go-redis/redis_rate v10 and a no-op
// script, side by side on one Redis, and checks the performance targets.
//
// It starts its own redis-server on a free loopback port (or uses -redis),
// then runs every case in turn, alternating, for a bounded time each:
// 64 goroutines calling Allow on one hot key, then on 10k keys. For each case
// it reports decisions per second and latency (p50, p99) seen by the client,
// and the Redis CPU per call from INFO commandstats (reset before each run),
// then the memory of one idle key (MEMORY USAGE), the deny cache under a
// flood, the worst calls the scripts allow (timed by SLOWLOG), and every
// target as PASS or FAIL.
//
//	cd bench && go run .                      # about 1.5 minutes; writes ../docs/bench.svg
//	cd bench && go run . -short               # a few seconds (CI)
//	cd bench && go run . -redis 127.0.0.1:6379 # an existing server (its stats are reset)
//	cd bench && go run . -instructions 2000   # also Redis instructions per call, under callgrind
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/luarate/luarate/internal/redistest"
)

func main() { os.Exit(bench()) }

// bench runs the comparison and returns the exit code; it returns rather than
// exits so that the redis-server it started is always stopped.
func bench() int {
	var cfg config
	flag.StringVar(&cfg.addr, "redis", "", "address of a Redis to use (default: start redis-server on a free loopback port); its INFO stats are reset")
	flag.DurationVar(&cfg.duration, "duration", 2*time.Second, "how long each case runs per round")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds; every case runs once per round, in turn")
	short := flag.Bool("short", false, "a quick run for CI: -duration 300ms -rounds 1, no chart")
	flag.IntVar(&cfg.goroutines, "goroutines", 64, "concurrent callers")
	flag.IntVar(&cfg.keys, "keys", 10_000, "keys in the many-keys workload")
	flag.StringVar(&cfg.svg, "svg", "../docs/bench.svg", "write the chart here (empty: none)")
	strict := flag.Bool("strict", false, "exit 1 when a target fails")
	instrCalls := flag.Int("instructions", 0, "also count Redis instructions per call under valgrind's callgrind, over this many calls per case (0: off; 2000 is plenty)")
	flag.Parse()
	if *short {
		cfg.duration, cfg.rounds = 300*time.Millisecond, 1
		if !flagSet("svg") {
			cfg.svg = ""
		}
	}

	if cfg.addr == "" {
		srv, err := redistest.Start()
		if err != nil {
			return fail(err)
		}
		defer srv.Stop()
		cfg.addr = srv.Addr
	}
	res, err := run(context.Background(), cfg)
	if err != nil {
		return fail(err)
	}
	fmt.Printf("machine: %d CPUs (%s), %s, GOMAXPROCS %d; %d goroutines, %v x %d rounds per case\n\n",
		runtime.NumCPU(), cpuModel(), res.redisVersion, runtime.GOMAXPROCS(0), cfg.goroutines, cfg.duration, cfg.rounds)
	failed := report(os.Stdout, res)
	over, err := worst(context.Background(), os.Stdout, cfg.addr)
	if err != nil {
		return fail(err)
	}
	failed += over
	if *instrCalls > 0 {
		counts, err := instructions(context.Background(), cfg.keys, *instrCalls)
		if err != nil {
			return fail(err)
		}
		failed += reportInstructions(os.Stdout, counts)
	}
	if cfg.svg != "" {
		if err := os.WriteFile(cfg.svg, chart(res), 0o644); err != nil {
			return fail(err)
		}
		fmt.Println("\nchart written to", cfg.svg)
	}
	if failed > 0 && *strict {
		return 1
	}
	return 0
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "bench:", err)
	return 1
}
