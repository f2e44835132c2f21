// Package redistest runs the Redis servers luarate's tests talk to: a real
// redis-server started on an ephemeral loopback port (or the one REDIS_ADDR
// names), and an embedded miniredis.
//
// A test never flushes or reconfigures a server it did not start; it keeps to
// keys under its own prefix instead.
package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// ErrNoRedis means neither REDIS_ADDR nor a redis-server binary is available.
var ErrNoRedis = errors.New("no real Redis: set REDIS_ADDR or put redis-server on PATH")

// Server is a redis-server process this package started.
type Server struct {
	Addr string
	cmd  *exec.Cmd
	dir  string
}

// Start runs redis-server on a free loopback port with persistence off and
// waits until it answers. extra is appended to its command line.
func Start(extra ...string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNoRedis
	}
	dir, err := os.MkdirTemp("", "luarate-redis-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir}, extra...)
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), cmd: cmd, dir: dir}
		if lastErr = waitReady(s.Addr, 5*time.Second); lastErr == nil {
			return s, nil
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	os.RemoveAll(dir)
	return nil, fmt.Errorf("redis-server did not start: %w", lastErr)
}

// Stop kills the server and removes its directory.
func (s *Server) Stop() {
	s.kill()
	os.RemoveAll(s.dir)
}

// Real returns the address of a real Redis: REDIS_ADDR if set, else a server
// it starts (stop it with the returned func). Under CI=true a missing Redis is
// an error to fail on, never a reason to skip.
func Real() (addr string, stop func(), err error) {
	if addr := os.Getenv("REDIS_ADDR"); addr != "" {
		return addr, func() {}, nil
	}
	s, err := Start()
	if err != nil {
		return "", nil, err
	}
	return s.Addr, s.Stop, nil
}

// Client connects rueidis to addr with the options tests use for both
// servers. It fails the test if it cannot.
func Client(tb testing.TB, addr string) rueidis.Client {
	tb.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{addr},
		DisableCache:      true,
		ForceSingleClient: true,
	})
	if err != nil {
		tb.Fatalf("connect to %s: %v", addr, err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Mini starts a miniredis for the test and a client for it. rueidis needs
// DisableCache (miniredis has no CLIENT TRACKING) and ForceSingleClient
// (miniredis answers CLUSTER SLOTS).
func Mini(tb testing.TB) (*miniredis.Miniredis, rueidis.Client) {
	tb.Helper()
	m := miniredis.RunT(tb)
	return m, Client(tb, m.Addr())
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitReady(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(time.Second))
			_, err = conn.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			if err == nil {
				_, err = conn.Read(buf)
			}
			conn.Close()
			if err == nil && string(buf) == "+PONG\r\n" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %v", addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
