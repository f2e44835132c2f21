package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// Cluster is a real Redis Cluster on loopback that this package started:
// three masters covering all 16384 slots, each optionally with one replica.
type Cluster struct {
	Masters  []*Server
	Replicas []*Server // Replicas[i] replicates Masters[i] as created
}

// Nodes returns every server of the cluster, masters first.
func (c *Cluster) Nodes() []*Server { return append(append([]*Server{}, c.Masters...), c.Replicas...) }

// StartCluster starts three masters (and one replica each when replicas is
// true) with redis-server --cluster-enabled yes on free loopback ports, joins
// them with redis-cli --cluster create, and waits until every node reports
// cluster_state:ok and every replica is in sync. Stop removes it all.
func StartCluster(replicas bool) (*Cluster, error) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		return nil, fmt.Errorf("%w (redis-cli is needed to create a cluster)", ErrNoRedis)
	}
	n := 3
	if replicas {
		n = 6
	}
	var nodes []*Server
	stopAll := func() {
		for _, s := range nodes {
			s.Stop()
		}
	}
	for len(nodes) < n {
		s, err := startClusterNode()
		if err != nil {
			stopAll()
			return nil, err
		}
		nodes = append(nodes, s)
	}
	args := []string{"--cluster", "create"}
	for _, s := range nodes {
		args = append(args, s.Addr)
	}
	if replicas {
		args = append(args, "--cluster-replicas", "1")
	}
	args = append(args, "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		stopAll()
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c := &Cluster{}
	if err := c.sortRoles(nodes); err != nil {
		stopAll()
		return nil, err
	}
	if err := c.WaitHealthy(30 * time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// startClusterNode starts one cluster-enabled redis-server. The cluster bus
// port is chosen explicitly: port+10000, the default, may not exist.
func startClusterNode() (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		bus, err := freePort()
		if err != nil {
			return nil, err
		}
		s, err := Start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(bus), "--cluster-node-timeout", "2000")
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// sortRoles puts masters in c.Masters and each master's replica at the same
// index of c.Replicas.
func (c *Cluster) sortRoles(nodes []*Server) error {
	c.Masters, c.Replicas = nil, nil
	for _, s := range nodes {
		info, err := Command(s.Addr, "INFO", "replication")
		if err != nil {
			return err
		}
		if strings.Contains(info, "role:master") {
			c.Masters = append(c.Masters, s)
		}
	}
	for _, m := range c.Masters {
		if r, err := replicaOf(nodes, m.Addr); err == nil {
			c.Replicas = append(c.Replicas, r)
		}
	}
	if len(c.Replicas) != len(nodes)-len(c.Masters) {
		return fmt.Errorf("cluster roles: %d masters and %d of %d replicas placed", len(c.Masters), len(c.Replicas), len(nodes)-len(c.Masters))
	}
	return nil
}

// replicaOf returns the node among nodes that replicates master now.
func replicaOf(nodes []*Server, master string) (*Server, error) {
	port := master[strings.LastIndexByte(master, ':')+1:]
	for _, s := range nodes {
		info, err := Command(s.Addr, "INFO", "replication")
		if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+port+"\r") {
			return s, nil
		}
	}
	return nil, fmt.Errorf("master %s has no replica", master)
}

// MigrateSlot moves slot from its master to another master while the
// cluster serves traffic, the way redis-cli --cluster reshard does:
// SETSLOT IMPORTING and MIGRATING, MIGRATE the keys in batches, SETSLOT NODE.
func (c *Cluster) MigrateSlot(slot int) error {
	src, err := c.MasterOf(slot)
	if err != nil {
		return err
	}
	dst := ""
	for _, s := range c.Nodes() {
		info, err := Command(s.Addr, "INFO", "replication")
		if err == nil && s.Addr != src && strings.Contains(info, "role:master") {
			dst = s.Addr
			break
		}
	}
	if dst == "" {
		return fmt.Errorf("no master to move slot %d to", slot)
	}
	srcID, err := Command(src, "CLUSTER", "MYID")
	if err != nil {
		return err
	}
	dstID, err := Command(dst, "CLUSTER", "MYID")
	if err != nil {
		return err
	}
	n := strconv.Itoa(slot)
	if _, err := Command(dst, "CLUSTER", "SETSLOT", n, "IMPORTING", srcID); err != nil {
		return err
	}
	if _, err := Command(src, "CLUSTER", "SETSLOT", n, "MIGRATING", dstID); err != nil {
		return err
	}
	host, port, _ := strings.Cut(dst, ":")
	for {
		keys, err := Command(src, "CLUSTER", "GETKEYSINSLOT", n, "100")
		if err != nil {
			return err
		}
		if keys == "" {
			break
		}
		args := append([]string{"MIGRATE", host, port, "", "0", "5000", "KEYS"}, strings.Split(keys, "\n")...)
		if _, err := Command(src, args...); err != nil {
			return err
		}
	}
	for _, addr := range []string{dst, src} {
		if _, err := Command(addr, "CLUSTER", "SETSLOT", n, "NODE", dstID); err != nil {
			return err
		}
	}
	return c.WaitHealthy(20 * time.Second)
}

// Failover makes the replica of slot's master take over with CLUSTER
// FAILOVER [mode] ("", "FORCE" or "TAKEOVER"), and waits until the cluster
// agrees and is healthy again.
func (c *Cluster) Failover(slot int, mode string) error {
	master, err := c.MasterOf(slot)
	if err != nil {
		return err
	}
	r, err := replicaOf(c.Nodes(), master)
	if err != nil {
		return err
	}
	replica := r.Addr
	args := []string{"CLUSTER", "FAILOVER"}
	if mode != "" {
		args = append(args, mode)
	}
	if _, err := Command(replica, args...); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if now, err := c.MasterOf(slot); err == nil && now == replica {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not take over slot %d from %s", replica, slot, master)
		}
	}
	return c.WaitHealthy(20 * time.Second)
}

// WaitHealthy waits until every node reports cluster_state:ok, agrees on
// the slot owners, and every replica's link to its master is up.
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := c.healthy()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster not healthy after %v: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) healthy() error {
	var slots string
	for _, s := range c.Nodes() {
		info, err := Command(s.Addr, "CLUSTER", "INFO")
		if err != nil {
			return err
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state not ok", s.Addr)
		}
		nodes, err := Command(s.Addr, "CLUSTER", "NODES")
		if err != nil {
			return err
		}
		view := slotOwners(nodes)
		if slots == "" {
			slots = view
		} else if view != slots {
			return fmt.Errorf("%s: nodes disagree on slot owners", s.Addr)
		}
		repl, err := Command(s.Addr, "INFO", "replication")
		if err != nil {
			return err
		}
		if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
			return fmt.Errorf("%s: replica link not up", s.Addr)
		}
	}
	return nil
}

// slotOwners reduces CLUSTER NODES to "port slots" lines of the masters, the
// part every node must agree on.
func slotOwners(nodes string) string {
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "master") {
			continue
		}
		lines = append(lines, f[1]+" "+strings.Join(f[8:], " "))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// MasterOf returns the address of the master that serves slot now, as the
// first node that answers sees it.
func (c *Cluster) MasterOf(slot int) (string, error) {
	var nodes string
	var err error
	for _, s := range c.Nodes() {
		if nodes, err = Command(s.Addr, "CLUSTER", "NODES"); err == nil {
			break
		}
	}
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(strings.TrimSpace(nodes), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || !strings.Contains(f[2], "master") {
			continue
		}
		for _, r := range f[8:] {
			lo, hi, ok := strings.Cut(r, "-")
			if !ok {
				hi = lo
			}
			l, err1 := strconv.Atoi(lo)
			h, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && l <= slot && slot <= h {
				return strings.Split(f[1], "@")[0], nil
			}
		}
	}
	return "", fmt.Errorf("no master serves slot %d", slot)
}

// Client connects a rueidis cluster client to the cluster: it is given one
// node and discovers the rest, as an application would.
func (c *Cluster) Client() (rueidis.Client, error) {
	return rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{c.Masters[0].Addr},
		DisableCache: true,
	})
}

// Stop kills every node and removes their directories.
func (c *Cluster) Stop() {
	for _, s := range c.Nodes() {
		s.Stop()
	}
}

// Command runs one command on the single server at addr with a fresh
// connection and returns the reply as text (arrays joined by newlines). For
// test setup and inspection, not for traffic.
func Command(addr string, args ...string) (string, error) {
	cl, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{addr}, DisableCache: true, ForceSingleClient: true,
		DisableRetry: true, ConnWriteTimeout: 5 * time.Second,
	})
	if err != nil {
		return "", err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg, err := cl.Do(ctx, cl.B().Arbitrary(args...).Build()).ToMessage()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", addr, strings.Join(args, " "), err)
	}
	return text(msg)
}

func text(msg rueidis.RedisMessage) (string, error) {
	if msg.IsInt64() {
		n, err := msg.AsInt64()
		return strconv.FormatInt(n, 10), err
	}
	if !msg.IsArray() {
		return msg.ToString()
	}
	items, err := msg.ToArray()
	parts := make([]string, len(items))
	for i := range items {
		if err == nil {
			parts[i], err = text(items[i])
		}
	}
	return strings.Join(parts, "\n"), err
}

// Slot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) of the key,
// or of its {hash tag} when it has a non-empty one, modulo 16384.
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc ^= uint16(key[k]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}
