package luarate

import (
	"crypto/sha1"
	"embed"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

//go:embed scripts/*.lua
var scriptFiles embed.FS

// Script is one embedded Lua script, byte for byte as shipped in scripts/.
// Another language can SCRIPT LOAD Source and call EVALSHA SHA1 to get exactly
// the limits the Go client gets.
type Script struct {
	Name    string // e.g. "token_bucket", as in scripts/token_bucket.lua
	Version int    // from the header line "-- luarate: token_bucket v2"
	SHA1    string // lower-case hex SHA1 of Source, as SCRIPT LOAD returns it
	Source  string
}

type loadedScript struct {
	Script
	lua    *rueidis.Lua
	keyTag string // short name + version for keys, e.g. "tb3"
}

var scripts = loadScripts()

// Scripts lists every embedded script, sorted by name.
func Scripts() []Script {
	out := make([]Script, 0, len(scripts))
	for _, s := range scripts {
		out = append(out, s.Script)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

var headerLine = regexp.MustCompile(`^-- luarate: ([a-z_]+) v([1-9][0-9]*)\n`)

func loadScripts() map[string]*loadedScript {
	entries, err := scriptFiles.ReadDir("scripts")
	if err != nil {
		panic(err)
	}
	out := make(map[string]*loadedScript, len(entries))
	for _, e := range entries {
		src, err := scriptFiles.ReadFile("scripts/" + e.Name())
		if err != nil {
			panic(err)
		}
		m := headerLine.FindSubmatch(src)
		if m == nil || string(m[1])+".lua" != e.Name() {
			panic(fmt.Sprintf("luarate: scripts/%s must start with \"-- luarate: <file name> v<version>\"", e.Name()))
		}
		version, _ := strconv.Atoi(string(m[2]))
		sum := sha1.Sum(src)
		name := string(m[1])
		out[name] = &loadedScript{
			Script: Script{Name: name, Version: version, SHA1: hex.EncodeToString(sum[:]), Source: string(src)},
			lua:    rueidis.NewLuaScript(string(src)),
			keyTag: initials(name) + string(m[2]),
		}
	}
	return out
}

// initials turns "sliding_window_log" into "swl".
func initials(name string) string {
	var b strings.Builder
	for _, w := range strings.Split(name, "_") {
		b.WriteByte(w[0])
	}
	return b.String()
}
