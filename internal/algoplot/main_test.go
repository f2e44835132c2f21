package main

import (
	"context"
	"os"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"
)

// The committed picture is what the scripts do today: regenerate it with
// go run ./internal/algoplot -o docs/algorithms.svg after changing a script.
func TestPictureUpToDate(t *testing.T) {
	mr := miniredis.RunT(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{mr.Addr()}, DisableCache: true, ForceSingleClient: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	got, err := render(context.Background(), client)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../../docs/algorithms.svg")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatal("docs/algorithms.svg is stale: run go run ./internal/algoplot -o docs/algorithms.svg")
	}
}
