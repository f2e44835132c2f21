package luarate

import (
	"encoding/binary"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// The fuzz targets run as ordinary tests on their seeds (the conformance
// vectors) in every `go test`, and CI fuzzes each for a bounded time:
//
//	go test -run '^$' -fuzz '^FuzzLimitValidate$' -fuzztime 15s .
//
// Inputs that fail are saved in testdata/fuzz/<target>/ and replayed from
// then on as seeds.

// fuzzBackend is real Redis when there is one (the referee), else miniredis.
func fuzzBackend(f *testing.F) backend {
	if realAddr != "" {
		return backend{name: "redis", client: redistest.Client(f, realAddr), prefix: uniquePrefix()}
	}
	m, c := redistest.Mini(f)
	return backend{name: "miniredis", client: c, mini: m, prefix: uniquePrefix()}
}

// vectorSteps calls add with every single-key step of every vector.
func vectorSteps(f *testing.F, add func(script string, argv []string, reply []int64)) {
	for _, v := range loadVectors(f) {
		for _, c := range v.Cases {
			for _, s := range c.Steps {
				if len(s.Keys) == 1 {
					add(v.Script, s.Argv, s.Reply)
				}
			}
		}
	}
}

// FuzzLimitValidate checks that Limit.Validate (with command's checks of n)
// and the scripts agree: a limit and cost the Go client accepts, the script
// accepts, and one it refuses, the script refuses with one "ERR luarate:"
// line. Otherwise Go would send requests Redis rejects, or
// refuse limits other languages can use.
func FuzzLimitValidate(f *testing.F) {
	vectorSteps(f, func(script string, argv []string, _ []int64) {
		if len(argv) < 2 || argv[0] == "batch" || argv[0] == "batch1" {
			return
		}
		fields := append(strings.Fields(argv[0]), argv[1])
		if len(fields) != 4 {
			return // concurrency's ARGV, or a limit with a lockout
		}
		var n [4]int64
		for i := range n {
			var err error
			if n[i], err = strconv.ParseInt(fields[i], 10, 64); err != nil {
				return
			}
		}
		f.Add(int(algorithmOf(script)), n[0], n[1], n[2], n[3])
	})
	f.Add(int(GCRA), int64(1_000_000_000), int64(1_000_000), int64(4_000_000), int64(1))
	f.Add(int(TokenBucket), int64(7), int64(999_999_999_999), int64(4000), int64(4000))
	b := fuzzBackend(f)
	l := New(b.client, WithPrefix(b.prefix))
	var seq atomic.Int64
	f.Fuzz(func(t *testing.T, algo int, rate, periodMS, burst, cost int64) {
		if periodMS > math.MaxInt64/int64(time.Millisecond) || periodMS < math.MinInt64/int64(time.Millisecond) {
			return // not representable as a time.Duration
		}
		lim := Limit{Algorithm: Algorithm(algo), Rate: int(rate), Period: time.Duration(periodMS) * time.Millisecond, Burst: int(burst)}
		// what the client refuses before any round trip: the limit, then n
		// (its range, and the log's entries per call)
		_, _, _, goErr := l.command("f", int(cost), OpTake, []Limit{lim})
		if algo <= 0 || algo >= len(scriptNames) {
			require.Error(t, goErr, "unknown algorithm accepted")
			return
		}
		key := "{f}:" + itoa(seq.Add(1))
		lim3 := itoa(rate) + " " + itoa(periodMS) + " " + itoa(burst)
		reply, errText := b.eval(t, Algorithm(algo).String(), []string{key}, v3argv([]string{lim3}, itoa(cost), "1700000000000", "")...)
		if cost > 0 && errText == "" {
			require.NoError(t, b.client.Do(t.Context(), b.client.B().Del().Key(b.prefix+key).Build()).Error())
		}
		if errText != "" {
			requireLuarateError(t, reply, errText, "script")
		}
		require.Equal(t, goErr == nil, errText == "", "Go says %v; the %s script says %q", goErr, Algorithm(algo), errText)
	})
}

var (
	plainDecimal = regexp.MustCompile(`^[0-9]+$`)
	limitSpec    = regexp.MustCompile(`^[0-9]+ [0-9]+ [0-9]+( [0-9]+)?$`)
	leaseID      = regexp.MustCompile(`^([A-Za-z0-9_.:-]{1,64})?$`) // empty only for peek
)

// FuzzScriptArgs sends arbitrary strings as ARGV to every script (trailing
// empty ones left out, as a caller would): each call gets a well-formed reply
// or one "ERR luarate:" line, never a Lua runtime error, and numbers are
// accepted only as plain decimal integers (and the concurrency script's op and
// lease_id only as documented).
func FuzzScriptArgs(f *testing.F) {
	names := make([]string, 0, len(scripts))
	for _, s := range Scripts() {
		names = append(names, s.Name)
	}
	vectorSteps(f, func(script string, argv []string, _ []int64) {
		argv = append(argv, "", "", "", "", "")
		f.Add(script, argv[0], argv[1], argv[2], argv[3], argv[4])
	})
	for _, h := range hostileNumbers {
		f.Add("gcra", "10 1000 0", h, "", "", "")
		f.Add("token_bucket", "10 1000 "+h, "1", "", "take", "")
		f.Add("fixed_window", "10 1000 0 "+h, "1", "", "", "")
		f.Add("leaky_bucket", "10 1000 0", "1", h, "", "")
		f.Add("concurrency", "acquire", "3", "1000", h, "")
	}
	b := fuzzBackend(f)
	var seq atomic.Int64
	f.Fuzz(func(t *testing.T, script, a1, a2, a3, a4, a5 string) {
		if _, ok := scripts[script]; !ok {
			script = names[len(script)%len(names)]
		}
		if a1 == "batch" || a1 == "batch1" {
			return // replies mixing integers and errors: TestBatchForm
		}
		argv := []string{a1, a2, a3, a4, a5}
		for len(argv) > 0 && argv[len(argv)-1] == "" {
			argv = argv[:len(argv)-1]
		}
		key := "{f}:" + itoa(seq.Add(1))
		reply, errText := b.eval(t, script, []string{key}, argv...)
		if errText != "" {
			requireLuarateError(t, reply, errText, script)
			return
		}
		require.NoError(t, b.client.Do(t.Context(), b.client.B().Del().Key(b.prefix+key).Build()).Error())
		if script == "concurrency" { // op, max, lease_ms, lease_id, now_ms
			require.Contains(t, []string{"acquire", "release", "extend", "peek"}, a1, "op accepted")
			require.Regexp(t, plainDecimal, a2, "max accepted")
			require.Regexp(t, plainDecimal, a3, "lease_ms accepted")
			require.Regexp(t, leaseID, a4, "lease_id accepted")
			require.True(t, a5 == "" || plainDecimal.MatchString(a5), "now_ms %q accepted", a5)
		} else { // limit, cost, now_ms, mode
			require.LessOrEqual(t, len(argv), 4, "too many ARGV accepted")
			require.Regexp(t, limitSpec, a1, "limit accepted")
			require.True(t, len(argv) < 2 || plainDecimal.MatchString(a2), "cost %q accepted", a2)
			require.True(t, a3 == "" || plainDecimal.MatchString(a3), "now_ms %q accepted", a3)
			require.Contains(t, []string{"", "take", "atmost", "refund"}, a4, "mode accepted")
		}
		require.Len(t, reply, replyLen)
		require.Contains(t, []int64{0, 1}, reply[0])
		for _, v := range reply {
			require.GreaterOrEqual(t, v, int64(0), "%v", reply)
		}
		require.LessOrEqual(t, reply[2], reply[1], "remaining above limit: %v", reply)
	})
}

// FuzzParseResult feeds parseResult every shape of reply a proxy, a wrong
// script or a corrupt stream could produce. It must never panic, must return
// ErrInvalidResponse for anything but seven non-negative integers in the
// contract's ranges (allowed 0 or 1, counts up to 1e9, waits that fit a
// time.Duration), and must decode those exactly.
func FuzzParseResult(f *testing.F) {
	vectorSteps(f, func(_ string, _ []string, reply []int64) {
		if reply != nil {
			f.Add(encodeReply(reply))
		}
	})
	f.Add(encodeReply([]int64{2, 10, 5, 0, 0, 0, 0}))
	f.Add(encodeReply([]int64{1, 10, -1, 0, 0, 0, 1}))
	f.Add(encodeReply([]int64{1, 10, 5, 0, 0, 0, -1}))
	f.Add(encodeReply([]int64{1, 10, 5, 0, 0, 0})) // a v1 reply
	f.Add(encodeReply([]int64{1, 10, 5, 0, 0}))
	f.Add([]byte{})
	f.Add([]byte("\x07\x06\x01\x01\x02\x03\x04\x05"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &fuzzReader{data: data}
		tree := r.node(0)
		var buf []byte
		buf = append(buf, make([]byte, 7)...) // the cache TTL field
		buf = tree.appendTo(buf)
		var msg rueidis.RedisMessage
		require.NoError(t, msg.CacheUnmarshalView(buf))
		res, err := parseResult(msg)
		want, ok := tree.asReply()
		if !ok {
			require.ErrorIs(t, err, ErrInvalidResponse, "%+v", tree)
			return
		}
		require.NoError(t, err, "a valid reply refused: %+v", tree)
		require.Equal(t, Result{
			Allowed: want[0] == 1, Limit: want[1], Remaining: want[2],
			ResetAfter: time.Duration(want[3]) * time.Millisecond, RetryAfter: time.Duration(want[4]) * time.Millisecond,
			Delay: time.Duration(want[5]) * time.Millisecond, Granted: want[6],
		}, res)
	})
}

// fuzzNode is one RESP value built from fuzz bytes, bounded in size.
type fuzzNode struct {
	typ   byte
	num   int64
	text  string
	items []fuzzNode
}

var fuzzTypes = []byte{':', '$', '+', '-', '_', ',', '#', '*', '%', '~', '='}

type fuzzReader struct {
	data []byte
	pos  int
}

func (r *fuzzReader) byte() byte {
	if r.pos >= len(r.data) {
		return 0
	}
	r.pos++
	return r.data[r.pos-1]
}

func (r *fuzzReader) node(depth int) fuzzNode {
	n := fuzzNode{typ: fuzzTypes[int(r.byte())%len(fuzzTypes)]}
	switch n.typ {
	case ':', '_', '#':
		var v [8]byte
		for i := range v {
			v[i] = r.byte()
		}
		n.num = int64(binary.BigEndian.Uint64(v[:]))
	case '*', '%', '~':
		if depth < 3 {
			n.items = make([]fuzzNode, int(r.byte())%9)
			for i := range n.items {
				n.items[i] = r.node(depth + 1)
			}
		}
	default:
		b := make([]byte, int(r.byte())%12)
		for i := range b {
			b[i] = r.byte()
		}
		n.text = string(b)
	}
	return n
}

// appendTo writes n in the format RedisMessage.CacheUnmarshalView reads.
func (n fuzzNode) appendTo(buf []byte) []byte {
	buf = append(buf, n.typ)
	switch n.typ {
	case ':', '_', '#':
		return binary.BigEndian.AppendUint64(buf, uint64(n.num))
	case '*', '%', '~':
		buf = binary.BigEndian.AppendUint64(buf, uint64(len(n.items)))
		for _, it := range n.items {
			buf = it.appendTo(buf)
		}
		return buf
	default:
		buf = binary.BigEndian.AppendUint64(buf, uint64(len(n.text)))
		return append(buf, n.text...)
	}
}

// asReply is the oracle: the seven integers n holds, if it is a valid reply.
// Like rueidis, it takes a RESP3 set for an array (no script can reply one).
func (n fuzzNode) asReply() ([]int64, bool) {
	if (n.typ != '*' && n.typ != '~') || len(n.items) != replyLen {
		return nil, false
	}
	out := make([]int64, replyLen)
	for i, it := range n.items {
		switch it.typ {
		case ':':
			out[i] = it.num
		case '$', '+', ',', '=':
			v, err := strconv.ParseInt(it.text, 10, 64)
			if err != nil {
				return nil, false
			}
			out[i] = v
		default:
			return nil, false
		}
		if out[i] < 0 {
			return nil, false
		}
	}
	// the contract's ranges: allowed 0 or 1; limit, remaining and granted
	// counts of at most 1e9; the three waits in ms within a time.Duration
	counts := out[1] <= 1e9 && out[2] <= 1e9 && out[6] <= 1e9
	const maxMS = math.MaxInt64 / int64(time.Millisecond)
	waits := out[3] <= maxMS && out[4] <= maxMS && out[5] <= maxMS
	return out, out[0] <= 1 && counts && waits
}

// encodeReply turns a reply into fuzz bytes that fuzzReader reads back as
// an array of integers.
func encodeReply(reply []int64) []byte {
	out := []byte{byte(strings.IndexByte(string(fuzzTypes), '*')), byte(len(reply))}
	for _, v := range reply {
		out = append(out, byte(strings.IndexByte(string(fuzzTypes), ':')))
		out = binary.BigEndian.AppendUint64(out, uint64(v))
	}
	return out
}
