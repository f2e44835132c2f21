package luarate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
)

// TestRedisErrorsPassThrough: errors Redis raises come back with their own
// code, not as "ERR luarate:", on a server the test starts. A user whose ACL
// lacks +get (+zadd for concurrency) gets NOPERM, which the client does not call unavailable; with
// maxmemory 1 an admitting call gets OOM, which the client calls
// ErrUnavailable; neither writes anything.
func TestRedisErrorsPassThrough(t *testing.T) {
	s, admin := ownServer(t)
	ctx := context.Background()
	require.NoError(t, admin.Do(ctx, admin.B().AclSetuser().Username("noget").Rule("on", ">pw", "~*", "+@all", "-get", "-zadd").Build()).Error())
	noget, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Addr}, Username: "noget", Password: "pw", DisableCache: true})
	require.NoError(t, err)
	t.Cleanup(noget.Close)

	for _, name := range scriptNamesWithConcurrency() {
		t.Run("noperm/"+name, func(t *testing.T) {
			l := New(noget, WithBatching(false))
			err := admitOnce(ctx, l, name)
			require.Error(t, err)
			require.NotErrorIs(t, err, ErrUnavailable, "%v", err)
			redisErr, ok := asRedisErr(err)
			require.True(t, ok, "%v", err)
			// Redis 7.2 and later say NOPERM; 7.0 says ERR, in its own words
			require.True(t, strings.HasPrefix(redisErr.Error(), "NOPERM") || strings.Contains(redisErr.Error(), "can't run this command"), "%v", err)
			require.False(t, strings.HasPrefix(redisErr.Error(), "ERR luarate:"), "%v", err)
		})
	}

	require.NoError(t, admin.Do(ctx, admin.B().Flushall().Build()).Error()) // our own server
	require.NoError(t, admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", "1").Build()).Error())
	t.Cleanup(func() { admin.Do(ctx, admin.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", "0").Build()) })
	for _, batching := range []bool{false, true} {
		for _, name := range scriptNamesWithConcurrency() {
			t.Run(fmt.Sprintf("oom/batching=%v/%s", batching, name), func(t *testing.T) {
				require.NoError(t, admin.Do(ctx, admin.B().Flushall().Build()).Error())
				l := New(admin, WithBatching(batching))
				err := admitOnce(ctx, l, name)
				require.ErrorIs(t, err, ErrUnavailable, "batching %v", batching)
				redisErr, ok := asRedisErr(err)
				require.True(t, ok, "%v", err)
				require.True(t, strings.HasPrefix(redisErr.Error(), "OOM"), "%v", err)
				n, err := admin.Do(ctx, admin.B().Dbsize().Build()).AsInt64()
				require.NoError(t, err)
				require.Zero(t, n, "a refused call wrote a key")
			})
		}
	}
}

func scriptNamesWithConcurrency() []string {
	return append(limiterNames(), "concurrency")
}

// admitOnce makes one admitting call of the named script through the client.
func admitOnce(ctx context.Context, l *Limiter, script string) error {
	if script == "concurrency" {
		_, _, err := l.Acquire(ctx, "k", 3, time.Minute)
		return err
	}
	_, err := l.Allow(ctx, "k", PerMinute(algorithmOf(script), 10))
	return err
}

// asRedisErr finds the Redis error in err's chain.
func asRedisErr(err error) (*rueidis.RedisError, bool) {
	var redisErr *rueidis.RedisError
	if errors.As(err, &redisErr) {
		return redisErr, true
	}
	return nil, false
}
