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
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/luarate/luarate/insurance"
)

const serveHelp = `Usage: luarate serve [flags]

A small JSON API on 127.0.0.1:8080, rate limited in Redis by the httplimit
middleware:

  GET /api/data     ` + freeLimits + ` per client, both at once;
                    ` + premiumLimits + ` with the header X-API-Key: premium-key
  GET /api/search   ` + searchLimits + ` per client: a stricter route with its own counter
  POST /login       username and password (form or JSON; every password is
                    "` + demoPassword + `"): 5 failed logins per 15 minutes per
                    username, then that username is locked for an hour; 20
                    attempts per 15 minutes per IP, then the IP is locked for 15
                    minutes. A success gives the username's attempt back, so
                    only failures count. Locked: 429 with Retry-After.
  GET /healthz      never limited

Clients are told apart by a verified API key (premium-key and demo-key are
the valid ones; hashed before they reach Redis), else by IP address: an
invented X-API-Key is limited as its sender's IP. Every limited response
carries X-RateLimit-* (Reset is a Unix time) and the IETF RateLimit fields;
over the limit the answer is 429 with Retry-After and a JSON body. When Redis
fails, /login refuses (503, Retry-After: 1, a JSON body: it guards passwords)
and the API routes serve anyway, or refuse the same way with -fail-closed;
with -insurance every route, /login too, keeps limiting on this process's
share instead. Each decision is logged on stderr.

Examples:
  luarate serve
  for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' localhost:8080/api/data; done; echo
  curl -i -H 'X-API-Key: premium-key' localhost:8080/api/data
  for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' -d username=alice -d password=guess localhost:8080/login; done; echo
  luarate serve -addr 127.0.0.1:9000 -redis 127.0.0.1:6379 -algo token_bucket -fail-closed
  luarate serve -addr :8080 -trusted-proxies 10.0.0.0/8   # behind a load balancer in 10/8
`

// The demo's limits, in luarate.ParseLimits notation.
const (
	freeLimits    = "10/minute;100/hour"
	premiumLimits = "100/minute;3000/hour" // within every algorithm's bounds (the log: rate <= 4000)
	searchLimits  = "3/minute"
)

// demoKeys are the API keys the demo accepts, and their tiers.
var demoKeys = map[string]string{"premium-key": "premium", "demo-key": "free"}

// serveConfig is what the flags of serve choose.
type serveConfig struct {
	algo       luarate.Algorithm
	ietf       bool
	trusted    []netip.Prefix
	failClosed bool
	logger     *slog.Logger
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve")
	addr := fs.String("addr", "127.0.0.1:8080", "listen `address` (\":8080\" listens on every interface)")
	redis := redisFlag(fs, embeddedFallback)
	cfg := serveConfig{algo: luarate.GCRA, logger: slog.New(slog.NewTextHandler(stderr, nil))}
	fs.Func("algo", "algorithm `name` of every limit (default gcra)", func(s string) (err error) {
		cfg.algo, err = parseAlgorithm(s)
		return err
	})
	fs.BoolVar(&cfg.ietf, "ietf", true, "also send the IETF RateLimit-Policy and RateLimit fields")
	fs.Func("trusted-proxies", "comma-separated `CIDRs` of proxies whose X-Forwarded-For is believed (default none: the connection's address is the client)", func(s string) error {
		for _, p := range strings.Split(s, ",") {
			prefix, err := netip.ParsePrefix(strings.TrimSpace(p))
			if err != nil {
				return fmt.Errorf("want CIDRs such as 10.0.0.0/8,192.168.0.0/16: %v", err)
			}
			cfg.trusted = append(cfg.trusted, prefix)
		}
		return nil
	})
	fs.BoolVar(&cfg.failClosed, "fail-closed", false, "answer 503 on the API routes when Redis fails (default: serve them; /login refuses either way, unless -insurance decides)")
	insured := fs.Int("insurance", 0, "keep limiting when Redis fails, on this process's share: limits divided by `N` replicas (0 = off)")
	if err := parseFlags(fs, args, serveHelp, stdout); err != nil {
		return err
	}
	if *insured < 0 {
		return usageError{fmt.Errorf("serve: -insurance must be 0 (off) or the number of replicas, got %d", *insured)}
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
	opts := []luarate.Option{luarate.WithPrefix("demo:")}
	if *insured > 0 {
		opts = append(opts, insurance.With(insurance.Config{Instances: *insured, Logger: cfg.logger}))
	}
	limiter := luarate.New(b.client, opts...)
	defer limiter.Close()
	srv := &http.Server{Handler: demoAPI(limiter, cfg), ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintf(stdout, "luarate demo API on http://%s (%s, limits in %s); Ctrl-C stops it\n", ln.Addr(), cfg.algo, b.where)
	fmt.Fprintf(stdout, "try: for i in $(seq 12); do curl -s -o /dev/null -w '%%{http_code} ' http://%s/api/data; done; echo\n", ln.Addr())
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

// demoAPI is the served API: two limits per client keyed by a verified API
// key or the IP, a premium tier, a stricter route, a login form and an
// unlimited health check.
func demoAPI(l *luarate.Limiter, cfg serveConfig) http.Handler {
	free := luarate.MustParseLimits(freeLimits, cfg.algo)
	premium := luarate.MustParseLimits(premiumLimits, cfg.algo)
	valid := func(_ *http.Request, key string) bool { return demoKeys[key] != "" }
	common := []httplimit.Option{
		httplimit.WithKey(httplimit.First(httplimit.APIKey("X-API-Key", valid), httplimit.IP(cfg.trusted...))),
		httplimit.WithLogger(cfg.logger),
		httplimit.WithObserver(logDecision(cfg.logger)),
	}
	if cfg.failClosed {
		common = append(common, httplimit.WithFailClosed())
	}
	if cfg.ietf {
		common = append(common, httplimit.WithIETFHeaders("per-minute", "per-hour"))
	}
	data := httplimit.Middleware(l, free, append(common, httplimit.WithScope("data"),
		httplimit.WithLimitFunc(func(r *http.Request) ([]luarate.Limit, error) {
			if tier(r) == "premium" {
				return premium, nil
			}
			return free, nil
		}))...)
	search := httplimit.Middleware(l, luarate.MustParseLimits(searchLimits, cfg.algo), append(common, httplimit.WithScope("search"))...)

	mux := http.NewServeMux()
	mux.Handle("GET /api/data", data(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"data": []string{"alpha", "beta", "gamma"}, "tier": tier(r), "time": time.Now().UTC().Format(time.RFC3339)})
	})))
	mux.Handle("GET /api/search", search(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"query": r.URL.Query().Get("q"), "results": []string{}})
	})))
	mux.Handle("POST /login", loginHandler(l, cfg))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"ok": true})
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"routes": map[string]string{
			"GET /api/data":   freeLimits + " per client (" + premiumLimits + " with X-API-Key: premium-key)",
			"GET /api/search": searchLimits + " per client",
			"POST /login":     "5 failures per 15 minutes per username (then locked 1 hour), 20 attempts per 15 minutes per IP",
			"GET /healthz":    "not limited",
		}})
	})
	return mux
}

// tier is the request's tier: its verified API key's, else "free".
func tier(r *http.Request) string {
	if t := demoKeys[r.Header.Get("X-API-Key")]; t != "" {
		return t
	}
	return "free"
}

func logDecision(logger *slog.Logger) func(httplimit.Decision) {
	return func(d httplimit.Decision) {
		if d.Err == nil {
			logger.Info("decision", "path", d.Request.URL.Path, "key", d.Key, "outcome", d.Outcome,
				"remaining", d.Result.Remaining, "insured", d.Result.Insured, "latency", d.Latency.Round(time.Microsecond))
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// demoPassword is every user's password in the demo.
const demoPassword = "correct horse"

// attemptKey is the context key of a login attempt.
type attemptKey struct{}

// attempt is a login attempt; as a fmt.Stringer it is its username, which is
// what httplimit.ContextValue keys the per-user limit by.
type attempt struct{ user, password string }

func (a attempt) String() string { return a.user }

// loginHandler is brute-force protection for a login form, with two
// middlewares, both failing closed (a limiter outage must not open the door
// to password guessing), in this order:
//
//   - per IP, 20 attempts per 15 minutes, then locked for 15 minutes, against
//     one address trying many usernames (credential stuffing). It counts every
//     attempt: if a success gave the IP's unit back, an attacker with one valid
//     account could log into it between guesses and never be stopped;
//   - per username, 5 failures per 15 minutes, then locked for an hour: an
//     attempt takes one unit and a success gives it back (WithRefundWhen on
//     status 200), so only failures count; after five failures in 15 minutes
//     the next attempt is refused and starts the lock.
//
// The two are separate decisions: each identity is its own {hash tag}, so in
// Redis Cluster they live in different slots and one atomic script cannot
// touch both. Nothing is lost by that: a denied IP never reaches the
// username's counter. A malformed body is answered 400 before either counts.
func loginHandler(l *luarate.Limiter, cfg serveConfig) http.Handler {
	perIP := luarate.Limit{Algorithm: cfg.algo, Rate: 20, Period: 15 * time.Minute, Lockout: 15 * time.Minute}
	perUser := luarate.Limit{Algorithm: cfg.algo, Rate: 5, Period: 15 * time.Minute, Lockout: time.Hour}
	deny := func(why string) httplimit.Option {
		return httplimit.WithDenyHandler(func(w http.ResponseWriter, r *http.Request, res luarate.Result) {
			if why == "user" {
				cfg.logger.Info("login locked", "user", r.Context().Value(attemptKey{}), "retry_after", res.RetryAfter)
			}
			retry, _ := strconv.Atoi(w.Header().Get("Retry-After"))
			writeJSON(w, http.StatusTooManyRequests, map[string]any{"error": "too many login attempts for this " + why, "retry_after": retry})
		})
	}
	common := []httplimit.Option{httplimit.WithFailClosed(), httplimit.WithLogger(cfg.logger), httplimit.WithObserver(logDecision(cfg.logger))}
	ipLimit := httplimit.Middleware(l, []luarate.Limit{perIP}, append(common, httplimit.WithScope("login-ip"),
		httplimit.WithKey(httplimit.IP(cfg.trusted...)), deny("address"))...)
	userLimit := httplimit.Middleware(l, []luarate.Limit{perUser}, append(common, httplimit.WithScope("login-user"),
		httplimit.WithKey(httplimit.ContextValue(attemptKey{})), deny("user"),
		httplimit.WithRefundWhen(func(_ *http.Request, status int) bool { return status == http.StatusOK }))...)

	check := userLimit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := r.Context().Value(attemptKey{}).(attempt)
		if a.password != demoPassword {
			writeJSON(w, http.StatusUnauthorized, map[string]any{"error": "wrong username or password"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ok": true, "user": a.user})
	}))
	limited := ipLimit(check)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, password, err := loginForm(w, r)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
			return
		}
		limited.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), attemptKey{}, attempt{user, password})))
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
