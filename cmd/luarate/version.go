package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"text/tabwriter"

	"github.com/luarate/luarate"
)

// version prints the luarate module's version, as the Go toolchain recorded
// it in the binary, and the version of every embedded script.
func version(stdout io.Writer) error {
	fmt.Fprintf(stdout, "luarate %s\n\n", moduleVersion())
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCRIPT\tVERSION\tSHA1")
	for _, s := range luarate.Scripts() {
		fmt.Fprintf(tw, "%s\tv%d\t%s\n", s.Name, s.Version, s.SHA1)
	}
	return tw.Flush()
}

// moduleVersion is github.com/luarate/luarate's version in this binary: the
// tag for `go install github.com/luarate/luarate/cmd/luarate@v1.2.3`,
// "(devel)" for a build in the repository.
func moduleVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown: built without module information)"
	}
	if info.Main.Path == "github.com/luarate/luarate" {
		return info.Main.Version
	}
	for _, m := range info.Deps {
		if m.Path == "github.com/luarate/luarate" {
			if m.Replace != nil {
				return m.Version + " => " + m.Replace.Path + " " + m.Replace.Version
			}
			return m.Version
		}
	}
	return "(unknown)"
}
