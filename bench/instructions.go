package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// Instruction counts are the Redis CPU measure that noise cannot move: the
// server runs under valgrind's callgrind, which counts the instructions it
// executes, and the count for a fixed number of calls is the same from one
// run to the next whatever else the machine does. usec_per_call, by
// contrast, moves by 2x between runs on a shared 2-core machine.
//
// Calls are made one at a time from one goroutine, so every contender pays
// the same per-request network work on the server (no pipelining for one and
// not the other) and the difference between two contenders is their scripts.

// floorScript does only what a GCRA or token bucket decision cannot avoid:
// read the server clock, read the state, write it back with a TTL, and reply
// six integers. No limiter that keeps its state in one key does less.
const floorScript = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], string.format('%d', now), 'PX', 1000)
return {1, 10, 9, 100, 0, 0}`

const floor = "floor: TIME + GET + SET PX, 6 integers"

// floorBatchScript is the floor of a batch on distinct keys: what
// floorScript does for each key of the call, with each request's limit in
// ARGV and the seven integers a luarate reply has. A batched decision on a
// key of its own cannot cost less than this share of it.
const floorBatchScript = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  redis.call('SET', KEYS[i], string.format('%d', now), 'PX', 1000)
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] = 1, 10, 9, 100, 0, 0, 1
end
return out`

// floorStateBatchScript is the floor of a batch on keys that hold state:
// one MGET for the call, then for each key what a decision on a state kept
// as decimal text cannot avoid: read two integers from the string, format
// the new state and its TTL, write them with SET PX, and reply seven
// integers. A batched decision that reads and rewrites such a state cannot
// cost less than this share of it.
const floorStateBatchScript = `local t = redis.call('TIME')
local now = t[1] * 1000 + (t[2] - t[2] % 1000) / 1000
local got = redis.call('MGET', unpack(KEYS))
local out = {}
for i = 1, #KEYS do
  local level, updated = 100, now
  if got[i] then
    level, updated = string.match(got[i], '^(%d+) (%d+)$')
    level, updated = level + 0, updated + 0
  end
  level = level - 1
  local ttl = 100000 - (now - updated)
  redis.call('SET', KEYS[i], string.format('%d %d', level, now), 'PX', string.format('%d', ttl))
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] = 1, 100, level, ttl, 0, 0, 1
end
return out`

// floorBatch and floorStateBatch are the batched floors' names, and
// floorBatchSize their keys per call.
const (
	floorBatch      = "floor, batched: 32 keys per call, each GET + SET PX, 7 integers"
	floorStateBatch = "floor, batched: 32 keys per call, one MGET, each state parsed and rewritten with SET PX, 7 integers"
	floorBatchSize  = 32
)

// instrResult is one contender's instructions per call on one workload.
type instrResult struct {
	contender, algo, workload string
	concurrent                bool // callers at once, so luarate batches
	filled                    bool // on keys holding state: reported, not a target
	perCall                   float64
	perScript                 float64 // decisions per script call
}

// instrGoroutines is how many callers the concurrent instruction counts use.
const instrGoroutines = 64

// callgrind is a redis-server running under callgrind.
type callgrind struct {
	addr string
	cmd  *exec.Cmd
	dir  string
}

func startCallgrind() (*callgrind, error) {
	for _, bin := range []string{"valgrind", "callgrind_control", "redis-server"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("-instructions needs %s on PATH (apt-get install valgrind redis-server)", bin)
		}
	}
	dir, err := os.MkdirTemp("", "luarate-callgrind-")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command("valgrind", "--tool=callgrind", "--callgrind-out-file="+filepath.Join(dir, "cg.out"),
		"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	cg := &callgrind{addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd, dir: dir}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", cg.addr, time.Second)
		if err == nil {
			c.Close()
			return cg, nil
		}
		if time.Now().After(deadline) {
			cg.stop()
			return nil, fmt.Errorf("redis-server under valgrind did not start: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *callgrind) stop() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	os.RemoveAll(c.dir)
}

// control runs callgrind_control with flag (-z: zero the counters, -d: dump
// them) against the server.
func (c *callgrind) control(flag string) error {
	out, err := exec.Command("callgrind_control", flag, strconv.Itoa(c.cmd.Process.Pid)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("callgrind_control %s: %v: %s", flag, err, out)
	}
	return nil
}

// counted returns the instructions Redis executed while f ran.
func (c *callgrind) counted(f func() error) (int64, error) {
	if err := c.control("-z"); err != nil {
		return 0, err
	}
	if err := f(); err != nil {
		return 0, err
	}
	old, _ := filepath.Glob(filepath.Join(c.dir, "cg.out.*"))
	for _, p := range old {
		os.Remove(p)
	}
	if err := c.control("-d"); err != nil {
		return 0, err
	}
	dumps, _ := filepath.Glob(filepath.Join(c.dir, "cg.out.*"))
	if len(dumps) == 0 {
		return 0, errors.New("callgrind wrote no dump")
	}
	raw, err := os.ReadFile(dumps[0])
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "summary: "); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, errors.New("no summary line in the callgrind dump")
}

// instructions measures every contender (and the floor script) on both
// workloads: calls sequential calls after a warm-up, instructions per
// EVALSHA.
func instructions(ctx context.Context, keys, calls int) ([]instrResult, error) {
	cg, err := startCallgrind()
	if err != nil {
		return nil, err
	}
	defer cg.stop()
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{cg.addr}, ConnWriteTimeout: time.Minute})
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	gr := redis.NewClient(&redis.Options{Addr: cg.addr, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	defer gr.Close()

	cs := contenders(rc, gr, randomPrefix(), instrPeriod)
	fl := rueidis.NewLuaScript(floorScript)
	cs = append(cs[:2:2], append([]contender{{name: floor, allow: func(ctx context.Context, key string) error {
		return fl.Exec(ctx, rc, []string{key}, nil).Error()
	}}}, cs[2:]...)...)

	var out []instrResult
	for _, w := range workloads(keys) {
		for _, concurrent := range []bool{false, true} {
			for _, c := range cs {
				if c.unbatched || (concurrent && c.name == noop) {
					continue // alone, batched and unbatched calls are the same calls
				}
				r, err := countInstructions(ctx, cg, rc, c, w, calls, concurrent, false)
				if err != nil {
					return nil, err
				}
				out = append(out, r)
			}
		}
		if len(w.keys) == 1 {
			continue
		}
		r, err := countFloorBatch(ctx, cg, rc, w, calls, false)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
		if r, err = countFloorBatch(ctx, cg, rc, w, calls, true); err != nil {
			return nil, err
		}
		out = append(out, r)
		// The same keys holding state, as they do under a limit whose
		// keys outlive the time between two requests: each decision reads,
		// checks and rewrites a state instead of writing a new one.
		for _, c := range cs {
			if c.unbatched || c.fill == nil && c.name != floor { // (the floor writes state as it goes)
				continue
			}
			r, err := countInstructions(ctx, cg, rc, c, w, calls, true, true)
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// countFloorBatch counts floorBatchScript deciding calls distinct keys of w,
// floorBatchSize per call, reported beside the concurrent callers; with
// filled, floorStateBatchScript on the same keys after one uncounted pass
// over them has written their states.
func countFloorBatch(ctx context.Context, cg *callgrind, rc rueidis.Client, w workload, calls int, filled bool) (instrResult, error) {
	if err := emptied(ctx, rc); err != nil {
		return instrResult{}, err
	}
	name, script, workload := floorBatch, floorBatchScript, w.name
	if filled {
		name, script, workload = floorStateBatch, floorStateBatchScript, w.name+" holding state"
	}
	fb := rueidis.NewLuaScript(script)
	batch := func(from int) error {
		keys := make([]string, floorBatchSize)
		args := make([]string, floorBatchSize)
		for j := range keys {
			keys[j] = w.key(from + j)
			args[j] = "100 100000 100"
		}
		return fb.Exec(ctx, rc, keys, args).Error()
	}
	if err := batch(0); err != nil { // load the script
		return instrResult{}, fmt.Errorf("%s: %w", name, err)
	}
	for i := floorBatchSize; filled && i < calls; i += floorBatchSize {
		if err := batch(i); err != nil {
			return instrResult{}, fmt.Errorf("%s: %w", name, err)
		}
	}
	n, err := cg.counted(func() error {
		for i := 0; i < calls; i += floorBatchSize {
			if err := batch(i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return instrResult{}, fmt.Errorf("%s: %w", name, err)
	}
	calls = (calls + floorBatchSize - 1) / floorBatchSize * floorBatchSize
	return instrResult{contender: name, workload: fmt.Sprintf("%s, %d callers", workload, instrGoroutines), concurrent: true, filled: filled, perCall: float64(n) / float64(calls), perScript: floorBatchSize}, nil
}

// emptied empties the callgrind server (the bench's own) before a count, so
// that no count meets the state an earlier one left (a fixed window's keys
// outlive a count, a bucket's do not) or pays for expiring its keys.
func emptied(ctx context.Context, rc rueidis.Client) error {
	return rc.Do(ctx, rc.B().Flushall().Sync().Build()).Error()
}

// countInstructions counts what Redis executes for calls decisions of c on
// w: one at a time, or from instrGoroutines callers at once, on an emptied
// server; with filled, on keys that each hold state with room left.
func countInstructions(ctx context.Context, cg *callgrind, rc rueidis.Client, c contender, w workload, calls int, concurrent, filled bool) (instrResult, error) {
	if err := emptied(ctx, rc); err != nil {
		return instrResult{}, err
	}
	for i := range 200 { // load the script, fill the hot key
		if err := c.allow(ctx, w.keys[i%len(w.keys)]); err != nil {
			return instrResult{}, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	name := w.name
	if filled {
		name += " holding state"
		// half the burst, so a bucket's state lives half the 100 s period:
		// longer than this and the count take under valgrind
		for i := 0; i < calls && c.fill != nil; i++ {
			if err := c.fill(ctx, w.key(i)); err != nil {
				return instrResult{}, fmt.Errorf("%s: %w", c.name, err)
			}
		}
	}
	if err := resetStats(ctx, rc); err != nil {
		return instrResult{}, err
	}
	goroutines := 1
	if concurrent {
		goroutines = instrGoroutines
		name += fmt.Sprintf(", %d callers", goroutines)
	}
	n, err := cg.counted(func() error {
		errs := make(chan error, goroutines)
		for g := range goroutines {
			go func() {
				for i := g; i < calls; i += goroutines {
					if err := c.allow(ctx, w.key(i)); err != nil {
						errs <- fmt.Errorf("%s: %w", c.name, err)
						return
					}
				}
				errs <- nil
			}()
		}
		var first error
		for range goroutines {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return first
	})
	if err != nil {
		return instrResult{}, err
	}
	evals, _, err := commandStats(ctx, rc)
	if err != nil {
		return instrResult{}, err
	}
	if !concurrent && evals < int64(calls) {
		return instrResult{}, fmt.Errorf("%s: %d script calls counted, expected %d", c.name, evals, calls)
	}
	return instrResult{contender: c.name, algo: c.algo, workload: name, concurrent: concurrent, filled: filled, perCall: float64(n) / float64(calls), perScript: float64(calls) / float64(max(evals, 1))}, nil
}
