package httplimit_test

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/luarate/luarate/httplimit"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func key(t *testing.T, f httplimit.KeyFunc, remote string, header ...string) string {
	t.Helper()
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = remote
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Add(header[i], header[i+1])
	}
	k, err := f(r)
	require.NoError(t, err)
	return k
}

func TestIPKey(t *testing.T) {
	lb := netip.MustParsePrefix("10.0.0.0/8")
	untrusting, behindLB := httplimit.IP(), httplimit.IP(lb)

	assert.Equal(t, "ip:203.0.113.7", key(t, untrusting, "203.0.113.7:5555"))
	assert.Equal(t, "ip:203.0.113.7", key(t, untrusting, "203.0.113.7:5555", "X-Forwarded-For", "198.51.100.1"),
		"by default the header is the client's to forge, so it is ignored")
	assert.Equal(t, "ip:10.1.1.1", key(t, untrusting, "10.1.1.1:5555", "X-Forwarded-For", "198.51.100.1"))

	assert.Equal(t, "ip:198.51.100.1", key(t, behindLB, "10.1.1.1:5555", "X-Forwarded-For", "198.51.100.1"))
	assert.Equal(t, "ip:198.51.100.1", key(t, behindLB, "10.1.1.1:5555", "X-Forwarded-For", "6.6.6.6, 198.51.100.1, 10.2.2.2"),
		"walk from the right past trusted hops; the spoofed left entry is never reached")
	assert.Equal(t, "ip:198.51.100.1", key(t, behindLB, "10.1.1.1:5555", "X-Forwarded-For", "6.6.6.6", "X-Forwarded-For", "198.51.100.1"),
		"several header lines are one list")
	assert.Equal(t, "ip:203.0.113.7", key(t, behindLB, "203.0.113.7:5555", "X-Forwarded-For", "198.51.100.1"),
		"a connection that is not from a trusted proxy is the client")
	assert.Equal(t, "ip:10.1.1.1", key(t, behindLB, "10.1.1.1:5555"), "no header: the proxy itself")
	assert.Equal(t, "ip:10.1.1.1", key(t, behindLB, "10.1.1.1:5555", "X-Forwarded-For", "garbage"))
	assert.Equal(t, "ip:10.2.2.2", key(t, behindLB, "10.1.1.1:5555", "X-Forwarded-For", "garbage, 10.2.2.2"),
		"stop at the first entry that is not an address")

	assert.Equal(t, "ip:2001:db8:1:2::/64", key(t, untrusting, "[2001:db8:1:2:aaaa::1]:443"), "IPv6 by /64")
	assert.Equal(t, "ip:2001:db8:1:2::/64", key(t, untrusting, "[2001:db8:1:2:bbbb::9]:443"))
	assert.Equal(t, "ip:192.0.2.1", key(t, untrusting, "[::ffff:192.0.2.1]:80"), "v4-mapped is v4")
}

func TestIPFromForwarded(t *testing.T) {
	f := httplimit.IPFromForwarded(netip.MustParsePrefix("10.0.0.0/8"))
	assert.Equal(t, "ip:192.0.2.60", key(t, f, "10.0.0.1:1", "Forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"))
	assert.Equal(t, "ip:2001:db8:cafe::/64", key(t, f, "10.0.0.1:1", "Forwarded", `for=6.6.6.6, for="[2001:db8:cafe::17]:4711", for=10.0.0.2`))
	assert.Equal(t, "ip:10.0.0.1", key(t, f, "10.0.0.1:1", "Forwarded", "for=unknown"))
	assert.Equal(t, "ip:10.0.0.1", key(t, f, "10.0.0.1:1", "X-Forwarded-For", "192.0.2.60"), "reads only Forwarded")
}

func TestHeaderContextAndFirst(t *testing.T) {
	apiKey := httplimit.Header("x-api-key")
	k := key(t, apiKey, "192.0.2.1:1", "X-Api-Key", "secret-123")
	assert.Regexp(t, `^x-api-key:[0-9a-f]{32}$`, k)
	assert.NotContains(t, k, "secret")
	assert.NotEqual(t, k, key(t, apiKey, "192.0.2.1:1", "X-Api-Key", "secret-124"))
	assert.Equal(t, "", key(t, apiKey, "192.0.2.1:1"))

	type userKey struct{}
	user := httplimit.ContextValue(userKey{})
	r := httptest.NewRequest("GET", "/", nil)
	for v, want := range map[any]string{"u42": "ctx:u42", 42: "ctx:42", "": ""} {
		got, err := user(r.WithContext(context.WithValue(r.Context(), userKey{}, v)))
		assert.NoError(t, err)
		assert.Equal(t, want, got)
	}
	_, err := user(r.WithContext(context.WithValue(r.Context(), userKey{}, 4.2)))
	assert.ErrorContains(t, err, "is a float64")

	either := httplimit.First(apiKey, httplimit.IP())
	assert.Equal(t, k, key(t, either, "192.0.2.1:1", "X-Api-Key", "secret-123"))
	assert.Equal(t, "ip:192.0.2.1", key(t, either, "192.0.2.1:1"))
}
