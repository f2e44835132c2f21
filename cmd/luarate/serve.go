package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
)

const serveHelp = `Usage: luarate serve [flags]

A small JSON API, rate limited in Redis by the httplimit middleware:

  GET /api/data     10 per minute per client; 100 with the header X-API-Key: premium-key
  GET /api/search   3 per minute per client: a stricter route with its own counter
  POST /login       username and password (form or JSON; every password is
                    "` + demoPassword + `"): 5 failed logins per 15 minutes per
                    username, then that username is locked for an hour; 20
                    attempts per 15 minutes per IP, then the IP is locked for 15
                    minutes. A success gives the username's attempt back, so
                    only failures count. Locked: 429 with Retry-After.
  GET /healthz      never limited

Clients are told apart by X-API-Key (any value; hashed before it reaches
Redis), else by IP address. Every limited response carries X-RateLimit-* (and
the IETF RateLimit fields); over the limit the answer is 429 with Retry-After
and a JSON body. Each decision is logged on stderr.

Examples:
  luarate serve
  for i in $(seq 15); do curl -s -o /dev/null -w '%{http_code} ' localhost:8080/api/data; done; echo
  curl -i -H 'X-API-Key: premium-key' localhost:8080/api/data
  for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' -d username=alice -d password=guess localhost:8080/login; done; echo
  luarate serve -addr 127.0.0.1:9000 -redis 127.0.0.1:6379 -algo token_bucket
`

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve")
	addr := fs.String("addr", ":8080", "listen `address`")
	redis := redisFlag(fs, embeddedFallback)
	algo := luarate.GCRA
	fs.Func("algo", "algorithm `name` of every limit (default gcra)", func(s string) (err error) {
		algo, err = parseAlgorithm(s)
		return err
	})
	ietf := fs.Bool("ietf", true, "also send the IETF RateLimit-Policy and RateLimit fields")
	if err := parseFlags(fs, args, serveHelp, stdout); err != nil {
		return err
	}
	b, err := connect(ctx, *redis, true)
	if err != nil {
		return err
	}
	defer b.close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("serve: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	srv := &http.Server{
		Handler:           demoAPI(luarate.New(b.client, luarate.WithPrefix("demo:")), algo, *ietf, logger),
		ReadHeaderTimeout: 5 * time.Second,
	}
	fmt.Fprintf(stdout, "luarate demo API on http://%s (%s, limits in %s); Ctrl-C stops it\n", ln.Addr(), algo, b.where)
	fmt.Fprintf(stdout, "try: for i in $(seq 15); do curl -s -o /dev/null -w '%%{http_code} ' http://%s/api/data; done; echo\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve: %v", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("serve: shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %v", err)
	}
	return nil
}

// demoAPI is the served API: per-client limits, a premium tier, a stricter
// route and an unlimited health check.
func demoAPI(l *luarate.Limiter, algo luarate.Algorithm, ietf bool, logger *slog.Logger) http.Handler {
	free, premium := luarate.PerMinute(algo, 10), luarate.PerMinute(algo, 100)
	common := []httplimit.Option{
		httplimit.WithKey(httplimit.First(httplimit.Header("X-API-Key"), httplimit.IP())),
		httplimit.WithLogger(logger),
		httplimit.WithObserver(func(d httplimit.Decision) {
			if d.Err == nil {
				logger.Info("decision", "path", d.Request.URL.Path, "key", d.Key, "outcome", d.Outcome,
					"remaining", d.Result.Remaining, "latency", d.Latency.Round(time.Microsecond))
			}
		}),
	}
	if ietf {
		common = append(common, httplimit.WithIETFHeaders("per-client"))
	}
	data := httplimit.Middleware(l, free, append(common, httplimit.WithScope("data"),
		httplimit.WithLimitFunc(func(r *http.Request) (luarate.Limit, error) {
			if r.Header.Get("X-API-Key") == "premium-key" {
				return premium, nil
			}
			return free, nil
		}))...)
	search := httplimit.Middleware(l, luarate.PerMinute(algo, 3), append(common, httplimit.WithScope("search"))...)

	mux := http.NewServeMux()
	mux.Handle("GET /api/data", data(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tier := "free"
		if r.Header.Get("X-API-Key") == "premium-key" {
			tier = "premium"
		}
		writeJSON(w, map[string]any{"data": []string{"alpha", "beta", "gamma"}, "tier": tier, "time": time.Now().UTC().Format(time.RFC3339)})
	})))
	mux.Handle("GET /api/search", search(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"query": r.URL.Query().Get("q"), "results": []string{}})
	})))
	mux.Handle("POST /login", loginHandler(l, algo, logger))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"ok": true})
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"routes": map[string]string{
			"GET /api/data":   "10 per minute per client (100 with X-API-Key: premium-key)",
			"GET /api/search": "3 per minute per client",
			"POST /login":     "5 failures per 15 minutes per username (then locked 1 hour), 20 attempts per 15 minutes per IP",
			"GET /healthz":    "not limited",
		}})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// demoPassword is every user's password in the demo.
const demoPassword = "correct horse"

// loginHandler is brute-force protection for a login form, with two limits:
//
//   - per username, 5 failures per 15 minutes, then locked for an hour: an
//     attempt takes one unit and a success gives it back (Refund), so only
//     failures count; after five failures in 15 minutes the next attempt is
//     refused and starts the lock;
//   - per IP, 20 attempts per 15 minutes, then locked for 15 minutes, against
//     one address trying many usernames (credential stuffing). It counts every
//     attempt: if a success gave the IP's unit back, an attacker with one valid
//     account could log into it between guesses and never be stopped.
//
// The two are separate calls: each identity is its own {hash tag}, so in
// Redis Cluster they live in different slots and one atomic script cannot
// touch both. Nothing is lost by that: the IP is checked first, and a denied
// IP never reaches the username's counter.
func loginHandler(l *luarate.Limiter, algo luarate.Algorithm, logger *slog.Logger) http.Handler {
	perUser := luarate.Limit{Algorithm: algo, Rate: 5, Period: 15 * time.Minute, Lockout: time.Hour}
	perIP := luarate.Limit{Algorithm: algo, Rate: 20, Period: 15 * time.Minute, Lockout: 15 * time.Minute}
	ipKey := httplimit.IP()
	tooMany := func(w http.ResponseWriter, res luarate.Result, why string) {
		res.SetHeaders(w.Header())
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": why, "retry_after": int64((res.RetryAfter + time.Second - 1) / time.Second)})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, password, err := loginForm(w, r)
		if err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		ip, err := ipKey(r)
		if err != nil {
			http.Error(w, "no client address", http.StatusInternalServerError)
			return
		}
		res, err := l.Allow(ctx, "login-ip:"+ip, perIP)
		if err != nil {
			logger.Error("login limit", "err", err)
			http.Error(w, "try again later", http.StatusServiceUnavailable) // fail closed: this guards passwords
			return
		}
		if !res.Allowed {
			tooMany(w, res, "too many login attempts from this address")
			return
		}
		res, err = l.Allow(ctx, "login-user:"+user, perUser)
		if err != nil {
			logger.Error("login limit", "err", err)
			http.Error(w, "try again later", http.StatusServiceUnavailable)
			return
		}
		if !res.Allowed {
			logger.Info("login locked", "user", user, "retry_after", res.RetryAfter)
			tooMany(w, res, "too many failed logins for this user")
			return
		}
		if password != demoPassword {
			res.SetHeaders(w.Header()) // X-RateLimit-Remaining: failures left before the lock
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": "wrong username or password"})
			return
		}
		// success: the attempt was not a failure, give it back
		if _, err := l.Refund(ctx, "login-user:"+user, perUser, 1); err != nil {
			logger.Error("login refund", "err", err)
		}
		writeJSON(w, map[string]any{"ok": true, "user": user})
	})
}

// loginForm reads username and password from a form or a JSON body.
func loginForm(w http.ResponseWriter, r *http.Request) (user, password string, err error) {
	r.Body = http.MaxBytesReader(w, r.Body, 1<<16)
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		var body struct{ Username, Password string }
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			return "", "", errors.New("body must be JSON {\"username\": ..., \"password\": ...}")
		}
		user, password = body.Username, body.Password
	} else {
		if err := r.ParseForm(); err != nil {
			return "", "", errors.New("body must be a form: username=...&password=...")
		}
		user, password = r.PostForm.Get("username"), r.PostForm.Get("password")
	}
	if user == "" {
		return "", "", errors.New("username is missing")
	}
	return user, password, nil
}
