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
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
)

const serveHelp = `Usage: luarate serve [flags]

A small JSON API, rate limited in Redis by the httplimit middleware:

  GET /api/data     10 per minute per client; 100 with the header X-API-Key: premium-key
  GET /api/search   3 per minute per client: a stricter route with its own counter
  GET /healthz      never limited

Clients are told apart by X-API-Key (any value; hashed before it reaches
Redis), else by IP address. Every limited response carries X-RateLimit-* (and
the IETF RateLimit fields); over the limit the answer is 429 with Retry-After
and a JSON body. Each decision is logged on stderr.

Examples:
  luarate serve
  for i in $(seq 15); do curl -s -o /dev/null -w '%{http_code} ' localhost:8080/api/data; done; echo
  curl -i -H 'X-API-Key: premium-key' localhost:8080/api/data
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
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"ok": true})
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"routes": map[string]string{
			"GET /api/data":   "10 per minute per client (100 with X-API-Key: premium-key)",
			"GET /api/search": "3 per minute per client",
			"GET /healthz":    "not limited",
		}})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
