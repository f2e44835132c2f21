package main

import (
	"context"
	"io"
)

func listScripts(args []string, stdout io.Writer) error { return nil }
func load(ctx context.Context, args []string, stdout io.Writer) error { return nil }
