package luarate

// Algorithm selects how a Limit counts. Each algorithm is one Lua script in
// scripts/, named by String, that runs atomically inside Redis.
//
// Choosing one:
//   - FixedWindow: cheapest; counts per epoch-aligned window, so a client can
//     spend a full window's worth on each side of a boundary (2x in one period).
//   - TokenBucket: smooth; bursts up to Burst, then a steady Rate.
//   - GCRA: the same admissions as TokenBucket with one number of state; the
//     fastest smooth limiter.
//   - SlidingWindowLog: exact over any span of Period, no boundary bursts; one
//     sorted-set entry per admitted unit, so memory grows with Rate.
//   - SlidingWindowCounter: the two-window weighted estimate; O(1) memory,
//     close to exact for even traffic, at most 2x Rate in the worst case.
//   - LeakyBucket: a meter that leaks Rate per Period and denies what would
//     overflow Burst (policing); admits what TokenBucket admits.
//   - LeakyQueue: the same bucket as a queue (shaping), as nginx limit_req
//     without nodelay: admitted requests leave one every Period/Rate, so an
//     admitted request may have to wait Result.Delay first (see Wait); what
//     would overflow the Burst places of the queue is denied.
//
// Concurrency (requests in flight) is not an Algorithm: see Acquire.
type Algorithm int

// The algorithms. The zero value is not an algorithm, so a Limit must name one.
const (
	FixedWindow Algorithm = iota + 1
	TokenBucket
	GCRA
	SlidingWindowLog
	SlidingWindowCounter
	LeakyBucket
	LeakyQueue
)

// scriptNames maps each Algorithm to its script, scripts/<name>.lua.
var scriptNames = [...]string{
	FixedWindow:          "fixed_window",
	TokenBucket:          "token_bucket",
	GCRA:                 "gcra",
	SlidingWindowLog:     "sliding_window_log",
	SlidingWindowCounter: "sliding_window_counter",
	LeakyBucket:          "leaky_bucket",
	LeakyQueue:           "leaky_queue",
}

// String returns the name of the algorithm's script, e.g. "token_bucket".
func (a Algorithm) String() string {
	if a <= 0 || int(a) >= len(scriptNames) {
		return "Algorithm(" + itoa(int64(a)) + ")"
	}
	return scriptNames[a]
}

// windowed reports whether the algorithm counts per window, where Burst has no
// meaning of its own.
func (a Algorithm) windowed() bool {
	return a == FixedWindow || a == SlidingWindowLog || a == SlidingWindowCounter
}

// Algorithms lists every limiter algorithm, in the order of the constants.
// Benchmarks and tests iterate over it, so a new algorithm is covered as soon
// as it is added to scriptNames.
func Algorithms() []Algorithm {
	out := make([]Algorithm, 0, len(scriptNames)-1)
	for a := range scriptNames {
		if scriptNames[a] != "" {
			out = append(out, Algorithm(a))
		}
	}
	return out
}
