package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/luarate/luarate/insurance"
	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// realAddr is a real Redis the command also runs against; under CI it must exist.
var realAddr string

func TestMain(m *testing.M) { os.Exit(redistest.Main(m, &realAddr, new(bool))) }

func needReal(t *testing.T) {
	if realAddr == "" {
		t.Skip("SKIPPED: no real Redis (install redis-server or set REDIS_ADDR)")
	}
}

// runLuarate runs the command in-process and returns exit code, stdout, stderr.
func runLuarate(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv("REDIS_URL", "")
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

var allowedRow = regexp.MustCompile(`(?m)^\s+\d+\s+\d+\s+yes\s`)
var deniedRow = regexp.MustCompile(`(?m)^\s+\d+\s+\d+\s+no\s`)

// demoShape checks the default job's table: the burst of 10 is allowed
// with remaining 9..0, request 13 (after waiting the retry-after) is allowed.
// That holds when the burst took less than one refill (100ms); a machine
// that stalled longer (a loaded CI runner) refilled tokens on the way and
// may deny nothing, so then only "the first 10 allowed" is checked. Exact
// counts are left to TestTry's hour-long limits.
func demoShape(t *testing.T, out string) {
	t.Helper()
	at := func(i int) int {
		m := regexp.MustCompile(fmt.Sprintf(`(?m)^\s+%d\s+(\d+)\s`, i)).FindStringSubmatch(out)
		require.NotNil(t, m, "row %d in %s", i, out)
		ms, _ := strconv.Atoi(m[1])
		return ms
	}
	fast := at(10)-at(1) < 90
	for i := 1; i <= 10; i++ {
		if fast {
			assert.Regexp(t, fmt.Sprintf(`(?m)^\s+%d\s+\d+\s+yes\s+%d\s`, i, 10-i), out)
		} else {
			assert.Regexp(t, fmt.Sprintf(`(?m)^\s+%d\s+\d+\s+yes\s`, i), out)
		}
	}
	if fast {
		assert.Regexp(t, `(?m)^\s+13\s+\d+\s+yes\s`, out)
		assert.Regexp(t, `(?m)^13 requests: 1[1-3] allowed, [0-2] denied`, out)
	}
}

func TestDefaultJobEmbedded(t *testing.T) {
	code, out, errOut := runLuarate(t)
	require.Equal(t, 0, code, errOut)
	assert.Empty(t, errOut)
	assert.Contains(t, out, "gcra, 10 per 1s, burst 10, cost 1")
	assert.Contains(t, out, "on an embedded Redis (miniredis)")
	demoShape(t, out)
}

func TestDefaultJobRealRedis(t *testing.T) {
	needReal(t)
	code, out, errOut := runLuarate(t, "-redis", realAddr)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "on Redis at "+realAddr)
	demoShape(t, out)

	t.Setenv("REDIS_URL", "redis://"+realAddr)
	var buf bytes.Buffer
	require.Equal(t, 0, run(context.Background(), nil, &buf, io.Discard))
	assert.Contains(t, buf.String(), "on Redis at redis://"+realAddr)
}

func TestErrorsAreOneLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-redis", "127.0.0.1:1"}, exitFail, "luarate: cannot reach Redis at 127.0.0.1:1: "},
		{[]string{"try", "-redis", "127.0.0.1:1"}, exitFail, "luarate: cannot reach Redis at 127.0.0.1:1: "},
		{[]string{"load", "-redis", "127.0.0.1:1"}, exitFail, "luarate: cannot reach Redis at 127.0.0.1:1: "},
		{[]string{"-redis", "nonsense"}, exitUsage, `luarate: bad Redis address "nonsense": want host:port or redis://[user:password@]host:port`},
		{[]string{"-bogus"}, exitUsage, "luarate: flag provided but not defined: -bogus (run 'luarate -h')"},
		{[]string{"frobnicate"}, exitUsage, `luarate: unknown command "frobnicate"`},
		{[]string{"help", "frobnicate"}, exitUsage, `luarate: unknown command "frobnicate"`},
		{[]string{"help", "try", "serve"}, exitUsage, `luarate: help takes one command, got "try serve"`},
		{[]string{"-version", "extra"}, exitUsage, `luarate: -version takes no arguments, got "extra"`},
		{[]string{"try", "-algo", "nope"}, exitUsage, `luarate: try: invalid value "nope" for flag -algo: unknown algorithm "nope"; choose one of fixed_window, `},
		{[]string{"try", "-rate", "0"}, exitUsage, "luarate: try: invalid limit: rate must be from 1 to"},
		{[]string{"try", "-n", "0"}, exitUsage, "luarate: try: -n must be from 1 to 1000000, got 0"},
		{[]string{"try", "-cost", "11"}, exitUsage, "luarate: try: -cost must be from 0 to the capacity 10, got 11"},
		{[]string{"try", "extra"}, exitUsage, `luarate: try: unexpected argument "extra" (run 'luarate try -h')`},
		{[]string{"load"}, exitUsage, "luarate: load: needs a Redis: give -redis host:port or set REDIS_URL"},
		{[]string{"serve", "-addr", "nonsense"}, exitFail, "luarate: serve: listen tcp: address nonsense"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runLuarate(t, tc.args...)
			assert.Equal(t, tc.code, code)
			assert.True(t, strings.HasPrefix(errOut, tc.want), "stderr %q, want prefix %q", errOut, tc.want)
			assert.Equal(t, 1, strings.Count(errOut, "\n"), "one line: %q", errOut)
			if tc.args[0] != "serve" {
				assert.Empty(t, out)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"help"}, {"help", "help"}, {"try", "-h"}, {"serve", "-h"}, {"scripts", "-h"}, {"load", "-h"}, {"version", "-h"}} {
		code, out, errOut := runLuarate(t, args...)
		assert.Equal(t, 0, code, args)
		assert.Empty(t, errOut)
		assert.Contains(t, out, "Examples:", args)
	}
	for _, cmd := range []string{"try", "serve", "scripts", "load", "version"} {
		_, want, _ := runLuarate(t, cmd, "-h")
		_, out, _ := runLuarate(t, "help", cmd)
		assert.Equal(t, want, out, "help %s is %s -h", cmd, cmd)
	}
	_, out, _ := runLuarate(t, "serve", "-h")
	assert.Contains(t, out, `listen address (":8080" listens on every interface) (default "127.0.0.1:8080")`, "loopback unless asked")
	_, out, _ = runLuarate(t, "try", "-h")
	assert.Contains(t, out, "-algo", "flags are listed")
	for _, name := range algorithmNames() {
		assert.Contains(t, out, name)
	}
}

func TestTry(t *testing.T) {
	code, out, errOut := runLuarate(t, "try", "-algo", "fixed_window", "-rate", "5", "-period", "1h", "-n", "8")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "fixed_window, 5 per 1h0m0s, burst 5, cost 1")
	assert.Len(t, allowedRow.FindAllString(out, -1), 5, out)
	assert.Len(t, deniedRow.FindAllString(out, -1), 3, out)
	assert.Contains(t, out, "8 requests: 5 allowed, 3 denied")

	// long runs fold repeated rows (but count every request)
	code, out, errOut = runLuarate(t, "try", "-algo", "token_bucket", "-rate", "3", "-period", "1h", "-n", "100")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "(+2 alike)")
	assert.Contains(t, out, "(+95 alike)")
	assert.Contains(t, out, "100 requests: 3 allowed, 97 denied")
	assert.Len(t, append(allowedRow.FindAllString(out, -1), deniedRow.FindAllString(out, -1)...), 3, "rows 1, 4 and 100")
}

// TestTryQueue: for the leaky queue the table adds each request's delay_ms.
func TestTryQueue(t *testing.T) {
	code, out, errOut := runLuarate(t, "try", "-algo", "leaky_queue", "-rate", "3", "-period", "1h", "-n", "4")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "retry_ms  delay_ms")
	var delays []int64
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 7 && (f[2] == "yes" || f[2] == "no") {
			d, err := strconv.ParseInt(f[6], 10, 64)
			require.NoError(t, err, line)
			delays = append(delays, d)
		}
	}
	require.Len(t, delays, 4, out)
	// one every 20 minutes, less the few ms the run took; the 4th is denied
	assert.Equal(t, int64(0), delays[0])
	assert.InDelta(t, 1_200_000, delays[1], 1000)
	assert.InDelta(t, 2_400_000, delays[2], 1000)
	assert.Equal(t, int64(0), delays[3])
	assert.Contains(t, out, "4 requests: 3 allowed, 1 denied")
}

func TestTryRealRedisAndProgress(t *testing.T) {
	needReal(t)
	code, out, errOut := runLuarate(t, "try", "-redis", realAddr, "-rate", "7", "-period", "1h", "-n", "50", "-all")
	require.Equal(t, 0, code, errOut)
	assert.Len(t, allowedRow.FindAllString(out, -1), 7)
	assert.Len(t, deniedRow.FindAllString(out, -1), 43, "-all prints every row")

	p := newProgress(&bytes.Buffer{}, 10)
	p.last = time.Now().Add(-2 * time.Second)
	p.update(4, 3)
	assert.Equal(t, "  4/10 requests, 3 allowed, 1 denied\n", p.w.(*bytes.Buffer).String(), "not a terminal: whole lines")
}

func TestScripts(t *testing.T) {
	code, out, _ := runLuarate(t, "scripts")
	require.Equal(t, 0, code)
	for _, s := range luarate.Scripts() {
		assert.Regexp(t, fmt.Sprintf(`(?m)^%s\s+v%d\s+%s\s+%d$`, s.Name, s.Version, s.SHA1, len(s.Source)), out)
	}

	dir := filepath.Join(t.TempDir(), "lua")
	code, out, _ = runLuarate(t, "scripts", "-o", dir)
	require.Equal(t, 0, code)
	for _, s := range luarate.Scripts() {
		got, err := os.ReadFile(filepath.Join(dir, s.Name+".lua"))
		require.NoError(t, err)
		assert.Equal(t, s.Source, string(got), "byte for byte")
		assert.Contains(t, out, s.SHA1)
	}
}

func TestLoad(t *testing.T) {
	needReal(t)
	s, err := redistest.Start() // a server of our own, so SCRIPT FLUSH harms no one
	require.NoError(t, err)
	defer s.Stop()
	code, out, errOut := runLuarate(t, "load", "-redis", s.Addr)
	require.Equal(t, 0, code, errOut)
	c := redistest.Client(t, s.Addr)
	for _, sc := range luarate.Scripts() {
		assert.Regexp(t, fmt.Sprintf(`(?m)^%s\s+v%d\s+%s$`, sc.Name, sc.Version, sc.SHA1), out)
		exists, err := c.Do(context.Background(), c.B().ScriptExists().Sha1(sc.SHA1).Build()).AsIntSlice()
		require.NoError(t, err)
		assert.Equal(t, []int64{1}, exists, sc.Name)
	}
}

// syncBuffer is a bytes.Buffer safe to read while serve writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServe(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			args := []string{"serve", "-addr", "127.0.0.1:0"}
			if backend == "redis" {
				needReal(t)
				args = append(args, "-redis", realAddr)
			}
			t.Setenv("REDIS_URL", "")
			ctx, cancel := context.WithCancel(context.Background())
			var out, logs syncBuffer
			done := make(chan int, 1)
			go func() { done <- run(ctx, args, &out, &logs) }()
			base := ""
			require.Eventually(t, func() bool {
				line, _ := bufio.NewReader(strings.NewReader(out.String())).ReadString('\n')
				if m := regexp.MustCompile(`on (http://\S+) `).FindStringSubmatch(line); m != nil {
					base = m[1]
				}
				return base != ""
			}, 10*time.Second, 10*time.Millisecond)

			// the README's curl loop: 10 per minute, then 429
			var codes []int
			var last *http.Response
			for range 12 {
				resp, err := http.Get(base + "/api/data")
				require.NoError(t, err)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				codes = append(codes, resp.StatusCode)
				last = resp
			}
			assert.Equal(t, []int{200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 429, 429}, codes)
			assert.Equal(t, "10", last.Header.Get("X-RateLimit-Limit"))
			assert.NotEmpty(t, last.Header.Get("Retry-After"))
			assert.Equal(t, `"per-minute";q=10;w=60,"per-hour";q=100;w=3600`, last.Header.Get("RateLimit-Policy"), "two limits")
			assert.Equal(t, `"per-minute";r=0;t=6`, last.Header.Get("RateLimit"), "the tighter one")

			req, _ := http.NewRequest("GET", base+"/api/data", nil)
			req.Header.Set("X-API-Key", "premium-key")
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, 200, resp.StatusCode)
			assert.Equal(t, "100", resp.Header.Get("X-RateLimit-Limit"))

			for range 4 {
				resp, err = http.Get(base + "/api/search?q=x")
				require.NoError(t, err)
				resp.Body.Close()
			}
			assert.Equal(t, 429, resp.StatusCode, "the search route allows 3 per minute")
			resp, err = http.Get(base + "/healthz")
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, 200, resp.StatusCode)
			assert.Empty(t, resp.Header.Get("X-RateLimit-Limit"))

			cancel()
			select {
			case code := <-done:
				assert.Equal(t, 0, code, logs.String())
			case <-time.After(10 * time.Second):
				t.Fatal("serve did not stop on cancel")
			}
			assert.Contains(t, logs.String(), "outcome=denied")
		})
	}
}

// TestServeLogin is the README's login walk-through: failures count, a
// success gives its attempt back, the sixth failure locks the username for an
// hour (429 with Retry-After, even with the right password), and an address
// that tries too often is locked whatever the username.
func TestServeLogin(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			args := []string{"serve", "-addr", "127.0.0.1:0", "-algo", "sliding_window_log"}
			if backend == "redis" {
				needReal(t)
				args = append(args, "-redis", realAddr)
				// the address's counter outlives a test run: start from none
				_, err := redistest.Command(realAddr, "EVAL", "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 1", "0", "demo:{login-ip:*")
				require.NoError(t, err)
			}
			t.Setenv("REDIS_URL", "")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out, logs syncBuffer
			done := make(chan int, 1)
			go func() { done <- run(ctx, args, &out, &logs) }()
			base := ""
			require.Eventually(t, func() bool {
				line, _ := bufio.NewReader(strings.NewReader(out.String())).ReadString('\n')
				if m := regexp.MustCompile(`on (http://\S+) `).FindStringSubmatch(line); m != nil {
					base = m[1]
				}
				return base != ""
			}, 10*time.Second, 10*time.Millisecond)

			// each run of the test gets its own users (real Redis outlives it)
			suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
			login := func(user, password string, asJSON bool) *http.Response {
				t.Helper()
				var resp *http.Response
				var err error
				if asJSON {
					body, _ := json.Marshal(map[string]string{"username": user + suffix, "password": password})
					resp, err = http.Post(base+"/login", "application/json", bytes.NewReader(body))
				} else {
					resp, err = http.PostForm(base+"/login", url.Values{"username": {user + suffix}, "password": {password}})
				}
				require.NoError(t, err)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp
			}

			// bob: 4 failures among 12 attempts; successes give their
			// attempt back, so only the failures count and 1 is left
			for i := 0; i < 4; i++ {
				assert.Equal(t, 401, login("bob", "guess", i%2 == 0).StatusCode)
				assert.Equal(t, 200, login("bob", "correct horse", i%2 == 1).StatusCode)
				assert.Equal(t, 200, login("bob", "correct horse", i%2 == 0).StatusCode)
			}
			// alice: 5 failures, then locked for an hour
			for i := 0; i < 5; i++ {
				resp := login("alice", "guess", false)
				assert.Equal(t, 401, resp.StatusCode)
				assert.Equal(t, strconv.Itoa(4-i), resp.Header.Get("X-RateLimit-Remaining"), "failures left")
			}
			resp := login("alice", "guess", false)
			assert.Equal(t, 429, resp.StatusCode)
			assert.Equal(t, "3600", resp.Header.Get("Retry-After"))
			resp = login("alice", "correct horse", true)
			assert.Equal(t, 429, resp.StatusCode, "the right password does not open a locked account")
			assert.Equal(t, "3600", resp.Header.Get("Retry-After"))

			// the address has made 12 + 7 = 19 attempts: one more, then locked
			assert.Equal(t, 200, login("carol", "correct horse", false).StatusCode)
			resp = login("carol", "correct horse", false)
			assert.Equal(t, 429, resp.StatusCode, "20 attempts per 15 minutes per IP")
			assert.Equal(t, "900", resp.Header.Get("Retry-After"))

			for _, body := range []string{"", "username="} {
				resp, err := http.Post(base+"/login", "application/x-www-form-urlencoded", strings.NewReader(body))
				require.NoError(t, err)
				resp.Body.Close()
				assert.Equal(t, 400, resp.StatusCode)
			}

			cancel()
			select {
			case code := <-done:
				assert.Equal(t, 0, code, logs.String())
			case <-time.After(10 * time.Second):
				t.Fatal("serve did not stop on cancel")
			}
			assert.Contains(t, logs.String(), "login locked")
		})
	}
}

// A client that sends a fresh random X-API-Key on every request is limited
// as its IP address: an unverified key is no identity.
func TestServeRandomAPIKeysAreLimitedByIP(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := demoAPI(luarate.New(embeddedClient(t), luarate.WithPrefix("demo:")), serveConfig{algo: luarate.GCRA, logger: logger})
	var codes []int
	for i := range 12 {
		r := httptest.NewRequest("GET", "/api/data", nil)
		r.RemoteAddr = "192.0.2.1:1"
		r.Header.Set("X-API-Key", fmt.Sprintf("made-up-%d", i))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		codes = append(codes, w.Code)
	}
	assert.Equal(t, []int{200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 429, 429}, codes)
}

func embeddedClient(t *testing.T) rueidis.Client {
	b, err := startEmbedded()
	require.NoError(t, err)
	t.Cleanup(b.close)
	return b.client
}

// demoRequest sends one request through h and returns the recorder.
func demoRequest(h http.Handler, method, path, remote string, header ...string) *httptest.ResponseRecorder {
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader("username=alice&password=guess")
	}
	r := httptest.NewRequest(method, path, body)
	if method == "POST" {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	r.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// stoppedClient is a client whose Redis is gone.
func stoppedClient(t *testing.T) rueidis.Client {
	m, c := redistest.Mini(t)
	m.Close()
	return c
}

// Every endpoint that refuses because Redis is down says so the same way:
// 503, Retry-After: 1, a JSON body. /login always refuses; the API routes
// serve (the default), refuse with -fail-closed, or keep limiting on this
// process's share with -insurance.
func TestServeRedisTroubleAnsweredAlike(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	want := `{"error":"rate limiter unavailable, retry later","retry_after":1}`
	open := demoAPI(luarate.New(stoppedClient(t)), serveConfig{algo: luarate.GCRA, logger: logger})
	closed := demoAPI(luarate.New(stoppedClient(t)), serveConfig{algo: luarate.GCRA, logger: logger, failClosed: true})
	for name, w := range map[string]*httptest.ResponseRecorder{
		"login":               demoRequest(open, "POST", "/login", "192.0.2.1:1"),
		"login, fail closed":  demoRequest(closed, "POST", "/login", "192.0.2.1:1"),
		"data, fail closed":   demoRequest(closed, "GET", "/api/data", "192.0.2.1:1"),
		"search, fail closed": demoRequest(closed, "GET", "/api/search", "192.0.2.1:1"),
	} {
		assert.Equal(t, 503, w.Code, name)
		assert.Equal(t, "1", w.Header().Get("Retry-After"), name)
		assert.Equal(t, "application/json", w.Header().Get("Content-Type"), name)
		assert.JSONEq(t, want, w.Body.String(), name)
	}
	assert.Equal(t, 200, demoRequest(open, "GET", "/api/data", "192.0.2.1:1").Code, "the API fails open by default")

	ins := luarate.New(stoppedClient(t), insurance.With(insurance.Config{Instances: 2, Logger: logger}))
	defer ins.Close()
	insured := demoAPI(ins, serveConfig{algo: luarate.GCRA, logger: logger})
	w := demoRequest(insured, "GET", "/api/data", "192.0.2.1:1")
	assert.Equal(t, 200, w.Code)
	assert.Equal(t, "5", w.Header().Get("X-RateLimit-Limit"), "this process's share of 10/minute")
}

// With -trusted-proxies the client is the address the proxy forwarded;
// without, X-Forwarded-For is anyone's to forge and is ignored.
func TestServeTrustedProxies(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	trusting := demoAPI(luarate.New(embeddedClient(t), luarate.WithPrefix("t1:")), serveConfig{algo: luarate.GCRA, logger: logger,
		trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	plain := demoAPI(luarate.New(embeddedClient(t), luarate.WithPrefix("t2:")), serveConfig{algo: luarate.GCRA, logger: logger})
	remaining := func(h http.Handler, client string) string {
		return demoRequest(h, "GET", "/api/data", "10.0.0.1:1", "X-Forwarded-For", client).Header().Get("X-RateLimit-Remaining")
	}
	assert.Equal(t, "9", remaining(trusting, "192.0.2.1"))
	assert.Equal(t, "9", remaining(trusting, "192.0.2.2"), "another client behind the proxy")
	assert.Equal(t, "9", remaining(plain, "192.0.2.1"))
	assert.Equal(t, "8", remaining(plain, "192.0.2.2"), "the proxy's address, whatever the header says")

	code, _, errOut := runLuarate(t, "serve", "-trusted-proxies", "10.0.0.0/33")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "want CIDRs such as 10.0.0.0/8")
}

// A password in -redis or REDIS_URL is never printed: not in the banner, not
// in an error.
func TestRedisPasswordNeverPrinted(t *testing.T) {
	mr := miniredis.NewMiniRedis()
	mr.RequireAuth("secretpw")
	require.NoError(t, mr.Start())
	defer mr.Close()
	for _, args := range [][]string{
		{"try", "-n", "2", "-redis", "redis://:secretpw@" + mr.Addr()},
		{"try", "-n", "2", "-redis", "redis://default:secretpw@" + mr.Addr()},
		{"-redis", "redis://:secretpw@" + mr.Addr()},
		{"load", "-redis", "redis://:secretpw@" + mr.Addr()},
		{"try", "-redis", "redis://:secretpw@127.0.0.1:1"},
		{"try", "-redis", "redis://:wrongpw@" + mr.Addr()},
		{"try", "-redis", "redis://:secretpw@127.0.0.1:notaport"},
		{"try", "-redis", "redis://:secretpw@%zz"},
		{"try", "-redis", ":secretpw@127.0.0.1"},
	} {
		code, out, errOut := runLuarate(t, args...)
		t.Log(args[len(args)-1], code, strings.SplitN(out, "\n", 2)[0], errOut)
		assert.NotContains(t, out+errOut, "secretpw", args)
		assert.NotContains(t, out+errOut, "wrongpw", args)
	}
	_, out, _ := runLuarate(t, "try", "-n", "1", "-redis", "redis://:secretpw@"+mr.Addr())
	assert.Contains(t, out, "on Redis at redis://:xxxxx@"+mr.Addr())
}

// try -limits takes the notation of luarate.ParseLimits and applies every
// limit at once.
func TestTryLimits(t *testing.T) {
	code, out, errOut := runLuarate(t, "try", "-limits", "5/hour;3/day", "-algo", "fixed_window", "-n", "6")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, `fixed_window, 5/hour;3/day all at once, cost 1`)
	assert.Contains(t, out, "6 requests: 3 allowed, 3 denied", "the tighter day limit")

	for args, want := range map[string]string{
		"-limits 10/fortnight":        `luarate: try: -limits: invalid limit: "10/fortnight" in "10/fortnight": unknown unit "fortnight"`,
		"-limits 10/second -rate 5":   "luarate: try: -limits replaces -rate, -period and -burst",
		"-limits 10/second;10/second": `another limit has the same period 1s`,
		"-limits 2/second -cost 3":    "luarate: try: -cost must be from 0 to the capacity 2, got 3",
	} {
		code, _, errOut := runLuarate(t, append([]string{"try"}, strings.Fields(args)...)...)
		assert.Equal(t, exitUsage, code, args)
		assert.Contains(t, errOut, want, args)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"-version"}} {
		code, out, errOut := runLuarate(t, args...)
		require.Equal(t, 0, code, errOut)
		assert.Regexp(t, `^luarate \S+`, out, "the module version first")
		for _, s := range luarate.Scripts() {
			assert.Regexp(t, fmt.Sprintf(`(?m)^%s\s+v%d\s+%s$`, s.Name, s.Version, s.SHA1), out)
		}
	}
	assert.NotEqual(t, "(unknown)", moduleVersion(), "a test binary has build info")
	code, _, errOut := runLuarate(t, "version", "extra")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `version: unexpected argument "extra"`)
}
