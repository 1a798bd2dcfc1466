//go:build linux

package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/rendezvous"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// forger is a client with write access to the etcd, as anyone who can
// reach it has.
func forger(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, Logger: zap.NewNop(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func put(t *testing.T, cli *clientv3.Client, k, v string, opts ...clientv3.OpOption) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, k, v, opts...); err != nil {
		t.Fatal(err)
	}
}

// leasedJoin puts a join record for a forged node on a lease of its own
// (the lease its id names), as a real node's is: only the record's
// content can then be wrong.
func leasedJoin(t *testing.T, cli *clientv3.Client, run string, round int, rec map[string]any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	id := nodeID("127.0.0.9", 1, int64(l.ID))
	rec["id"] = id
	b, _ := json.Marshal(rec)
	k := fmt.Sprintf("/mpspawn/%s/r/%08d/join/%s", run, round, id)
	put(t, cli, k, string(b), clientv3.WithLease(l.ID))
	return k
}

// wantWarning checks that notes warn once of key.
func wantWarning(t *testing.T, n *testNode, key, why string) {
	t.Helper()
	want := fmt.Sprintf("ignored etcd key %q: ", key)
	if s := n.notes.String(); strings.Count(s, want) != 1 || !strings.Contains(s, why) {
		t.Errorf("%s notes = %q; want one warning %q (%s)", n.self.Addr, s, want, why)
	}
}

// TestEtcdForgedJoins: join records a forger puts in the round (no lease,
// a lease that is not the node's, nproc -7 or 2^62, a bad address, an id
// that is not its key's) are ignored with one warning each: the two real
// nodes form the round, world 3, master the real node 0.
func TestEtcdForgedJoins(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := forger(t, srv)
	good := map[string]any{"addr": "127.0.0.9", "host": "evil", "nproc": 1, "port": 4242, "min_nodes": 2, "max_nodes": 2}
	with := func(k string, v any) map[string]any {
		m := map[string]any{}
		for k, v := range good {
			m[k] = v
		}
		m[k] = v
		return m
	}
	b, _ := json.Marshal(with("id", "127.0.0.9-1-1"))
	noLease := "/mpspawn/job/r/00000000/join/127.0.0.9-1-1"
	put(t, cli, noLease, string(b))
	forged := map[string]string{
		leasedJoin(t, cli, "job", 0, with("nproc", -7)):      "nproc -7 out of range",
		leasedJoin(t, cli, "job", 0, with("nproc", 1<<62)):   "nproc 4611686018427387904 out of range",
		leasedJoin(t, cli, "job", 0, with("addr", "a b/c")):  "is not ADDR-PID-LEASE",
		leasedJoin(t, cli, "job", 0, with("port", 0)):        "port 0 out of range",
		leasedJoin(t, cli, "job", 0, with("extra", "field")): "not a valid record",
	}
	a := newNode(t, srv, "job", "127.0.0.2", 2, 2, 2, nil)
	bn := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, nil)
	rs := nextAll(t, a, bn)
	for i, r := range rs {
		if r.NNodes != 2 || r.WorldSize != 3 || r.MasterAddr != "127.0.0.2" || r.MasterPort != a.Self().Port {
			t.Errorf("node %d: %+v; want the two real nodes, world 3, master 127.0.0.2", i, r.Membership)
		}
	}
	wantWarning(t, a, noLease, "not attached to a lease")
	for k, why := range forged {
		wantWarning(t, a, k, why)
	}
}

// TestEtcdForgedMembersAndFailure: a garbage members value put before the
// nodes join does not keep them from starting the round (nor send a late
// node to another round); a failure with exit code 0, one not on a
// member's lease, and one of 1.4 MB are ignored, and the real failure
// that follows is the one that stops the round.
func TestEtcdForgedMembersAndFailure(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := forger(t, srv)
	members := "/mpspawn/job/r/00000000/members"
	put(t, cli, members, `{"nodes":[{"id":"127.0.0.8-1-1","addr":"127.0.0.8","nproc":1,"port":1},{"id":"127.0.0.9-1-1","addr":"127.0.0.9","nproc":1,"port":1}],"restart":0,"min_nodes":2,"max_nodes":2}`)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, nil)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, nil)
	rs := nextAll(t, a, b)
	if rs[0].NNodes != 2 || rs[0].Hosts[0].Addr != "127.0.0.2" || rs[1].NodeRank != 1 {
		t.Fatalf("rounds %+v; want the two real nodes", rs)
	}
	wantWarning(t, a, members, "is not a node that joined the round")
	fail := "/mpspawn/job/r/00000000/fail"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	rec := func(code int, msg string) string {
		v, _ := json.Marshal(rendezvous.Failure{NodeRank: 1, Addr: "127.0.0.3", Rank: 1, LocalRank: 0, ExitCode: code, Message: msg})
		return string(v)
	}
	put(t, cli, fail, rec(0, "code 0"), clientv3.WithLease(clientv3.LeaseID(leaseOf(b.Self().ID))))
	put(t, cli, fail, rec(3, "not a member's lease"), clientv3.WithLease(l.ID))
	put(t, cli, fail, rec(3, strings.Repeat("x", 1400000)), clientv3.WithLease(clientv3.LeaseID(leaseOf(b.Self().ID))))
	got, err := b.Fail(ctx, rendezvous.Failure{Rank: 1, LocalRank: 0, ExitCode: 5, Message: "real"})
	if err != nil || got.ExitCode != 5 {
		t.Fatalf("Fail = %+v, %v; want this node's own failure (the forged ones do not count)", got, err)
	}
	select {
	case s := <-a.Stopped():
		if s.Failure == nil || s.Failure.ExitCode != 5 || s.Failure.Message != "real" {
			t.Errorf("node 0 stop = %+v; want the real failure, code 5", s)
		}
	case <-ctx.Done():
		t.Fatal("node 0 was not told of the real failure")
	}
	if s := a.notes.String(); strings.Count(s, fmt.Sprintf("ignored etcd key %q", fail)) != 1 || !strings.Contains(s, "exit code 0 is not a failure's") {
		t.Errorf("node 0 notes = %q; want one warning for the forged failure key", s)
	}
}

// TestEtcdOversizedValues: 60 values of 1.4 MB under the round (junk keys,
// and lease-less join keys) are never read: the round forms, and the
// nodes allocate far less than the 84 MB they hold.
func TestEtcdOversizedValues(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := forger(t, srv)
	big := strings.Repeat("x", 1400000)
	for i := range 60 {
		k := fmt.Sprintf("/mpspawn/job/r/00000000/junk%d", i)
		if i%2 == 1 {
			k = fmt.Sprintf("/mpspawn/job/r/00000000/join/127.0.0.9-%d-1", i)
		}
		put(t, cli, k, big)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	slow := func(c *Config) { c.LeaseTTL = 5 * time.Second } // etcd is busy with 84 MB
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, slow)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, slow)
	rs := nextAll(t, a, b)
	runtime.ReadMemStats(&after)
	if rs[0].NNodes != 2 || rs[0].WorldSize != 2 {
		t.Errorf("round %+v; want the two nodes", rs[0].Membership)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 20<<20 {
		t.Errorf("two nodes allocated %d MB while joining; want the junk unread (under 20 MB)", d>>20)
	}
}

// TestEtcdNNodesDisagree: a node started for 2 nodes and one for 3 are
// refused, each naming both numbers.
func TestEtcdNNodesDisagree(t *testing.T) {
	srv := etcdtest.Start(t)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, nil)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 3, 3, nil)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, n := range []*testNode{a, b} {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, errs[i] = n.Next(ctx)
		})
	}
	wg.Wait()
	for i, want := range []string{"node 127.0.0.3 wants 3 nodes, this node 2", "node 127.0.0.2 wants 2 nodes, this node 3"} {
		var ne *NNodesError
		if !errors.As(errs[i], &ne) || !strings.Contains(errs[i].Error(), want) {
			t.Errorf("node %d Next = %v; want an NNodesError %q", i, errs[i], want)
		}
	}
}

// TestEtcdIdentityClaimed: a join record of this node's identity written
// by someone else (on another lease) is refused, not taken over.
func TestEtcdIdentityClaimed(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := forger(t, srv)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, "/mpspawn/job/r/00000000/join/"+a.Self().ID, "{}", clientv3.WithLease(l.ID))
	_, err = a.Next(ctx)
	var ie *IdentityError
	if !errors.As(err, &ie) || ie.ID != a.Self().ID {
		t.Errorf("Next = %v; want an IdentityError for %s", err, a.Self().ID)
	}
}

// TestEtcdKeysGo: once a run ends and its nodes close, no key of it is
// left but the record that it closed, on a lease that expires.
func TestEtcdKeysGo(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := forger(t, srv)
	a := newNode(t, srv, "job", "127.0.0.2", 1, 2, 2, nil)
	b := newNode(t, srv, "job", "127.0.0.3", 1, 2, 2, nil)
	nextAll(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Fail(ctx, rendezvous.Failure{Rank: 1, LocalRank: 0, ExitCode: 2}); err != nil {
		t.Fatal(err)
	}
	<-a.Stopped()
	nextAll(t, a, b) // round 1
	var wg sync.WaitGroup
	for _, n := range []*testNode{a, b} {
		wg.Go(func() {
			if s, err := n.Finish(ctx); s != nil || err != nil {
				t.Errorf("Finish = %+v, %v", s, err)
			}
			if err := n.End(ctx, "succeeded"); err != nil {
				t.Error(err)
			}
			n.Close()
		})
	}
	wg.Wait()
	resp, err := cli.Get(ctx, "/mpspawn/job/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "/mpspawn/job/closed" || resp.Kvs[0].Lease == 0 {
		var keys []string
		for _, kv := range resp.Kvs {
			keys = append(keys, fmt.Sprintf("%s (lease %x)", kv.Key, kv.Lease))
		}
		t.Fatalf("keys left: %v; want only /mpspawn/job/closed, on a lease", keys)
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil || ttl.TTL <= 0 || ttl.TTL > 60 {
		t.Errorf("closed's lease TTL = %+v, %v; want it to expire within a minute", ttl, err)
	}
}
