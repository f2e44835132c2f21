package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/luarate/luarate"
)

const scriptsHelp = `Usage: luarate scripts [-o DIR]

Lists the Lua scripts built into luarate: name, version and SHA1 (what SCRIPT
LOAD returns, so EVALSHA works with it from any language). -o DIR writes them
out as DIR/<name>.lua, byte for byte.

Examples:
  luarate scripts
  luarate scripts -o ./lua && redis-cli --eval ./lua/gcra.lua rl:{user42} , 10 1000 10 1
`

func listScripts(args []string, stdout io.Writer) error {
	fs := newFlags("scripts")
	dir := fs.String("o", "", "write the scripts into `DIR` (created if missing)")
	if err := parseFlags(fs, args, scriptsHelp, stdout); err != nil {
		return err
	}
	all := luarate.Scripts()
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o755); err != nil {
			return fmt.Errorf("scripts: %v", err)
		}
		for _, s := range all {
			path := filepath.Join(*dir, s.Name+".lua")
			if err := os.WriteFile(path, []byte(s.Source), 0o644); err != nil {
				return fmt.Errorf("scripts: %v", err)
			}
			fmt.Fprintf(stdout, "wrote %s (v%d, sha1 %s)\n", path, s.Version, s.SHA1)
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tSHA1\tBYTES")
	for _, s := range all {
		fmt.Fprintf(tw, "%s\tv%d\t%s\t%d\n", s.Name, s.Version, s.SHA1, len(s.Source))
	}
	return tw.Flush()
}

const loadHelp = `Usage: luarate load -redis host:port

Loads every script into a Redis with SCRIPT LOAD and prints name, version and
SHA1, so services in other languages can call EVALSHA without shipping the
source. (Any client should still fall back to EVAL on NOSCRIPT: a restart or
SCRIPT FLUSH empties the cache.)

Examples:
  luarate load -redis 127.0.0.1:6379
  REDIS_URL=redis://:password@redis.internal:6379/0 luarate load
`

func load(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("load")
	redis := redisFlag(fs, "$REDIS_URL (required: loading into an embedded Redis would be pointless)")
	if err := parseFlags(fs, args, loadHelp, stdout); err != nil {
		return err
	}
	b, err := connect(ctx, *redis, false)
	if err != nil {
		if u, ok := err.(usageError); ok {
			return usageError{fmt.Errorf("load: %v", u.error)}
		}
		return err
	}
	defer b.close()
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, s := range luarate.Scripts() {
		sha, err := b.client.Do(ctx, b.client.B().ScriptLoad().Script(s.Source).Build()).ToString()
		if err != nil {
			return fmt.Errorf("load %s into %s: %v", s.Name, b.where, err)
		}
		if sha != s.SHA1 {
			return fmt.Errorf("load %s: %s answered SHA1 %s, want %s", s.Name, b.where, sha, s.SHA1)
		}
		fmt.Fprintf(tw, "%s\tv%d\t%s\n", s.Name, s.Version, sha)
	}
	return tw.Flush()
}
