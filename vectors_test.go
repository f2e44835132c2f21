package luarate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// vectorFile is a conformance vector: a script, and steps of raw keys and
// ARGV (with explicit now_ms) with the exact reply or error each must give.
// Other languages replay the same files.
type vectorFile struct {
	Script string `json:"script"`
	Cases  []struct {
		Name  string `json:"name"`
		Steps []struct {
			Keys  []string `json:"keys"`
			Argv  []string `json:"argv"`
			Reply []int64  `json:"reply"`
			Error string   `json:"error"`
			Note  string   `json:"note"`
		} `json:"steps"`
	} `json:"cases"`
}

func loadVectors(t testing.TB) map[string]vectorFile {
	t.Helper()
	paths, err := filepath.Glob("testdata/vectors/*.json")
	require.NoError(t, err)
	out := map[string]vectorFile{}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		require.NoError(t, err)
		var v vectorFile
		require.NoError(t, json.Unmarshal(raw, &v), p)
		require.Contains(t, scripts, v.Script, p)
		require.Equal(t, v.Script+".json", filepath.Base(p))
		out[v.Script] = v
	}
	return out
}

func TestVectors(t *testing.T) {
	vectors := loadVectors(t)
	for name := range scripts {
		require.Contains(t, vectors, name, "every script needs testdata/vectors/%s.json", name)
	}
	eachBackend(t, func(t *testing.T, b backend) {
		for _, v := range vectors {
			for ci, c := range v.Cases {
				t.Run(v.Script+"/"+c.Name, func(t *testing.T) {
					b := b
					b.prefix += v.Script + string(rune('a'+ci)) + ":" // fresh keys per case
					for i, s := range c.Steps {
						reply, errText := b.eval(t, v.Script, s.Keys, s.Argv...)
						where := "step " + itoa(int64(i+1)) + " " + strings.Join(s.Argv, " ") + " " + s.Note
						if s.Error != "" {
							require.Equal(t, s.Error, errText, where)
						} else {
							require.Empty(t, errText, where)
							require.Equal(t, s.Reply, reply, where)
						}
					}
				})
			}
		}
	})
}
