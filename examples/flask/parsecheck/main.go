// Command parsecheck reads limits with luarate.ParseLimits, so the Flask
// example's test can require that Python's parse_limits reads every string
// the same way. Each line of stdin is one JSON string; each line of stdout is
// its limits, "rate/period_ms" joined by spaces, or "error".
//
//	echo '"10/second;5/15m"' | go run ./examples/flask/parsecheck    # 10/1000 5/900000
//
// It parses for FixedWindow, whose Validate adds nothing to the notation's
// own bounds (other algorithms refuse some extreme rates and periods).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/luarate/luarate"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		var s string
		if err := json.Unmarshal(in.Bytes(), &s); err != nil {
			log.Fatalf("parsecheck: want one JSON string per line: %v", err)
		}
		limits, err := luarate.ParseLimits(s, luarate.FixedWindow)
		if err != nil {
			fmt.Fprintln(out, "error")
			continue
		}
		parts := make([]string, len(limits))
		for i, lim := range limits {
			parts[i] = fmt.Sprintf("%d/%d", lim.Rate, lim.Period.Milliseconds())
		}
		fmt.Fprintln(out, strings.Join(parts, " "))
	}
	if err := in.Err(); err != nil {
		log.Fatal(err)
	}
}
