package luarate

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The benchmarks run every limiter algorithm against the real redis-server
// the tests start (they skip without one). Run them with
//
//	go test -run '^$' -bench . -benchmem
//
// ns/op and allocs/op are the client's cost plus one loopback round trip;
// the Redis-side cost per decision is measured by the bench/ module.

// benchLimit admits bursts of 100, then 100 per second: the single-key
// benchmarks are mostly denials, the many-key ones mostly admissions.
func benchLimit(a Algorithm) Limit { return PerSecond(a, 100) }

// benchKeys are the keys of the many-key benchmarks, built once so that key
// formatting is not counted twice.
var benchKeys = func() []string {
	k := make([]string, 10_000)
	for i := range k {
		k[i] = "user" + strconv.Itoa(i)
	}
	return k
}()

func BenchmarkAllow(b *testing.B) {
	l := New(realClient(b), WithPrefix(uniquePrefix()))
	ctx := context.Background()
	for _, a := range Algorithms() {
		limit := benchLimit(a)
		b.Run(a.String()+"/one_key", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Allow(ctx, "hot", limit); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(a.String()+"/many_keys", func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := l.Allow(ctx, benchKeys[i%len(benchKeys)], limit); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(a.String()+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(16) // 16 x GOMAXPROCS goroutines share rueidis' pipeline
			var next atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					if _, err := l.Allow(ctx, benchKeys[i%int64(len(benchKeys))], limit); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkAllowDenyCache is the one-key flood with the deny cache on: after
// the first denial the answers come from memory until the retry time.
func BenchmarkAllowDenyCache(b *testing.B) {
	l := New(realClient(b), WithPrefix(uniquePrefix()), WithDenyCache(1000))
	ctx := context.Background()
	for _, a := range Algorithms() {
		limit := Limit{Algorithm: a, Rate: 1, Period: time.Hour}
		b.Run(a.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Allow(ctx, "flood", limit); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDenyCacheMemory is the heap one cached denial holds, for a
// single-limit key of a few bytes and one of MaxKeyLen (bytes/key).
func BenchmarkDenyCacheMemory(b *testing.B) {
	const n = 10_000
	l := &Limiter{prefix: "rl:"}
	limits := []Limit{PerSecond(GCRA, 100)}
	denied := Result{Limit: 100, ResetAfter: time.Minute, RetryAfter: time.Minute}
	now := time.Now()
	for _, size := range []int{8, MaxKeyLen} {
		b.Run(fmt.Sprintf("key=%dB", size), func(b *testing.B) {
			keys := make([]string, n)
			for i := range keys {
				key := strconv.Itoa(i)
				_, k, _, err := l.command(key+strings.Repeat("k", size-len(key)), 1, OpTake, limits)
				if err != nil {
					b.Fatal(err)
				}
				keys[i] = k[0]
			}
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				c := newDenyCache(n)
				for _, k := range keys {
					c.remember(k, limits, 1, now, 0, denied)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				if c.order.Len() != n {
					b.Fatalf("cached %d denials, want %d", c.order.Len(), n)
				}
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/key")
			}
		})
	}
}

// BenchmarkKeys is the client's key and argument building alone.
func BenchmarkKeys(b *testing.B) {
	l := &Limiter{prefix: "rl:"} // command builds arguments, it needs no client
	limits := []Limit{PerSecond(GCRA, 100)}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := l.command("user42", 1, OpTake, limits); err != nil {
			b.Fatal(err)
		}
	}
}
