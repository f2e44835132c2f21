package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// redisFlag adds -redis to fs. Its value is host:port or a redis:// URL;
// fallback says what an empty value means.
func redisFlag(fs *flag.FlagSet, fallback string) *string {
	return fs.String("redis", "", "Redis `address` (host:port or redis://...); default "+fallback)
}

// embeddedFallback is the -redis default of the commands that can run on an
// embedded Redis.
const embeddedFallback = "$REDIS_URL, else an embedded Redis"

// backend is the Redis a command talks to.
type backend struct {
	client rueidis.Client
	where  string // for humans: "127.0.0.1:6379" or "an embedded Redis (miniredis)"
	close  func()
}

// connect reaches the Redis that addr (or REDIS_URL) names, or starts an
// embedded miniredis when both are empty and embedded is allowed. An
// unreachable Redis is an error naming the address, found before returning.
func connect(ctx context.Context, addr string, embedded bool) (*backend, error) {
	if addr == "" {
		addr = os.Getenv("REDIS_URL")
	}
	if addr == "" {
		if !embedded {
			return nil, usageError{fmt.Errorf("needs a Redis: give -redis host:port or set REDIS_URL")}
		}
		return startEmbedded()
	}
	opt, err := clientOption(addr)
	if err != nil {
		return nil, usageError{err}
	}
	addr = redact(addr) // from here on addr is only printed
	opt.Dialer = net.Dialer{Timeout: 3 * time.Second}
	opt.DisableCache = true // the limiter never reads through the client-side cache
	client, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("cannot reach Redis at %s: %v", addr, err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := client.Do(pingCtx, client.B().Ping().Build()).Error(); err != nil {
		client.Close()
		return nil, fmt.Errorf("cannot reach Redis at %s: %v", addr, err)
	}
	return &backend{client: client, where: "Redis at " + addr, close: client.Close}, nil
}

// clientOption reads host:port or a redis:// (rediss://, unix://) URL.
func clientOption(addr string) (rueidis.ClientOption, error) {
	if strings.Contains(addr, "://") {
		opt, err := rueidis.ParseURL(addr)
		if err != nil {
			msg := err.Error()
			if secret := userinfo(addr); secret != "" {
				msg = strings.ReplaceAll(msg, secret, "xxxxx")
			}
			return opt, fmt.Errorf("bad Redis URL %q: %s", redact(addr), msg)
		}
		return opt, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil || strings.Contains(addr, "@") {
		return rueidis.ClientOption{}, fmt.Errorf("bad Redis address %q: want host:port or redis://[user:password@]host:port", redact(addr))
	}
	return rueidis.ClientOption{InitAddress: []string{addr}}, nil
}

// startEmbedded runs a miniredis in this process. miniredis never expires
// keys on its own, so a ticker moves its expiry clock along with the wall
// clock: an idle key disappears on time, as in Redis. (TIME already follows
// the wall clock.)
func startEmbedded() (*backend, error) {
	mr, err := miniredis.Run()
	if err != nil {
		return nil, fmt.Errorf("start the embedded Redis: %v", err)
	}
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{mr.Addr()},
		DisableCache:      true, // miniredis has no CLIENT TRACKING
		ForceSingleClient: true, // miniredis answers CLUSTER SLOTS but is one node
	})
	if err != nil {
		mr.Close()
		return nil, fmt.Errorf("connect to the embedded Redis: %v", err)
	}
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				mr.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	return &backend{client: client, where: "an embedded Redis (miniredis)", close: func() {
		close(done)
		client.Close()
		mr.Close()
	}}, nil
}

// redact hides the password of a Redis URL, for printing: what
// url.URL.Redacted shows, or, for a URL that does not parse, everything
// before the "@".
func redact(addr string) string {
	if u, err := url.Parse(addr); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	if secret := userinfo(addr); secret != "" {
		return strings.Replace(addr, secret+"@", "xxxxx@", 1)
	}
	return addr
}

// userinfo is the "user:password" part of scheme://user:password@host (or
// of user:password@host), or "".
func userinfo(addr string) string {
	rest := addr
	if _, after, ok := strings.Cut(addr, "://"); ok {
		rest = after
	}
	if at := strings.LastIndex(rest, "@"); at > 0 {
		return rest[:at]
	}
	return ""
}
