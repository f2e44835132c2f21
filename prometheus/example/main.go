// Command example serves one rate-limited route and its Prometheus metrics:
//
//	go run ./example                          # an embedded Redis (miniredis)
//	go run ./example -redis 127.0.0.1:6379
//	for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' localhost:8080/api/hello; done; echo
//	curl -s localhost:8080/metrics | grep luarate_
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	luarateprom "github.com/luarate/luarate/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	redisAddr := flag.String("redis", "", "Redis host:port (default: an embedded miniredis)")
	flag.Parse()

	opt := rueidis.ClientOption{InitAddress: []string{*redisAddr}, DisableCache: true}
	if *redisAddr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			log.Fatal(err)
		}
		defer mr.Close()
		opt = rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true}
	}
	client, err := rueidis.NewClient(opt)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	h, err := newServer(luarate.New(client), reg)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: *addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.Background())
	}()
	fmt.Printf("GET http://%s/api/hello (5/minute;100/hour per IP), metrics on http://%s/metrics\n", *addr, *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// newServer is the example's API: a limited route and /metrics, which reads
// reg. opts are added to the middleware's.
func newServer(l *luarate.Limiter, reg *prometheus.Registry, opts ...httplimit.Option) (http.Handler, error) {
	metrics, err := luarateprom.New(reg)
	if err != nil {
		return nil, err
	}
	limit := httplimit.Middleware(l, luarate.MustParseLimits("5/minute;100/hour", luarate.GCRA),
		append([]httplimit.Option{httplimit.WithObserver(metrics.Observe)}, opts...)...)
	mux := http.NewServeMux()
	mux.Handle("GET /api/hello", limit(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"hello":"world"}`)
	})))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux, nil
}
