// Command luarate shows, serves and ships luarate's rate limiters.
//
// Run with no arguments it needs no Redis installed: it starts an embedded
// Redis (miniredis) and fires a burst of requests at a 10-per-second GCRA
// limit, printing which are allowed and denied, with their remaining and reset
// values. -redis host:port (or REDIS_URL) uses a real Redis instead.
//
// Subcommands:
//
//	luarate serve     a demo JSON API on 127.0.0.1:8080, limited per verified API key or IP
//	luarate try       N requests against a chosen algorithm and limit, as a table
//	luarate scripts   list the embedded Lua scripts (name, version, SHA1); -o DIR writes them
//	luarate load      SCRIPT LOAD every script into a Redis and print the SHAs
//	luarate version   the module's version and every script's (also -version)
//
// Every subcommand takes -h.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const mainHelp = `luarate: rate limiting done inside Redis.

Usage:
  luarate [-redis host:port]        a burst of requests against a 10/s limit (default: embedded Redis)
  luarate serve [flags]             a demo JSON API on 127.0.0.1:8080, limited per API key or client IP
  luarate try [flags]               N requests against a chosen algorithm and limit, as a table
  luarate scripts [-o DIR]          list the embedded Lua scripts (name, version, SHA1), or write them
  luarate load -redis host:port     SCRIPT LOAD every script into a Redis and print the SHAs
  luarate version                   the module's version and every script's (also: luarate -version)

Redis: without -redis (or REDIS_URL) the commands run on an embedded Redis
(miniredis) and need nothing installed. -redis takes host:port or a
redis:// URL; REDIS_URL is used when -redis is not given.

Examples:
  go run ./cmd/luarate
  go run ./cmd/luarate try -algo token_bucket -rate 5 -period 1s -burst 10 -n 20
  go run ./cmd/luarate serve -redis 127.0.0.1:6379
  go run ./cmd/luarate scripts -o /tmp/luarate-scripts

Run 'luarate <command> -h' (or 'luarate help <command>') for a command's flags.
`

const versionHelp = `Usage: luarate version

Prints the version of the luarate module this binary was built from ("(devel)"
for a build inside the repository) and the name, version and SHA1 of every
embedded Lua script. luarate -version prints the same.

Examples:
  luarate version
  go run ./cmd/luarate -version
`

// exit codes
const (
	exitOK    = 0
	exitFail  = 1 // the command ran and failed: Redis unreachable, a write failed
	exitUsage = 2 // bad flags or arguments
)

// errHelp means -h was asked and answered.
var errHelp = errors.New("help shown")

// usageError is a bad flag or argument: exit 2.
type usageError struct{ error }

// run is main without the process: it parses args, runs one command and
// returns the exit code. Errors are one line on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd, rest := "", args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, rest = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "":
		if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "-help" || rest[0] == "--help") {
			fmt.Fprint(stdout, mainHelp)
			return exitOK
		}
		if len(rest) > 0 && (rest[0] == "-version" || rest[0] == "--version") {
			if len(rest) > 1 {
				err = usageError{fmt.Errorf("%s takes no arguments, got %q (run 'luarate -h')", rest[0], rest[1])}
			} else {
				err = version(stdout)
			}
			break
		}
		err = demo(ctx, rest, stdout, stderr)
	case "help": // "help serve" is "serve -h"
		switch {
		case len(rest) == 0 || len(rest) == 1 && rest[0] == "help":
			fmt.Fprint(stdout, mainHelp)
			return exitOK
		case len(rest) == 1:
			return run(ctx, []string{rest[0], "-h"}, stdout, stderr)
		}
		err = usageError{fmt.Errorf("help takes one command, got %q (run 'luarate -h')", strings.Join(rest, " "))}
	case "try":
		err = try(ctx, rest, stdout, stderr)
	case "serve":
		err = serve(ctx, rest, stdout, stderr)
	case "scripts":
		err = listScripts(rest, stdout)
	case "load":
		err = load(ctx, rest, stdout)
	case "version":
		if err = parseFlags(newFlags("version"), rest, versionHelp, stdout); err == nil {
			err = version(stdout)
		}
	default:
		err = usageError{fmt.Errorf("unknown command %q (commands: serve, try, scripts, load, version; run 'luarate -h')", cmd)}
	}
	var usage usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintln(stderr, "luarate:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "luarate:", err)
		return exitFail
	}
}

// parseFlags parses args into fs. -h prints help and the flags to stdout
// and returns errHelp; a bad flag or a stray argument is a usageError of one line.
func parseFlags(fs *flag.FlagSet, args []string, help string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, help, "\nFlags:\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return errHelp
	case err != nil:
		return usageError{fmt.Errorf("%s%v (run '%s -h')", cmdPrefix(fs), err, cmdLine(fs))}
	case fs.NArg() > 0:
		return usageError{fmt.Errorf("%sunexpected argument %q (run '%s -h')", cmdPrefix(fs), fs.Arg(0), cmdLine(fs))}
	}
	return nil
}

// newFlags returns the flag set of a subcommand; name "" is the default job.
func newFlags(name string) *flag.FlagSet { return flag.NewFlagSet(name, flag.ContinueOnError) }

func cmdPrefix(fs *flag.FlagSet) string {
	if fs.Name() == "" {
		return ""
	}
	return fs.Name() + ": "
}

func cmdLine(fs *flag.FlagSet) string { return strings.TrimSpace("luarate " + fs.Name()) }
