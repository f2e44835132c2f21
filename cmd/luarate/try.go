package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/luarate/luarate"
)

const tryHelp = `Usage: luarate try [flags]

Sends N requests, one after the other, to one key under one limit (-rate per
-period) or several at once (-limits, in the notation of luarate.ParseLimits
and the httplimit middleware) and prints a table of the decisions the script
made: allowed, remaining, reset and retry times (milliseconds, as the scripts
reply; with several limits, those of the tightest). Long runs print a progress line on
stderr and fold repeated rows; -all shows every row.

Examples:
  luarate try                                   # 15 requests at 10/s GCRA
  luarate try -algo fixed_window -rate 5 -n 8
  luarate try -algo token_bucket -rate 2 -burst 5 -every 250ms -n 20
  luarate try -algo leaky_queue -rate 10 -burst 4 -n 6   # adds delay_ms: each one's wait
  luarate try -limits '3/second;5/minute' -every 250ms -n 12
  luarate try -n 100000 -redis 127.0.0.1:6379   # how many of 100k get through
`

// tryConfig is one run of requests.
type tryConfig struct {
	limit  luarate.Limit   // -algo, -rate, -period, -burst
	spec   string          // -limits; replaces limit
	limits []luarate.Limit // what the run applies
	n      int
	cost   int
	every  time.Duration
	key    string
	all    bool
	// settle: after the n requests, wait the last RetryAfter and try once
	// more, to show a denied client getting in on time (the default job).
	settle bool
}

func try(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("try")
	cfg, redis, timeout := tryFlags(fs)
	if err := parseFlags(fs, args, tryHelp, stdout); err != nil {
		return err
	}
	var both bool
	fs.Visit(func(f *flag.Flag) {
		both = both || (cfg.spec != "" && (f.Name == "rate" || f.Name == "period" || f.Name == "burst"))
	})
	if both {
		return usageError{fmt.Errorf("try: -limits replaces -rate, -period and -burst: give one or the other")}
	}
	if err := cfg.finish(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	b, err := connect(ctx, *redis, true)
	if err != nil {
		return err
	}
	defer b.close()
	err = cfg.run(ctx, luarate.New(b.client), b.where, stdout, stderr)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// the run's own -timeout ran out: say so rather than blame Redis
		return fmt.Errorf("try: stopped after -timeout %v; raise it or lower -n", *timeout)
	}
	return err
}

// demo is the default job: a burst against 10 per second, then one request
// after waiting the retry-after.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("")
	redis := redisFlag(fs, embeddedFallback)
	if err := parseFlags(fs, args, mainHelp, stdout); err != nil {
		return err
	}
	b, err := connect(ctx, *redis, true)
	if err != nil {
		return err
	}
	defer b.close()
	cfg := tryConfig{limits: []luarate.Limit{luarate.PerSecond(luarate.GCRA, 10)}, n: 12, cost: 1, key: randomKey("demo"), settle: true}
	if err := cfg.run(ctx, luarate.New(b.client), b.where, stdout, stderr); err != nil {
		return err
	}
	fmt.Fprint(stdout, `
Requests 1-10 spend the burst of 10; 11 and 12 are denied and told when to retry
(within 100ms: one request per 100ms refills); waiting that long gets request 13 in.
Try another algorithm or limit:  go run ./cmd/luarate try -h
Serve a rate-limited demo API:   go run ./cmd/luarate serve
`)
	return nil
}

func tryFlags(fs *flag.FlagSet) (*tryConfig, *string, *time.Duration) {
	cfg := &tryConfig{}
	fs.Func("algo", "algorithm `name`: "+strings.Join(algorithmNames(), ", ")+" (default gcra)", func(s string) error {
		a, err := parseAlgorithm(s)
		cfg.limit.Algorithm = a
		return err
	})
	fs.IntVar(&cfg.limit.Rate, "rate", 10, "requests per -period")
	fs.DurationVar(&cfg.limit.Period, "period", time.Second, "the period of -rate, in whole milliseconds")
	fs.IntVar(&cfg.limit.Burst, "burst", 0, "capacity: how many at once (0 = rate)")
	fs.StringVar(&cfg.spec, "limits", "", "several `limits` at once, such as '10/second;1000/day' (instead of -rate, -period and -burst)")
	fs.IntVar(&cfg.n, "n", 15, "number of requests, 1 to 1000000")
	fs.IntVar(&cfg.cost, "cost", 1, "cost of each request (0 = peek)")
	fs.DurationVar(&cfg.every, "every", 0, "pause between requests (0 = back to back)")
	fs.StringVar(&cfg.key, "key", "", "the key to limit (default: a fresh random key)")
	fs.BoolVar(&cfg.all, "all", false, "print every row, even on long runs")
	redis := redisFlag(fs, embeddedFallback)
	timeout := fs.Duration("timeout", time.Minute, "stop the run after this long")
	return cfg, redis, timeout
}

// finish fills defaults and checks the flags before any connection.
func (c *tryConfig) finish() error {
	if c.limit.Algorithm == 0 {
		c.limit.Algorithm = luarate.GCRA
	}
	if c.spec != "" {
		limits, err := luarate.ParseLimits(c.spec, c.limit.Algorithm)
		if err != nil {
			return usageError{fmt.Errorf("try: -limits: %v", strings.TrimPrefix(err.Error(), "luarate: "))}
		}
		c.limits = limits
	} else {
		if err := c.limit.Validate(); err != nil {
			return usageError{fmt.Errorf("try: %v", strings.TrimPrefix(err.Error(), "luarate: "))}
		}
		c.limits = []luarate.Limit{c.limit}
	}
	if c.n < 1 || c.n > 1_000_000 {
		return usageError{fmt.Errorf("try: -n must be from 1 to 1000000, got %d", c.n)}
	}
	for _, lim := range c.limits {
		if c.cost < 0 || c.cost > lim.Capacity() {
			return usageError{fmt.Errorf("try: -cost must be from 0 to the capacity %d, got %d", lim.Capacity(), c.cost)}
		}
	}
	if c.every < 0 {
		return usageError{fmt.Errorf("try: -every must not be negative, got %v", c.every)}
	}
	if c.key == "" {
		c.key = randomKey("try")
	}
	return nil
}

// run sends the requests and prints the table and a summary.
func (c *tryConfig) run(ctx context.Context, l *luarate.Limiter, where string, stdout, stderr io.Writer) error {
	lim := c.limits[0]
	if c.spec != "" {
		fmt.Fprintf(stdout, "%s, %s all at once, cost %d, key %q, on %s\n\n", lim.Algorithm, c.spec, c.cost, c.key, where)
	} else {
		fmt.Fprintf(stdout, "%s, %d per %v, burst %d, cost %d, key %q, on %s\n\n",
			lim.Algorithm, lim.Rate, lim.Period, lim.Capacity(), c.cost, c.key, where)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	queued := lim.Algorithm == luarate.LeakyQueue // admitted requests wait delay_ms
	header, alike := "#\tat_ms\tallowed\tremaining\treset_ms\tretry_ms\t", "(+%d alike)\t\t\t\t\t\t\n"
	if queued {
		header, alike = header+"delay_ms\t", "(+%d alike)\t\t\t\t\t\t\t\n"
	}
	fmt.Fprintln(tw, header)
	row := func(i int, at time.Duration, r luarate.Result) {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%d\t%d\t%d\t", i, at.Milliseconds(), yesNo(r.Allowed), r.Remaining, r.ResetAfter.Milliseconds(), r.RetryAfter.Milliseconds())
		if queued {
			fmt.Fprintf(tw, "%d\t", r.Delay.Milliseconds())
		}
		fmt.Fprintln(tw)
	}
	fold := c.n > 40 && !c.all
	progress := newProgress(stderr, c.n)
	start := time.Now()
	var allowed, hidden int
	var last luarate.Result
	for i := 1; i <= c.n; i++ {
		if i > 1 && c.every > 0 {
			if err := sleep(ctx, c.every); err != nil {
				return fmt.Errorf("stopped after %d requests: %v", i-1, err)
			}
		}
		res, err := l.AllowMulti(ctx, c.key, c.cost, c.limits...)
		if err != nil {
			tw.Flush()
			return fmt.Errorf("request %d: %v", i, err)
		}
		if res.Allowed {
			allowed++
		}
		// folded: print the first row, every row where the answer flips, and the last
		if !fold || i == 1 || i == c.n || res.Allowed != last.Allowed {
			if hidden > 0 {
				fmt.Fprintf(tw, alike, hidden)
				hidden = 0
			}
			row(i, time.Since(start), res)
		} else {
			hidden++
		}
		last = res
		progress.update(i, allowed)
	}
	elapsed := time.Since(start)
	rate := float64(c.n) / max(elapsed.Seconds(), 1e-9)
	progress.done()
	if c.settle && !last.Allowed {
		if err := sleep(ctx, last.RetryAfter); err != nil {
			return err
		}
		res, err := l.AllowMulti(ctx, c.key, c.cost, c.limits...)
		if err != nil {
			return fmt.Errorf("request %d: %v", c.n+1, err)
		}
		row(c.n+1, time.Since(start), res)
		if res.Allowed {
			allowed++
		}
		c.n++
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\n%d requests: %d allowed, %d denied in %v (%.0f decisions/s)\n",
		c.n, allowed, c.n-allowed, elapsed.Round(time.Millisecond), rate)
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func randomKey(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// algorithmNames lists every Algorithm constant by script name, so new
// algorithms show up here without a change.
func algorithmNames() []string {
	var names []string
	for a := luarate.Algorithm(1); !strings.HasPrefix(a.String(), "Algorithm("); a++ {
		names = append(names, a.String())
	}
	return names
}

func parseAlgorithm(s string) (luarate.Algorithm, error) {
	for a := luarate.Algorithm(1); !strings.HasPrefix(a.String(), "Algorithm("); a++ {
		if a.String() == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown algorithm %q; choose one of %s", s, strings.Join(algorithmNames(), ", "))
}

// progress prints "n/total requests, k allowed" on stderr about once a
// second, for runs long enough to need it: in place on a terminal, as lines
// otherwise.
type progress struct {
	w        io.Writer
	total    int
	terminal bool
	last     time.Time
	shown    bool
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, last: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.terminal = true
		}
	}
	return p
}

func (p *progress) update(done, allowed int) {
	if time.Since(p.last) < time.Second {
		return
	}
	p.last = time.Now()
	p.shown = true
	end := "\n"
	if p.terminal {
		end = "\r"
	}
	fmt.Fprintf(p.w, "  %d/%d requests, %d allowed, %d denied%s", done, p.total, allowed, done-allowed, end)
}

func (p *progress) done() {
	if p.shown && p.terminal {
		fmt.Fprintf(p.w, "%*s\r", 60, "")
	}
}
