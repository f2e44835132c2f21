package httplimit_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
)

// realAddr is a real Redis every behaviour test also runs against; empty
// when there is none (then those tests skip loudly, and CI fails instead).
var realAddr string

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &realAddr, new(bool))) }

// eachBackend runs f on miniredis and on real Redis, with a client and a
// key prefix of its own.
func eachBackend(t *testing.T, f func(t *testing.T, client rueidis.Client, prefix string)) {
	t.Run("miniredis", func(t *testing.T) {
		_, c := redistest.Mini(t)
		f(t, c, uniquePrefix())
	})
	t.Run("redis", func(t *testing.T) {
		if realAddr == "" {
			t.Skip("SKIPPED: no real Redis (install redis-server or set REDIS_ADDR)")
		}
		f(t, redistest.Client(t, realAddr), uniquePrefix())
	})
}

func uniquePrefix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "h" + hex.EncodeToString(b) + ":"
}

// fixedLimiter is a Limiter whose scripts see a clock that stands still
// until the test moves it.
func fixedLimiter(client rueidis.Client, prefix string, now *time.Time) *luarate.Limiter {
	return luarate.New(client, luarate.WithPrefix(prefix), luarate.WithClock(func() time.Time { return *now }))
}

// logBuffer is a bytes.Buffer safe for the logger and the test at once.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
