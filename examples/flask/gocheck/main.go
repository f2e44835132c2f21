// Command gocheck spends, from Go, a limit the Flask example spends from
// Python: it builds the client's key as httplimit does (scope, then the
// hashed X-API-Key), or takes -key as it is, peeks at the limit, then takes
// -allow requests.
//
//	go run ./examples/flask/gocheck -redis 127.0.0.1:6379 -scope dynamic -api-key demo-key -rate 10 -period 1h -allow 2
//
// It prints one line per call: "peek allowed=true remaining=7 limit=10".
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/luarate/luarate"
	"github.com/luarate/luarate/httplimit"
	"github.com/redis/rueidis"
)

func main() {
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	scope := flag.String("scope", "", "the Flask view's name: the decorator scopes each route's counter by it")
	apiKey := flag.String("api-key", "", "the client's verified X-API-Key")
	rawKey := flag.String("key", "", "the key itself, instead of -scope and -api-key")
	rate := flag.Int("rate", 10, "requests per period")
	period := flag.Duration("period", time.Hour, "period")
	allow := flag.Int("allow", 0, "requests to take after the peek")
	flag.Parse()

	key := *rawKey
	if key == "" {
		r, _ := http.NewRequest("GET", "/", nil)
		r.Header.Set("X-API-Key", *apiKey)
		var err error
		if key, err = httplimit.Header("X-API-Key")(r); err != nil || key == "" {
			log.Fatalf("gocheck: give -key, or -api-key (%v)", err)
		}
		if *scope != "" {
			key = *scope + ":" + key
		}
	}
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{*addr}, DisableCache: true})
	if err != nil {
		log.Fatalf("gocheck: %v", err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	limiter := luarate.New(client)
	limit := luarate.Limit{Algorithm: luarate.GCRA, Rate: *rate, Period: *period}
	res, err := limiter.Peek(ctx, key, limit)
	if err != nil {
		log.Fatalf("gocheck: peek: %v", err)
	}
	fmt.Printf("peek allowed=%t remaining=%d limit=%d\n", res.Allowed, res.Remaining, res.Limit)
	for i := 0; i < *allow; i++ {
		if res, err = limiter.Allow(ctx, key, limit); err != nil {
			log.Fatalf("gocheck: allow: %v", err)
		}
		fmt.Printf("allow allowed=%t remaining=%d limit=%d\n", res.Allowed, res.Remaining, res.Limit)
	}
}
