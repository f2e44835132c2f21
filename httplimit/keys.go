package httplimit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// KeyFunc maps a request to the key it is limited by. An empty key with a
// nil error means "no key here": First then tries the next KeyFunc, and the
// middleware answers 500 with ErrNoKey if none has one. A key over
// luarate.MaxKeyLen bytes is refused (500): hash client input that can be
// long, as Header does.
type KeyFunc func(r *http.Request) (string, error)

// IP keys by the client's IP address, as "ip:203.0.113.7". IPv6 clients are
// keyed by their /64 ("ip:2001:db8:1:2::/64"): one subscriber usually holds
// a whole /64 and could otherwise rotate addresses to dodge the limit.
//
// The address is the connection's (r.RemoteAddr). X-Forwarded-For is read
// only when that connection comes from a trusted proxy: then its entries are
// walked from the right, skipping trusted proxies, and the first untrusted
// one is the client. With no trusted prefixes (the default), the header is
// ignored, since any client can send it.
//
//	httplimit.IP(netip.MustParsePrefix("10.0.0.0/8")) // behind a load balancer in 10/8
func IP(trustedProxies ...netip.Prefix) KeyFunc {
	return clientIP(trustedProxies, forwardedFor)
}

// IPFromForwarded is IP for proxies that send the standard Forwarded header
// (RFC 7239, "Forwarded: for=192.0.2.60;proto=https") instead of
// X-Forwarded-For. Use the one your proxy sets: the other is the client's to
// forge.
func IPFromForwarded(trustedProxies ...netip.Prefix) KeyFunc {
	return clientIP(trustedProxies, forwarded)
}

// Header keys by a request header, as "<header>:<hash>": the value is hashed
// (SHA-256, 128 bits shown) so secrets never appear in Redis key names. A
// missing header is no key.
//
// An unverified header is an identity anyone can forge: a client that sends
// a new random value with every request gets a new, full budget every time,
// and is never limited. Key by a header alone only behind something that has
// already checked it (a gateway that rejects unknown keys); otherwise use
// APIKey.
func Header(name string) KeyFunc {
	canonical := http.CanonicalHeaderKey(name)
	prefix := strings.ToLower(canonical) + ":"
	return func(r *http.Request) (string, error) {
		v := r.Header.Get(canonical)
		if v == "" {
			return "", nil
		}
		return prefix + hashed(v), nil
	}
}

// APIKey keys by an API key in the header, as Header does, but only a key
// for which verify returns true: a missing or unknown key is no key, so the
// next KeyFunc of First decides. Choose what happens to unknown keys by what
// comes next:
//
//	httplimit.First(httplimit.APIKey("X-API-Key", valid), httplimit.IP())     // limited by the client's IP
//	httplimit.First(httplimit.APIKey("X-API-Key", valid), httplimit.Refuse()) // refused: 401
//
// verify runs on every limited request, before the rate-limit decision, so
// it should be quick (a map, a cache): it gets the request and the header's
// value.
func APIKey(header string, verify func(r *http.Request, key string) bool) KeyFunc {
	canonical := http.CanonicalHeaderKey(header)
	prefix := strings.ToLower(canonical) + ":"
	return func(r *http.Request) (string, error) {
		v := r.Header.Get(canonical)
		if v == "" || !verify(r, v) {
			return "", nil
		}
		return prefix + hashed(v), nil
	}
}

// ErrRefused is the error of Refuse: the request has no identity the
// application accepts. The middleware answers it with 401 and Outcome
// Refused, and does not log it.
var ErrRefused = errors.New("httplimit: no valid credentials for this request")

// Refuse returns a KeyFunc that refuses every request (ErrRefused): put it
// last in First to turn away what no earlier KeyFunc could key.
func Refuse() KeyFunc {
	return func(*http.Request) (string, error) { return "", ErrRefused }
}

func hashed(v string) string {
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:16])
}

// ContextValue keys by a value an earlier middleware put in the request's
// context, typically the authenticated user's id, as "ctx:<value>". The
// value may be a string, a fmt.Stringer or an integer; missing or empty is no
// key; any other type is an error.
func ContextValue(key any) KeyFunc {
	return func(r *http.Request) (string, error) {
		var s string
		switch v := r.Context().Value(key).(type) {
		case nil:
			return "", nil
		case string:
			s = v
		case fmt.Stringer:
			s = v.String()
		case int, int64, int32, uint, uint64, uint32:
			s = fmt.Sprint(v)
		default:
			return "", fmt.Errorf("httplimit: context value for %v is a %T; want a string, fmt.Stringer or integer", key, v)
		}
		if s == "" {
			return "", nil
		}
		return "ctx:" + s, nil
	}
}

// First returns the key of the first function that has one: for example
// First(APIKey("X-API-Key", valid), IP()) limits API clients by their
// verified key and the rest by address. An error stops the search.
func First(fs ...KeyFunc) KeyFunc {
	return func(r *http.Request) (string, error) {
		for _, f := range fs {
			if k, err := f(r); err != nil || k != "" {
				return k, err
			}
		}
		return "", nil
	}
}

// clientIP finds the client's address: the connection's peer, or, while the
// peer is a trusted proxy, the next address to its left in the proxies'
// header.
func clientIP(trusted []netip.Prefix, hops func(*http.Request) []string) KeyFunc {
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	return func(r *http.Request) (string, error) {
		addr, err := parseAddr(r.RemoteAddr)
		if err != nil {
			return "", fmt.Errorf("httplimit: remote address %q: %v", r.RemoteAddr, err)
		}
		if len(trusted) > 0 && isTrusted(addr) {
			list := hops(r)
			for i := len(list) - 1; i >= 0; i-- {
				hop, err := parseAddr(list[i])
				if err != nil {
					break // garbage from the client side of the chain: stop trusting here
				}
				addr = hop
				if !isTrusted(hop) {
					break
				}
			}
		}
		return ipKey(addr), nil
	}
}

func ipKey(a netip.Addr) string {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + a.String()
}

// parseAddr reads "1.2.3.4", "1.2.3.4:80", "[::1]:80", "::1" or "[::1]".
func parseAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if host, _, err := net.SplitHostPort(s); err == nil {
		s = host
	}
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if i := strings.IndexByte(s, '%'); i >= 0 {
		s = s[:i] // zone
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err
}

// forwardedFor lists the X-Forwarded-For entries of every such header line,
// left (client) to right (nearest proxy).
func forwardedFor(r *http.Request) []string {
	var out []string
	for _, line := range r.Header.Values("X-Forwarded-For") {
		for _, v := range strings.Split(line, ",") {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

// forwarded lists the for= nodes of RFC 7239 Forwarded headers, left to
// right. A node that is not an address ("unknown", "_hidden") is kept so the
// walk stops there.
func forwarded(r *http.Request) []string {
	var out []string
	for _, line := range r.Header.Values("Forwarded") {
		for _, elem := range strings.Split(line, ",") {
			node := ""
			for _, pair := range strings.Split(elem, ";") {
				k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") {
					node = strings.Trim(v, `"`)
				}
			}
			out = append(out, node)
		}
	}
	return out
}
