// Command algoplot draws docs/algorithms.svg: the same bursty traffic sent
// through every limiter algorithm, one row each, admitted requests in green
// above the line and denied ones in red below it (the leaky queue's admitted
// requests at the time they leave the queue). It runs the real scripts,
// on an embedded miniredis by default or on the Redis -addr names, with an
// explicit clock, so the picture is the same on every run.
//
//	go run ./internal/algoplot -o docs/algorithms.svg
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/redis/rueidis"
)

func main() {
	addr := flag.String("addr", "", "Redis to run on (default: an embedded miniredis)")
	out := flag.String("o", "", "file to write (default: stdout)")
	flag.Parse()
	if err := run(*addr, *out); err != nil {
		fmt.Fprintln(os.Stderr, "algoplot:", err)
		os.Exit(1)
	}
}

func run(addr, out string) error {
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		addr = mr.Addr()
	}
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		return err
	}
	defer client.Close()
	var w io.Writer = os.Stdout
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	svg, err := render(context.Background(), client)
	if err != nil {
		return err
	}
	_, err = io.WriteString(w, svg)
	return err
}

// algorithms are the rows, top to bottom.
var algorithms = []luarate.Algorithm{
	luarate.FixedWindow, luarate.SlidingWindowLog, luarate.SlidingWindowCounter,
	luarate.TokenBucket, luarate.LeakyBucket, luarate.GCRA, luarate.LeakyQueue,
}

const (
	epoch   = 1_700_000_000_000 // ms; a whole second, so windows start on the grid
	spanMS  = 6000
	left    = 170.0 // px of labels
	width   = 900.0
	rowH    = 44.0
	top     = 40.0
	pxPerMS = (width - left - 20) / spanMS
)

// traffic is the request times, ms after epoch: a burst of 25, two seconds at
// 20/s, a burst of 30 straddling the window boundary at 4 s, then 8/s.
func traffic() []int64 {
	var ts []int64
	for i := range 25 {
		ts = append(ts, 200+int64(i)*2)
	}
	for t := int64(1000); t < 3000; t += 50 {
		ts = append(ts, t)
	}
	for i := range 30 {
		ts = append(ts, 3900+int64(i)*7)
	}
	for t := int64(5000); t < spanMS; t += 125 {
		ts = append(ts, t)
	}
	return ts
}

func render(ctx context.Context, client rueidis.Client) (string, error) {
	now := int64(epoch)
	limiter := luarate.New(client, luarate.WithPrefix("algoplot:"), luarate.WithClock(func() time.Time { return time.UnixMilli(now) }))
	var b strings.Builder
	height := top + rowH*float64(len(algorithms)) + 30
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="18" font-size="13">Same traffic, 10 per second (bursts of 10): green = admitted, red = denied</text>`+"\n")
	for s := int64(0); s <= spanMS; s += 1000 {
		x := left + float64(s)*pxPerMS
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#ccc"/>`+"\n", x, top-6, x, height-24)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#666">%ds</text>`+"\n", x, height-10, s/1000)
	}
	reqs := traffic()
	for row, algo := range algorithms {
		limit := luarate.PerSecond(algo, 10)
		if err := limiter.Reset(ctx, "demo", limit); err != nil {
			return "", err
		}
		y := top + rowH*float64(row) + rowH/2
		admitted := 0
		var green, red strings.Builder // one path of ticks per colour
		for _, t := range reqs {
			now = epoch + t
			res, err := limiter.Allow(ctx, "demo", limit)
			if err != nil {
				return "", err
			}
			x := left + float64(t)*pxPerMS
			if res.Allowed {
				admitted++
				// a queued request proceeds after its delay
				if at := t + res.Delay.Milliseconds(); at <= spanMS {
					fmt.Fprintf(&green, "M%.1f %.0fv15", left+float64(at)*pxPerMS, y-16)
				}
			} else {
				fmt.Fprintf(&red, "M%.1f %.0fv11", x, y+1)
			}
		}
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#1a7f37" stroke-width="1.5"/>`+"\n", green.String())
		fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#cf222e" opacity="0.6"/>`+"\n", red.String())
		if err := limiter.Reset(ctx, "demo", limit); err != nil {
			return "", err
		}
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#888"/>`+"\n", left, y, width-20, y)
		label := algo.String()
		if algo == luarate.LeakyQueue {
			label += " (leaving)"
		}
		fmt.Fprintf(&b, `<text x="10" y="%.1f">%s</text>`+"\n", y-2, label)
		fmt.Fprintf(&b, `<text x="10" y="%.1f" fill="#666">%d of %d admitted</text>`+"\n", y+13, admitted, len(reqs))
	}
	b.WriteString("</svg>\n")
	return b.String(), nil
}
