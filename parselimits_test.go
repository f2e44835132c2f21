package luarate

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseLimits(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Limit
	}{
		{"10/second;1000/day", []Limit{PerSecond(GCRA, 10), PerDay(GCRA, 1000)}},
		{"10 per minute", []Limit{PerMinute(GCRA, 10)}},
		{"5/15m", []Limit{{Algorithm: GCRA, Rate: 5, Period: 15 * time.Minute}}},
		{"100/hour", []Limit{PerHour(GCRA, 100)}},
		{" 1 / 500ms , 20 PER 10 Seconds ;3/1d", []Limit{
			{Algorithm: GCRA, Rate: 1, Period: 500 * time.Millisecond},
			{Algorithm: GCRA, Rate: 20, Period: 10 * time.Second},
			PerDay(GCRA, 3),
		}},
		{"10 per\tmin", []Limit{PerMinute(GCRA, 10)}},
		{"5/100ms", []Limit{{Algorithm: GCRA, Rate: 5, Period: 100 * time.Millisecond}}},
		{"7/2 hours", []Limit{{Algorithm: GCRA, Rate: 7, Period: 2 * time.Hour}}},
	} {
		got, err := ParseLimits(tc.in, GCRA)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	got, err := ParseLimits("3/s", FixedWindow)
	require.NoError(t, err)
	assert.Equal(t, []Limit{PerSecond(FixedWindow, 3)}, got, "the caller picks the algorithm")
}

func TestParseLimitsErrors(t *testing.T) {
	for in, want := range map[string]string{
		"":                       `"": empty limit between separators`,
		"10/second;":             `"10/second;": empty limit between separators`,
		"10/second;;1/day":       `empty limit between separators`,
		"10/fortnight":           `"10/fortnight" in "10/fortnight": unknown unit "fortnight"`,
		"10/second;10/fortnight": `"10/fortnight" in "10/second;10/fortnight": unknown unit`,
		"ten/second":             `"ten/second" in "ten/second": must start with a count`,
		"10per minute":           `want "/" or " per " (spaces around it) after the count 10`,
		"10 perminute":           `want "/" or " per " (spaces around it) after the count 10`,
		"10 per":                 `want "/" or " per " (spaces around it) after the count 10`,
		"10 second":              `want "/" or " per " (spaces around it) after the count 10`,
		"0/second":               `count must be from 1 to 1000000000, got 0`,
		"99999999999/second":     `count must be from 1 to 1000000000`,
		"10/0s":                  `period multiplier must be from 1`,
		"10/60s;5/minute":        `"5/minute" in "10/60s;5/minute": another limit has the same period 1m0s`,
		"10/99999999999999d":     `period multiplier must be from 1`,
		"10/9999999999d":         `period must be at most 1000000000000ms`,
		"10/-1s":                 `unknown unit "-1s"`,
		"1000000/second":         ``, // valid for GCRA
		"10/second 5/minute":     `unknown unit "second 5/minute"`,
		"10/1.5s":                `unknown unit ".5s"`,
		"10/mİn":                 `unknown unit "mİn"`, // only ASCII letters fold
		"10/MİLLİSECOND":         `unknown unit "MİLLİSECOND"`,
		"1000000001/day":         `count must be from 1`,
		"5/1ms;6000/1s;1/1000ms": `same period 1s`,
	} {
		_, err := ParseLimits(in, GCRA)
		if want == "" {
			assert.NoError(t, err, in)
			continue
		}
		require.Error(t, err, in)
		assert.True(t, errors.Is(err, ErrInvalidLimit), in)
		assert.Contains(t, err.Error(), want, in)
	}
	_, err := ParseLimits("2000000/minute", SlidingWindowLog)
	assert.ErrorContains(t, err, `"2000000/minute" in "2000000/minute": sliding_window_log keeps one entry per request`, "the algorithm's own bounds apply")
	_, err = ParseLimits("1/s", 0)
	assert.ErrorContains(t, err, "unknown algorithm 0")
	assert.Panics(t, func() { MustParseLimits("1/week", GCRA) })
}
