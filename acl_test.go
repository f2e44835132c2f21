package luarate

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/luarate/luarate/internal/redistest"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// leastPrivilege is the smallest ACL the scripts, Reset and the concurrency
// limiter need, for keys under the default "rl:" prefix, with a client that
// disables caching (with caching, add +client|tracking). docs/operations.md
// publishes it; TestLeastPrivilegeIsDocumented keeps the two the same.
var leastPrivilege = []string{"~rl:*", "+evalsha", "+eval", "+time", "+get", "+mget", "+set", "+del", "+pexpire",
	"+zadd", "+zcard", "+zrange", "+zrangebyscore", "+zcount", "+zscore", "+zrem", "+zremrangebyscore", "+zremrangebyrank", "+unlink"}

// clusterTopology is what a Redis Cluster client needs on top of
// leastPrivilege: rueidis discovers the slots with CLUSTER SLOTS (CLUSTER
// SHARDS on Redis 8).
var clusterTopology = []string{"+cluster|slots", "+cluster|shards"}

func TestLeastPrivilegeIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("docs/operations.md")
	require.NoError(t, err)
	quoted := make([]string, len(leastPrivilege))
	for i, p := range leastPrivilege {
		quoted[i] = p
		if strings.HasPrefix(p, "~") {
			quoted[i] = "'" + p + "'"
		}
	}
	require.Contains(t, string(doc), strings.Join(quoted, " "), "docs/operations.md must publish the ACL the tests use")
}

// startACLServer starts a redis-server for the test alone and creates user
// with perms on it.
func startACLServer(t *testing.T, user string, perms []string) string {
	t.Helper()
	srv, err := redistest.Start()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs a real redis-server: %v", err)
		}
		t.Skipf("SKIPPED: no redis-server: %v", err)
	}
	t.Cleanup(srv.Stop)
	setUser(t, srv.Addr, user, perms)
	return srv.Addr
}

func setUser(t *testing.T, addr, user string, perms []string) {
	t.Helper()
	args := append([]string{"ACL", "SETUSER", user, "on", ">pw-" + user}, perms...)
	_, err := redistest.Command(addr, args...)
	require.NoError(t, err)
}

func userClient(t *testing.T, user string, opt rueidis.ClientOption) rueidis.Client {
	t.Helper()
	opt.Username, opt.Password, opt.DisableCache = user, "pw-"+user, true
	c, err := rueidis.NewClient(opt)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// everyCall makes every kind of call the library has as l's user: each
// algorithm's take, multi-limit take, peek, atmost, refund, lockout and
// Reset, and the concurrency limiter's acquire, extend, release and peek.
func everyCall(t *testing.T, l *Limiter, key string) {
	t.Helper()
	ctx := context.Background()
	for _, a := range Algorithms() {
		lim := PerMinute(a, 10)
		hour := PerHour(a, 100)
		_, err := l.Allow(ctx, key, lim)
		require.NoError(t, err, a)
		_, err = l.AllowMulti(ctx, key, 1, lim, hour)
		require.NoError(t, err, a)
		_, err = l.Peek(ctx, key, lim)
		require.NoError(t, err, a)
		_, err = l.AllowAtMost(ctx, key, lim, 10) // more than is left: grants part
		require.NoError(t, err, a)
		if a != LeakyQueue {
			_, err = l.Refund(ctx, key, lim, 2)
			require.NoError(t, err, a)
		}
		locked := lim
		locked.Lockout = time.Minute
		for range 12 {
			_, err = l.Allow(ctx, key+":lock", locked)
			require.NoError(t, err, a)
		}
		require.NoError(t, l.Reset(ctx, key, lim), a)
		require.NoError(t, l.Reset(ctx, key+":lock", locked), a)
	}
	lease, res, err := l.Acquire(ctx, key, 2, time.Minute)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	_, err = lease.Extend(ctx)
	require.NoError(t, err)
	require.NoError(t, lease.Release(ctx))
	_, err = l.PeekConcurrency(ctx, key, 2)
	require.NoError(t, err)
}

func TestLeastPrivilegeUser(t *testing.T) {
	addr := startACLServer(t, "limiter", leastPrivilege)
	opt := rueidis.ClientOption{InitAddress: []string{addr}, ForceSingleClient: true}
	for _, batching := range []bool{true, false} {
		l := New(userClient(t, "limiter", opt), WithBatching(batching))
		everyCall(t, l, "acl:user42")
	}

	// The batch form, with and without +mget: without it, a batch reads each
	// key with GET, at a little more Redis CPU, and decides the same.
	setUser(t, addr, "nomget", append(append([]string{}, leastPrivilege...), "-mget"))
	for _, user := range []string{"limiter", "nomget"} {
		c := userClient(t, user, opt)
		for _, name := range limiterNames() {
			res := scripts[name].lua.Exec(context.Background(), c, []string{"rl:{acl-" + user + "}:" + name, "rl:{acl-" + user + "}:" + name},
				[]string{"batch", "", "1 1", "10 60000 0", "1 1", "10 60000 0"})
			arr, err := res.ToArray()
			require.NoError(t, err, "%s as %s", name, user)
			for _, m := range arr {
				require.NoError(t, m.Error(), "%s as %s", name, user)
			}
			require.Len(t, arr, 14, "%s as %s: two admissions", name, user)
		}
	}

	// Without +get or +set, Redis refuses the script's command: the client
	// gets Redis's own error as ErrNoPermission, a setup error, not a Redis
	// that is down (ErrUnavailable) nor a key of another type.
	for _, minus := range []string{"-get", "-set"} {
		setUser(t, addr, "no"+minus[1:], append(append([]string{}, leastPrivilege...), minus))
		l := New(userClient(t, "no"+minus[1:], opt))
		for _, a := range []Algorithm{GCRA, FixedWindow, TokenBucket} {
			_, err := l.Allow(context.Background(), "acl:user42", PerMinute(a, 10))
			require.Error(t, err, "%s %s", minus, a)
			require.True(t, errors.Is(err, ErrNoPermission), "%s %s: %v", minus, a, err)
			require.NotContains(t, err.Error(), "luarate: KEYS", "%s %s", minus, a)
			require.False(t, errors.Is(err, ErrUnavailable), "a missing permission is not an outage: %v", err)
		}
	}
}

func TestOutOfMemoryIsUnavailable(t *testing.T) {
	addr := startACLServer(t, "limiter", leastPrivilege)
	_, err := redistest.Command(addr, "CONFIG", "SET", "maxmemory-policy", "noeviction")
	require.NoError(t, err)
	_, err = redistest.Command(addr, "CONFIG", "SET", "maxmemory", "1")
	require.NoError(t, err)
	l := New(redistest.Client(t, addr))
	for _, a := range Algorithms() {
		_, err := l.Allow(context.Background(), "oom:user42", PerMinute(a, 10))
		require.Error(t, err, a)
		require.Contains(t, err.Error(), "OOM", a)
		require.True(t, errors.Is(err, ErrUnavailable), "%s: Redis out of memory made no decision: %v", a, err)
	}
}

// TestClusterFaults runs the least-privilege user on every node of a real
// cluster, and resharding with redis-cli under traffic, which makes Redis
// answer multi-key calls with TRYAGAIN while a slot's keys are split between
// two nodes: the client retries those, so no caller sees them.
func TestClusterFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no cluster")
	}
	c := startCluster(t, false)
	client := clusterClient(t, c)

	t.Run("least privilege user on every node", func(t *testing.T) {
		// a cluster client also reads the topology: without it rueidis falls
		// back to one node and hands MOVED to the caller
		for _, n := range c.Nodes() {
			setUser(t, n.Addr, "limiter", append(append([]string{}, leastPrivilege...), clusterTopology...))
		}
		uc := userClient(t, "limiter", rueidis.ClientOption{InitAddress: []string{c.Masters[0].Addr}})
		for _, k := range []string{"acl:a", "acl:b", "acl:c", "acl:d"} { // several slots
			everyCall(t, New(uc), k)
		}
	})

	t.Run("redis-cli reshard under traffic", func(t *testing.T) {
		if _, err := exec.LookPath("redis-cli"); err != nil {
			t.Fatalf("needs redis-cli: %v", err)
		}
		hot := keyInSlot(0)
		src, err := c.MasterOf(0)
		require.NoError(t, err)
		var dst string
		for _, m := range c.Masters {
			if m.Addr != src {
				dst = m.Addr
				break
			}
		}
		srcID, err := redistest.Command(src, "CLUSTER", "MYID")
		require.NoError(t, err)
		dstID, err := redistest.Command(dst, "CLUSTER", "MYID")
		require.NoError(t, err)
		tr := hammer(t, client, hot, func() {
			out, err := exec.Command("redis-cli", "--cluster", "reshard", src, "--cluster-from", srcID, "--cluster-to", dstID,
				"--cluster-slots", "50", "--cluster-yes", "--cluster-pipeline", "1").CombinedOutput()
			require.NoError(t, err, "%s", out)
			require.NoError(t, c.WaitHealthy(20*time.Second))
			owner, err := c.MasterOf(0)
			require.NoError(t, err)
			require.Equal(t, dst, owner, "slot 0 moved")
		})
		require.Zero(t, tr.failed, "requests not answered while resharding")
		require.Equal(t, tr.admitted, tr.counted, "admissions lost or phantom while resharding")
	})
}

// keyInSlot returns a user key whose Limiter keys land in slot.
func keyInSlot(slot int) string {
	for i := 0; ; i++ {
		k := "reshard:" + itoa(int64(i))
		if redistest.Slot("{"+escapeBraces(k)+"}") == slot {
			return k
		}
	}
}
