package luarate

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// sharedRegion returns the lines of src from the line starting with
// "-- luarate shared: <name>" (after its indentation) to the next
// "-- luarate shared: end" line, both included, or "" when src has no such
// region.
func sharedRegion(t *testing.T, script, src, name string) string {
	t.Helper()
	lines := strings.Split(src, "\n")
	start, count := -1, 0
	for i, line := range lines {
		if strings.HasPrefix(strings.TrimSpace(line), "-- luarate shared: "+name+" ") {
			count++
			if start < 0 {
				start = i
			}
		}
	}
	if start < 0 {
		return ""
	}
	require.Equal(t, 1, count, "%s: one shared %s region", script, name)
	for i := start + 1; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) == "-- luarate shared: end" {
			return strings.Join(lines[start:i+1], "\n")
		}
	}
	require.Fail(t, "no end", "%s: shared %s region has no end", script, name)
	return ""
}

// TestSharedRegionsIdentical: the pending, plain, prelude and entry regions
// are byte for byte the same in every limiter script (and in concurrency.lua,
// if it marks copies of them), and the fast read and fast write regions in
// every fast that keeps its state in a string (all but sliding_window_log's),
// so a fix made in one is made in all.
func TestSharedRegionsIdentical(t *testing.T) {
	for _, name := range []string{"pending", "plain", "prelude", "entry", "fast read", "fast write"} {
		want := sharedRegion(t, "gcra", scripts["gcra"].Source, name)
		require.NotEmpty(t, want, "gcra.lua has no shared %s region", name)
		for _, s := range Scripts() {
			got := sharedRegion(t, s.Name, s.Source, name)
			switch {
			case s.Name == "concurrency" && got == "":
				continue // it marks only what it shares
			case strings.HasPrefix(name, "fast ") && !strings.Contains(s.Source, "\nlocal string_state = true\n"):
				require.Empty(t, got, "%s.lua keeps no string state, yet marks a %s region", s.Name, name)
				continue
			}
			require.Equal(t, want, got, "%s.lua's shared %s region differs from gcra.lua's", s.Name, name)
		}
	}
}

// headerExamples returns the redis-cli --eval lines of a script's header.
func headerExamples(src string) []string {
	var out []string
	for _, line := range strings.Split(src, "\n") {
		if !strings.HasPrefix(line, "--") {
			break // the header is the leading comment
		}
		if i := strings.Index(line, "redis-cli --eval "); i >= 0 {
			out = append(out, strings.TrimSpace(line[i:]))
		}
	}
	return out
}

// TestHeaderExamples: each script's header shows at least one redis-cli
// example of itself, no two scripts' examples share a key, and pasting every
// example in a row into a shell against one empty Redis answers no error.
func TestHeaderExamples(t *testing.T) {
	owner := map[string]string{} // example key -> script
	var all []string
	for _, s := range Scripts() {
		examples := headerExamples(s.Source)
		require.NotEmpty(t, examples, "%s.lua's header has no redis-cli example", s.Name)
		for _, ex := range examples {
			fields := strings.Fields(ex)
			require.Equal(t, "scripts/"+s.Name+".lua", fields[2], "%s: %s", s.Name, ex)
			comma := strings.Index(ex, " , ")
			require.Greater(t, comma, 0, "%s: no ' , ' between keys and args: %s", s.Name, ex)
			for _, key := range strings.Fields(ex[len("redis-cli --eval scripts/"+s.Name+".lua"):comma]) {
				if other, ok := owner[key]; ok && other != s.Name {
					t.Errorf("example key %s is used by both %s and %s", key, other, s.Name)
				}
				owner[key] = s.Name
			}
		}
		all = append(all, examples...)
	}

	srv, _ := ownServer(t)
	host, port, _ := strings.Cut(srv.Addr, ":")
	for _, ex := range all {
		line := strings.Replace(ex, "redis-cli ", "redis-cli -h "+host+" -p "+port+" ", 1)
		out, err := exec.Command("bash", "-c", line).CombinedOutput()
		require.NoError(t, err, "%s: %s", ex, out)
		require.NotContains(t, string(out), "ERR", "%s", ex)
		require.NotContains(t, string(out), "error", "%s", ex)
	}
}
